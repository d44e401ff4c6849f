//! Unencrypted volumes (label `false` or absent): the same flow as the encrypted one, and
//! the backing file *is* the plain image. Also `losetup --direct-io=on` on a FUSE image.

mod common;

use std::fs;

use common::{Env, Loop, pseudo_random, require_real, sh, sha256_file};

#[test]
fn unencrypted_volume_backing_file_is_the_image() {
    if !require_real(&["losetup", "mkfs.ext4", "mount"]) {
        return;
    }
    let env = Env::new();
    for (vol, label) in [
        ("default/plain-a", None),
        ("default/plain-b", Some("storageos.com/encryption=false")),
    ] {
        let mut args = vec!["volume", "create", vol, "--size", "64Mi"];
        if let Some(l) = label {
            args.extend(["--label", l]);
        }
        let v: serde_json::Value = serde_json::from_str(&env.ok(&args)).unwrap();
        assert_eq!(v["encrypted"], false);
        assert_eq!(v["key_status"], "not-encrypted");
        let id = v["id"].as_str().unwrap().to_string();
        // Every namespace gets its key with the first volume, encrypted or not.
        assert!(env.keys.join("ns-key.default.yaml").exists());
        assert!(!env.keys.join(format!("vol-key.{id}.yaml")).exists());

        let name = vol.split('/').nth(1).unwrap();
        let img = env.mount_bg(vol, name);
        let lo = Loop::attach(&img, &[]);
        let mnt = env.path(&format!("mnt-{name}"));
        fs::create_dir_all(&mnt).unwrap();
        sh(&format!(
            "mkfs.ext4 -q {} && mount {} {}",
            lo.dev,
            lo.dev,
            mnt.display()
        ));
        fs::write(mnt.join("f"), pseudo_random(5, 3 << 20)).unwrap();
        let sum = sha256_file(&mnt.join("f"));
        sh(&format!("umount {}", mnt.display()));
        lo.detach();
        let image_sum = sha256_file(&img);
        env.ok(&["umount", vol]);
        assert_eq!(
            sha256_file(&env.volume_dir(&id).join("data")),
            image_sum,
            "backing file == image"
        );

        let img = env.mount_bg(&id, name);
        let lo = Loop::attach(&img, &[]);
        sh(&format!("mount {} {}", lo.dev, mnt.display()));
        assert_eq!(sha256_file(&mnt.join("f")), sum);
        sh(&format!("umount {}", mnt.display()));
        lo.detach();
        env.ok(&["umount", img.to_str().unwrap()]);
    }
}

#[test]
fn loop_direct_io_on_a_fuse_image() {
    if !require_real(&["losetup", "mkfs.ext4", "mount"]) {
        return;
    }
    let env = Env::new();
    env.ok(&[
        "volume",
        "create",
        "dio",
        "--size",
        "64Mi",
        "--label",
        "storageos.com/encryption=true",
    ]);
    let img = env.mount_bg("dio", "dio");
    let lo = Loop::attach(&img, &["--direct-io=on"]);
    let name = lo.dev.trim_start_matches("/dev/");
    let dio = fs::read_to_string(format!("/sys/block/{name}/loop/dio")).unwrap();
    assert_eq!(
        dio.trim(),
        "1",
        "loop device uses direct I/O on the FUSE image"
    );
    let mnt = env.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    sh(&format!(
        "mkfs.ext4 -q {} && mount {} {}",
        lo.dev,
        lo.dev,
        mnt.display()
    ));
    fs::write(mnt.join("f"), pseudo_random(9, 2 << 20)).unwrap();
    let sum = sha256_file(&mnt.join("f"));
    sh(&format!(
        "umount {} && mount {} {}",
        mnt.display(),
        lo.dev,
        mnt.display()
    ));
    assert_eq!(sha256_file(&mnt.join("f")), sum);
    sh(&format!("umount {}", mnt.display()));
    lo.detach();
    env.ok(&["umount", "dio"]);
}
