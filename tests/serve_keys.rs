//! `serve` with the live `dir` key source: encrypted volumes appear once their key is
//! there (restored by atomic rename, a directory that appears, a kubelet `..data` swap),
//! keep being served when their Secret is deleted, and broken key files are skipped.

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, symlink};
use std::path::Path;
use std::time::{Duration, Instant};

use common::serve::{Serve, wait_until};
use common::{Env, fixtures, pseudo_random};

const ENC: &str = "storageos.com/encryption=true";
/// The promise: a restored key is used within 2 s, without a restart.
const RESTORE_DEADLINE: Duration = Duration::from_secs(2);

fn id_of(env: &Env, vol: &str) -> String {
    env.inspect(vol)["id"].as_str().unwrap().to_string()
}

/// Creates `default/enc` (encrypted) and `default/plain`, writes a pattern into `enc`
/// through a first serve, and returns enc's id and the pattern.
fn encrypted_with_data(env: &Env) -> (String, Vec<u8>) {
    env.ok(&["volume", "create", "enc", "--size", "8Mi", "--label", ENC]);
    env.ok(&["volume", "create", "plain", "--size", "8Mi"]);
    let id = id_of(env, "enc");
    let data = pseudo_random(3, 256 << 10);
    let serve = Serve::start(env);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(serve.path("default/enc"))
        .unwrap();
    f.write_all_at(&data, 4096).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert!(serve.stop().success());
    (id, data)
}

fn read_back(path: &Path, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, 4096)
        .unwrap();
    buf
}

/// Serve is up and has scanned (plain is there), but the encrypted volume is not exposed.
fn assert_not_exposed(serve: &Serve, id: &str) {
    assert!(serve.path("default/plain").exists());
    assert!(
        !serve.path("default/enc").exists(),
        "served without its key"
    );
    assert!(!serve.path(&format!("by-id/{id}")).exists());
}

fn assert_appears_in_time(serve: &Serve, id: &str, data: &[u8]) {
    let start = Instant::now();
    let appeared = wait_until(RESTORE_DEADLINE, || {
        serve.path(&format!("by-id/{id}")).exists()
    });
    assert!(
        appeared,
        "restored volume not served within {RESTORE_DEADLINE:?} (waited {:?}); log:\n{}",
        start.elapsed(),
        serve.log_text()
    );
    assert!(
        read_back(&serve.path("default/enc"), data.len()) == data,
        "data intact"
    );
}

#[test]
fn a_vol_key_moved_back_by_atomic_rename_is_served_within_two_seconds() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    let (id, data) = encrypted_with_data(&env);
    let key_file = env.keys.join(format!("vol-key.{id}.yaml"));
    let backup = env.path("backup.yaml");
    fs::rename(&key_file, &backup).unwrap();

    let serve = Serve::start(&env);
    assert_not_exposed(&serve, &id);
    assert!(
        serve.log_text().contains(&format!("vol-key.{id}")),
        "log names the missing Secret"
    );
    assert_eq!(env.inspect("enc")["key_status"], "missing");

    // An atomic rename into the directory (`mv backup.yaml keys/`, or how editors and
    // `kubectl get ... > f; mv f keys/` land a file): one IN_MOVED_TO, nothing else.
    fs::rename(&backup, &key_file).unwrap();
    assert_appears_in_time(&serve, &id, &data);
}

#[test]
fn a_keys_dir_that_appears_after_start_is_picked_up() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    let (id, data) = encrypted_with_data(&env);
    let away = env.path("keys.away");
    fs::rename(&env.keys, &away).unwrap();

    let serve = Serve::start(&env);
    assert_not_exposed(&serve, &id);
    fs::rename(&away, &env.keys).unwrap();
    assert_appears_in_time(&serve, &id, &data);
}

