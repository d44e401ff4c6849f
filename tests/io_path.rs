//! The fast I/O path end to end through real FUSE: the image is opened uncached with
//! parallel direct writes, aligned reads decrypt in place, sector runs go to the cipher in
//! one call, and worker buffers are reused. Checked against an in-memory model of the
//! image (unaligned offsets and lengths, both sector sizes) and through a loop device in
//! direct-I/O mode under concurrent verified random writes (fio, crc32c).

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::process::Command;

use common::{Env, Loop, pseudo_random};

const SIZE: usize = 8 << 20;

fn create_encrypted(env: &Env, name: &str, sector: &str) {
    env.ok(&[
        "volume",
        "create",
        name,
        "--size",
        "8Mi",
        "--sector-size",
        sector,
        "--label",
        "storageos.com/encryption=true",
    ]);
}

#[test]
fn unaligned_io_matches_a_model_on_both_sector_sizes() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    for sector in ["512", "4096"] {
        let name = format!("io-{sector}");
        create_encrypted(&env, &name, sector);
        let img = env.mount_bg(&name, &name);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let mut model = vec![0u8; SIZE];
        let mut rng = pseudo_random(sector.len() as u64 * 7919, 4096);
        let mut pick = |i: usize, m: usize| {
            let b: [u8; 4] = rng[(i * 4) % 4092..(i * 4) % 4092 + 4].try_into().unwrap();
            rng.rotate_left(3);
            u32::from_le_bytes(b) as usize % m
        };
        for i in 0..120 {
            let len = 1 + pick(2 * i, 300_000);
            let off = pick(2 * i + 1, SIZE - len);
            let data = pseudo_random((i as u64 + 1) * 104_729, len);
            f.write_all_at(&data, off as u64).unwrap();
            model[off..off + len].copy_from_slice(&data);
        }
        // Read back in odd-sized pieces, then whole.
        let mut at = 0;
        let mut k = 0;
        while at < SIZE {
            let len = (1 + pick(k, 200_000)).min(SIZE - at);
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, at as u64).unwrap();
            assert!(
                buf == model[at..at + len],
                "sector {sector}: {len} bytes at {at} differ from the model"
            );
            at += len;
            k += 1;
        }
        drop(f);
        assert_eq!(
            common::sha256_file(&img),
            common::sha256_file_bytes(&model),
            "sector {sector}: whole image differs from the model"
        );
        // What is on disk is ciphertext, not the plaintext just written.
        let id = env.inspect(&name)["id"].as_str().unwrap().to_string();
        let backing = std::fs::read(env.volume_dir(&id).join("data")).unwrap();
        let window = &model[SIZE / 2..SIZE / 2 + 4096];
        if window.iter().any(|&b| b != 0) {
            assert!(
                backing[SIZE / 2..SIZE / 2 + 4096] != *window,
                "sector {sector}: plaintext found in the backing file"
            );
        }
        env.ok(&["umount", img.to_str().unwrap()]);
    }
}

#[test]
fn loop_direct_io_survives_concurrent_verified_random_writes() {
    if !common::require_real(&["fio", "losetup"]) {
        return;
    }
    let env = Env::new();
    create_encrypted(&env, "fio", "4096");
    let img = env.mount_bg("fio", "fio");
    let lo = Loop::attach(&img, &["--direct-io=on"]);
    let out = Command::new("fio")
        .args([
            "--name=fuse-verify",
            &format!("--filename={}", lo.dev),
            "--ioengine=libaio",
            "--direct=1",
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--numjobs=1",
            "--size=8M",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--verify_state_save=0",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio verify failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("err= 0") && !text.contains("verify failed") && !text.contains("bad magic"),
        "fio reported errors: {text}"
    );
    assert!(
        text.contains("read: IOPS="),
        "fio did not verify by reading back: {text}"
    );
    // Sequential 1 MiB direct writes (several in flight) then a direct read-back.
    let data = pseudo_random(99, SIZE);
    let dev = OpenOptions::new().write(true).open(&lo.dev).unwrap();
    std::thread::scope(|s| {
        for part in 0..4 {
            let (dev, data) = (&dev, &data);
            s.spawn(move || {
                let q = SIZE / 4;
                dev.write_all_at(&data[part * q..(part + 1) * q], (part * q) as u64)
                    .unwrap();
            });
        }
    });
    dev.sync_all().unwrap();
    drop(dev);
    lo.detach();
    assert_eq!(
        common::sha256_file(&img),
        common::sha256_file_bytes(&data),
        "image after concurrent writes through the loop device"
    );
    env.ok(&["umount", img.to_str().unwrap()]);
}
