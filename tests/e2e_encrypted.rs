//! The main job, end to end with real parts: create an encrypted volume, mount its image
//! through FUSE, losetup, mkfs.ext4, write 64 MiB of files, unmount everything, mount again
//! in a new process and read every file back; the backing file holds only ciphertext, and
//! sampled sectors of it decrypt with OpenSSL's XTS to exactly what the image serves.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{Env, Loop, pseudo_random, require_real, sh, sha256_file};
use openssl::symm::{Cipher, Crypter, Mode};
use storageos_fuse::keys::{DirStore, KeyStore};

const MARKER: &[u8] = b"storageos-fuse plaintext marker 7f3a9c";

fn write_files(dir: &Path) -> BTreeMap<String, String> {
    let mut sums = BTreeMap::new();
    for i in 0..16u64 {
        let p = dir.join(format!("file-{i:02}.bin"));
        fs::write(&p, pseudo_random(1000 + i, 4 << 20)).unwrap();
        sums.insert(
            p.file_name().unwrap().to_string_lossy().into_owned(),
            sha256_file(&p),
        );
    }
    let mut marker = MARKER.repeat(100);
    marker.push(b'\n');
    fs::write(dir.join("marker.txt"), &marker).unwrap();
    sums.insert("marker.txt".into(), sha256_file(&dir.join("marker.txt")));
    sums
}

fn read_sums(dir: &Path, names: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    names
        .keys()
        .map(|n| (n.clone(), sha256_file(&dir.join(n))))
        .collect()
}

fn contains(hay: &Path, needle: &[u8]) -> bool {
    let f = fs::File::open(hay).unwrap();
    let len = f.metadata().unwrap().len();
    let chunk = 8 << 20;
    let mut buf = vec![0u8; chunk + needle.len()];
    let mut off = 0u64;
    while off < len {
        let n = f.read_at(&mut buf, off).unwrap();
        if buf[..n].windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        off += chunk as u64;
    }
    false
}

fn openssl_xts_decrypt(vk: &[u8], sector: u64, data: &[u8]) -> Vec<u8> {
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&sector.to_le_bytes());
    let mut c = Crypter::new(Cipher::aes_256_xts(), Mode::Decrypt, vk, Some(&iv)).unwrap();
    let mut out = vec![0u8; data.len() + 16];
    let n = c.update(data, &mut out).unwrap();
    let m = c.finalize(&mut out[n..]).unwrap();
    out.truncate(n + m);
    out
}

#[test]
fn encrypted_volume_end_to_end() {
    if !require_real(&["losetup", "mkfs.ext4", "mount", "e2fsck"]) {
        return;
    }
    let env = Env::new();
    let created: serde_json::Value = serde_json::from_str(&env.ok(&[
        "volume",
        "create",
        "default/pvc0002",
        "--size",
        "256Mi",
        "--label",
        "storageos.com/encryption=true",
    ]))
    .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    // The guide's way of finding the id.
    let inspect = env.ok(&["volume", "inspect", "default/pvc0002"]);
    let first_id_line = inspect.lines().find(|l| l.contains("id")).unwrap();
    assert_eq!(first_id_line.trim(), format!("\"id\": \"{id}\","));
    assert_eq!(created["encrypted"], true);
    assert_eq!(created["key_status"], "available");
    let data_file = env.volume_dir(&id).join("data");
    assert_eq!(fs::metadata(&data_file).unwrap().len(), 256 << 20);

    // First life: mkfs, write files.
    let img = env.mount_bg("default/pvc0002", "pvc0002");
    let mnt = env.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let lo = Loop::attach(&img, &[]);
    sh(&format!("mkfs.ext4 -q {}", lo.dev));
    sh(&format!("mount {} {}", lo.dev, mnt.display()));
    let sums = write_files(&mnt);
    sh(&format!("umount {}", mnt.display()));
    lo.detach();
    env.ok(&["umount", "default/pvc0002"]);
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&id),
        "image unmounted"
    );

    // The backing file holds no plaintext.
    assert!(
        !contains(&data_file, MARKER),
        "plaintext marker found in the backing file"
    );

    // Second life, new process: everything reads back, the file system is clean.
    let img = env.mount_bg(&id, "pvc0002");
    let lo = Loop::attach(&img, &[]);
    sh(&format!("e2fsck -fn {}", lo.dev));
    sh(&format!("mount {} {}", lo.dev, mnt.display()));
    assert_eq!(read_sums(&mnt, &sums), sums);
    sh(&format!("umount {}", mnt.display()));
    lo.detach();

    // Sampled sectors of the backing file, decrypted with OpenSSL under the unwrapped key,
    // equal the image served through FUSE.
    let keys = DirStore::new(&env.keys, "storageos").load().unwrap().keys;
    let rec = keys.vol_key(&id).expect("vol-key in the keys dir");
    let digest: [u8; 32] = {
        use base64::Engine as _;
        let meta: serde_json::Value =
            serde_json::from_slice(&fs::read(env.volume_dir(&id).join("volume.json")).unwrap())
                .unwrap();
        let d = meta["encryption"]["key_digest"].as_str().unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(d)
            .unwrap()
            .try_into()
            .unwrap()
    };
    let vk = rec.unlock(&id, &digest).unwrap();
    let backing = fs::File::open(&data_file).unwrap();
    let image = fs::File::open(&img).unwrap();
    let sectors = (256u64 << 20) / 4096;
    let mut checked = 0;
    for i in 0..4000u64 {
        let s = (i * 7919 + 13) % sectors;
        let mut ct = vec![0u8; 4096];
        backing.read_exact_at(&mut ct, s * 4096).unwrap();
        let mut served = vec![0u8; 4096];
        image.read_exact_at(&mut served, s * 4096).unwrap();
        if ct.iter().all(|&b| b == 0) {
            assert!(
                served.iter().all(|&b| b == 0),
                "hole sector {s} must read as zeros"
            );
            continue;
        }
        assert_eq!(
            openssl_xts_decrypt(vk.as_bytes(), s, &ct),
            served,
            "sector {s}"
        );
        checked += 1;
    }
    assert!(checked > 100, "only {checked} written sectors sampled");
    drop(image);
    env.ok(&["umount", &img.display().to_string()]);
}