#[test]
fn a_kubelet_projected_secret_volume_swap_is_picked_up() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    let (id, data) = encrypted_with_data(&env);
    let ns = "ns-key.default.yaml";
    let vk = format!("vol-key.{id}.yaml");

    // The kubelet's layout: `..<timestamp>/` holds the files, `..data` points at it, the
    // visible names are symlinks through `..data`. First without the vol-key.
    let proj = env.path("projected");
    let v1 = proj.join("..2026_12_03_10_00_00.1");
    fs::create_dir_all(&v1).unwrap();
    fs::copy(env.keys.join(ns), v1.join(ns)).unwrap();
    symlink("..2026_12_03_10_00_00.1", proj.join("..data")).unwrap();
    symlink(format!("..data/{ns}"), proj.join(ns)).unwrap();

    let serve = Serve::start_with(&env, &[("STORAGEOS_FUSE_KEYS_DIR", &proj)]);
    assert_not_exposed(&serve, &id);

    // The kubelet's atomic update: new timestamped dir, `..data_tmp` renamed over
    // `..data`, new visible symlinks, old dir removed.
    let v2 = proj.join("..2026_12_03_10_05_00.2");
    fs::create_dir(&v2).unwrap();
    fs::copy(env.keys.join(ns), v2.join(ns)).unwrap();
    fs::copy(env.keys.join(&vk), v2.join(&vk)).unwrap();
    symlink("..2026_12_03_10_05_00.2", proj.join("..data_tmp")).unwrap();
    fs::rename(proj.join("..data_tmp"), proj.join("..data")).unwrap();
    symlink(format!("..data/{vk}"), proj.join(&vk)).unwrap();
    fs::remove_dir_all(&v1).unwrap();
    assert_appears_in_time(&serve, &id, &data);
}

#[test]
fn deleting_the_secret_of_a_served_volume_in_use_keeps_it_served() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    let (id, data) = encrypted_with_data(&env);
    let serve = Serve::start(&env);
    let image = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(serve.path("default/enc"))
        .unwrap();

    fs::remove_file(env.keys.join(format!("vol-key.{id}.yaml"))).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || serve
            .log_text()
            .contains("keeps being served")),
        "no warning about the deleted Secret; log:\n{}",
        serve.log_text()
    );
    let log = serve.log_text();
    let warning = log
        .lines()
        .find(|l| l.contains("keeps being served"))
        .unwrap();
    assert!(
        warning.contains("WARN") && warning.contains(&format!("vol-key.{id}")),
        "{warning}"
    );

    // The open handle and new opens both still see the plaintext.
    let mut buf = vec![0u8; data.len()];
    image.read_exact_at(&mut buf, 4096).unwrap();
    assert!(buf == data);
    let more = pseudo_random(5, 64 << 10);
    image.write_all_at(&more, 1 << 20).unwrap();
    image.sync_all().unwrap();
    assert!(read_back(&serve.path(&format!("by-id/{id}")), data.len()) == data);
    drop(image);
    assert!(
        serve.path("default/enc").exists(),
        "still served after close"
    );
    assert_eq!(env.inspect("enc")["key_status"], "missing");
}

#[test]
fn broken_key_files_are_reported_and_skipped() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    let (id, data) = encrypted_with_data(&env);
    let bad_dir = fixtures().join("cases/bad");
    let mut bad: Vec<String> = fs::read_dir(&bad_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    bad.sort();
    assert!(bad.len() >= 5, "field cases present");
    for f in &bad {
        fs::copy(bad_dir.join(f), env.keys.join(f)).unwrap();
    }
    // A good multi-document file beside them still loads.
    fs::copy(
        fixtures().join("cases/kubectl/multi-doc.yaml"),
        env.keys.join("multi-doc.yaml"),
    )
    .unwrap();

    let serve = Serve::start(&env);
    assert!(
        read_back(&serve.path("default/enc"), data.len()) == data,
        "good keys still used"
    );
    assert!(serve.path(&format!("by-id/{id}")).exists());
    let log = serve.log_text();
    for f in &bad {
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains(f.as_str())),
            "{f} not reported; log:\n{log}"
        );
    }

    // A broken file dropped in while running is reported too, and changes nothing served.
    fs::write(env.keys.join("late-broken.yaml"), "kind: Secret\ndata: [\n").unwrap();
    assert!(wait_until(Duration::from_secs(10), || serve
        .log_text()
        .contains("late-broken.yaml")));
    assert!(serve.path("default/enc").exists());
    assert!(serve.path("default/plain").exists());
}
