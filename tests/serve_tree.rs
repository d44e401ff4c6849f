//! `serve`: one FUSE mount exposing `<ns>/<name>` and `by-id/<id>` for every volume of the
//! node, kept current while it runs (real FUSE, real loop devices, ext4).

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::Duration;

use common::serve::{Serve, wait_until};
use common::{Env, Loop, pseudo_random, sh, tree_state};

const ENC: &str = "storageos.com/encryption=true";

fn id_of(env: &Env, vol: &str) -> String {
    env.inspect(vol)["id"].as_str().unwrap().to_string()
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn exposes_namespaced_and_by_id_views_of_plain_and_encrypted_volumes() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    env.ok(&["volume", "create", "apps/plain", "--size", "16Mi"]);
    env.ok(&[
        "volume",
        "create",
        "secure/vault",
        "--size",
        "16Mi",
        "--label",
        ENC,
    ]);
    let (plain, vault) = (id_of(&env, "apps/plain"), id_of(&env, "secure/vault"));
    let serve = Serve::start(&env);

    assert_eq!(names(&serve.dir), ["apps", "by-id", "secure"]);
    let mut ids = vec![plain.clone(), vault.clone()];
    ids.sort();
    assert_eq!(names(&serve.path("by-id")), ids);
    for (path, id) in [("apps/plain", &plain), ("secure/vault", &vault)] {
        let by_name = fs::metadata(serve.path(path)).unwrap();
        let by_id = fs::metadata(serve.path(&format!("by-id/{id}"))).unwrap();
        assert!(by_name.is_file());
        assert_eq!(by_name.len(), 16 << 20, "{path} is the whole image");
        assert_eq!(
            by_name.ino(),
            by_id.ino(),
            "{path} and by-id/{id} are one inode"
        );
        assert_eq!(by_name.mode() & 0o777, 0o600);
    }

    // Bytes written under one name read back under the other; on disk they are ciphertext.
    let data = pseudo_random(7, 1 << 20);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(serve.path("secure/vault"))
        .unwrap();
    f.write_all_at(&data, 8192).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut back = vec![0u8; data.len()];
    fs::File::open(serve.path(&format!("by-id/{vault}")))
        .unwrap()
        .read_exact_at(&mut back, 8192)
        .unwrap();
    assert!(
        back == data,
        "plaintext round trip through the served image"
    );
    let mut stored = vec![0u8; 4096];
    fs::File::open(env.volume_dir(&vault).join("data"))
        .unwrap()
        .read_exact_at(&mut stored, 8192)
        .unwrap();
    assert_ne!(stored, data[..4096], "backing file holds ciphertext");

    // The served volume is locked: a second server of it is refused.
    let err = env.fails(&[
        "mount",
        "secure/vault",
        "--at",
        env.path("x.img").to_str().unwrap(),
    ]);
    assert!(err.contains("already served"), "{err}");

    // Delete while the image is open: refused, nothing changed, still served.
    let before = tree_state(&env.data);
    let open = fs::File::open(serve.path("apps/plain")).unwrap();
    let err = env.fails(&["volume", "delete", "apps/plain"]);
    assert!(
        err.contains("in use through `serve`") && err.contains("losetup"),
        "{err}"
    );
    assert_eq!(
        tree_state(&env.data),
        before,
        "a refused delete changes nothing"
    );
    assert!(serve.path("apps/plain").exists());
    drop(open);

    // Idle: serve lets go and the delete goes through; the entries disappear.
    env.ok(&["volume", "delete", "apps/plain"]);
    assert!(!env.volume_dir(&plain).exists());
    assert!(
        wait_until(Duration::from_secs(5), || names(&serve.dir)
            == ["by-id", "secure"]
            && !serve.path(&format!("by-id/{plain}")).exists()
            && !serve.path("apps/plain").exists()),
        "deleted volume still listed: {:?}",
        names(&serve.dir)
    );
    assert!(serve.path("secure/vault").exists());
    assert!(serve.stop().success(), "SIGTERM stops serve cleanly");
    assert!(!sh("cat /proc/self/mountinfo").contains(env.path("served").to_str().unwrap()));
}

#[test]
fn volumes_created_and_deleted_while_serving_appear_and_disappear() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    let serve = Serve::start(&env);
    assert_eq!(names(&serve.dir), ["by-id"]);

    env.ok(&["volume", "create", "late", "--size", "8Mi"]);
    env.ok(&[
        "volume",
        "create",
        "web/cache",
        "--size",
        "8Mi",
        "--label",
        ENC,
    ]);
    let late = id_of(&env, "late");
    let cache = id_of(&env, "web/cache");
    assert!(
        wait_until(Duration::from_secs(10), || serve
            .path("default/late")
            .exists()
            && serve.path("web/cache").exists()),
        "new volumes did not appear; log:\n{}",
        serve.log_text()
    );
    assert!(serve.path(&format!("by-id/{late}")).exists());
    assert_eq!(
        fs::metadata(serve.path(&format!("by-id/{cache}")))
            .unwrap()
            .len(),
        8 << 20
    );

    env.ok(&["volume", "delete", "default/late"]);
    assert!(
        wait_until(Duration::from_secs(5), || !serve
            .path("default/late")
            .exists()
            && !serve.path("default").exists()
            && !serve.path(&format!("by-id/{late}")).exists()),
        "deleted volume did not disappear: {:?}",
        names(&serve.dir)
    );
    assert_eq!(names(&serve.path("by-id")), std::slice::from_ref(&cache));
    // The encrypted one's Secret went with it on delete; the other is untouched.
    env.ok(&["volume", "delete", "web/cache"]);
    assert!(!env.keys.join(format!("vol-key.{cache}.yaml")).exists());
    assert!(wait_until(Duration::from_secs(5), || names(&serve.dir) == ["by-id"]));

    // `umount DIR` stops it like a signal does, and returns once serve let go of its
    // volumes: a `mount` of one works at once.
    env.ok(&["volume", "create", "again", "--size", "8Mi"]);
    assert!(wait_until(Duration::from_secs(10), || serve
        .path("default/again")
        .exists()));
    let err = env.fails(&["umount", "again"]);
    assert!(err.contains("exposed by `serve`"), "{err}");
    env.ok(&["umount", serve.dir.to_str().unwrap()]);
    env.mount_bg("again", "again");
    env.ok(&["umount", "again"]);
    let status = serve.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "serve exits after umount: {status:?}"
    );
}

#[test]
fn ext4_on_a_served_encrypted_image_survives_a_restart() {
    if !common::require_real(&["mkfs.ext4", "losetup", "mount", "umount"]) {
        return;
    }
    let env = Env::new();
    env.ok(&[
        "volume", "create", "db/data", "--size", "64Mi", "--label", ENC,
    ]);
    let content = pseudo_random(11, 3 << 20);
    let mnt = env.path("mnt");
    fs::create_dir(&mnt).unwrap();

    let serve = Serve::start(&env);
    let lo = Loop::attach(&serve.path("db/data"), &[]);
    sh(&format!("mkfs.ext4 -q {}", lo.dev));
    sh(&format!("mount {} {}", lo.dev, mnt.display()));
    fs::write(mnt.join("blob"), &content).unwrap();
    sh(&format!("umount {}", mnt.display()));
    // Attached to a loop device: in use, so delete is refused...
    let err = env.fails(&["volume", "delete", "db/data"]);
    assert!(err.contains("in use"), "{err}");
    // ...and SIGTERM does not pull the image from under it: serve says so and goes on.
    let mut serve = serve;
    serve.signal();
    assert!(
        wait_until(Duration::from_secs(10), || serve
            .log_text()
            .contains("it is in use")),
        "no refusal logged; log:\n{}",
        serve.log_text()
    );
    assert!(
        serve.running(),
        "serve stopped while a loop device held an image"
    );
    sh(&format!(
        "dd if={} of=/dev/null bs=1M count=4 iflag=direct status=none",
        lo.dev
    ));
    lo.detach();
    assert!(serve.stop().success());

    let serve = Serve::start(&env);
    let lo = Loop::attach(&serve.path("db/data"), &[]);
    sh(&format!("fsck.ext4 -n {}", lo.dev));
    sh(&format!("mount {} {}", lo.dev, mnt.display()));
    assert!(
        fs::read(mnt.join("blob")).unwrap() == content,
        "file intact after restart"
    );
    sh(&format!("umount {}", mnt.display()));
    lo.detach();
    drop(serve);
}
