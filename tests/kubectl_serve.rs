//! `serve --key-source kube` driven with the real `kubectl` against the test API server
//! (tests/common/kube_api.rs): a served volume survives the deletion of its Secret; a
//! volume whose Secret was deleted before serve started is not served, and appears in the
//! running serve, data intact, once its Secret is restored with `keys restore` or with
//! `kubectl create -f` of a `keys backup` file; and restores still reach serve after the
//! API server restarted under it.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::kube_api::{History, KubeEnv};
use common::serve::{Serve, wait_until};

const ENC: &str = "storageos.com/encryption=true";
/// The promise: a restored key is used within 2 s, without a restart.
const RESTORE_DEADLINE: Duration = Duration::from_secs(2);
/// After an API server restart the watcher reconnects with backoff: only a hang bound.
const RECONNECT_BOUND: Duration = Duration::from_secs(60);

/// `serve` with key source kube, its keys in namespace `storageos` (POD_NAMESPACE).
fn serve_kube(k: &KubeEnv) -> Serve {
    let mut cmd = k.sf_cmd();
    cmd.env("POD_NAMESPACE", "storageos");
    Serve::start_cmd(&k.env, cmd)
}

fn pattern(seed: u64) -> Vec<u8> {
    common::pseudo_random(seed, 256 << 10)
}

fn write_at(path: &Path, data: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, 4096).unwrap();
    f.sync_all().unwrap();
}

fn read_back(path: &Path, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, 4096)
        .unwrap();
    buf
}

struct Vol {
    name: &'static str,
    id: String,
    data: Vec<u8>,
}

impl Vol {
    fn secret(&self) -> String {
        format!("vol-key.{}", self.id)
    }
}

/// Creates encrypted volumes `default/<name>` with key source kube and writes a pattern into
/// each through a first serve (stopped again).
fn volumes_with_data(k: &KubeEnv, names: &[&'static str]) -> Vec<Vol> {
    let vols: Vec<Vol> = names
        .iter()
        .zip(1u64..)
        .map(|(name, seed)| {
            let v = format!("default/{name}");
            k.sf(&["volume", "create", &v, "--size", "8Mi", "--label", ENC]);
            let view: serde_json::Value =
                serde_json::from_str(&k.sf(&["volume", "inspect", &v])).unwrap();
            Vol {
                name,
                id: view["id"].as_str().unwrap().to_string(),
                data: pattern(seed),
            }
        })
        .collect();
    let serve = serve_kube(k);
    for v in &vols {
        write_at(&serve.path(&format!("default/{}", v.name)), &v.data);
    }
    assert!(serve.stop().success());
    vols
}

fn served(serve: &Serve, v: &Vol) -> bool {
    serve.path(&format!("default/{}", v.name)).exists()
        && serve.path(&format!("by-id/{}", v.id)).exists()
}

/// Polls (within the restore deadline) until `v` is served, then checks its data.
fn appears_intact(serve: &Serve, v: &Vol, limit: Duration, how: &str) {
    assert!(
        wait_until(limit, || served(serve, v)),
        "{} not served within {limit:?} after {how}; serve log:\n{}",
        v.name,
        serve.log_text()
    );
    assert!(
        read_back(&serve.path(&format!("default/{}", v.name)), v.data.len()) == v.data,
        "{}: data differs after {how}",
        v.name
    );
}

#[test]
fn serve_follows_secrets_deleted_and_restored_with_kubectl() {
    if !common::require_real(&["kubectl"]) {
        return;
    }
    let k = KubeEnv::new();
    let vols = volumes_with_data(&k, &["a", "b", "c"]);
    let (a, b, c) = (&vols[0], &vols[1], &vols[2]);

    // Back up b both ways, c with `keys backup`, then lose both Secrets before serve runs.
    k.sh_ok(&format!(
        "kubectl get secret {} -n storageos -o yaml > f",
        b.secret()
    ));
    k.sh_ok("storageos-fuse keys backup --out backup");
    assert!(k.env.path(&format!("backup/{}.yaml", c.secret())).exists());
    for v in [b, c] {
        k.sh_ok(&format!(
            "kubectl delete secret {} -n storageos",
            v.secret()
        ));
    }

    let serve = serve_kube(&k);
    // Ready means the first snapshot was used: a is there, b and c are not.
    assert!(served(&serve, a), "log:\n{}", serve.log_text());
    assert!(!served(&serve, b) && !served(&serve, c));

    // a's Secret deleted while it is served.
    k.sh_ok(&format!(
        "kubectl delete secret {} -n storageos",
        a.secret()
    ));

    // Restore (a): `storageos-fuse keys restore` of the raw kubectl file. The watch
    // delivers events in order, so once b appears serve has also seen a's deletion.
    let out = k.sh_ok("storageos-fuse keys restore f");
    assert!(
        out.contains(&format!("secret/{} restored", b.secret())),
        "{out}"
    );
    appears_intact(&serve, b, RESTORE_DEADLINE, "keys restore");
    assert!(k.api.secret("storageos", &a.secret()).is_none());
    assert!(served(&serve, a), "a dropped after its Secret was deleted");
    assert!(
        read_back(&serve.path("default/a"), a.data.len()) == a.data,
        "a's data after its Secret was deleted"
    );

    // Restore (b): `kubectl create -f` of the `keys backup` output.
    assert!(!served(&serve, c));
    let created = k.sh_ok(&format!("kubectl create -f backup/{}.yaml", c.secret()));
    assert!(
        created.contains(&format!("secret/{} created", c.secret())),
        "{created}"
    );
    appears_intact(&serve, c, RESTORE_DEADLINE, "kubectl create -f");
    assert!(served(&serve, a) && served(&serve, b));
    assert!(serve.stop().success());
}

#[test]
fn serve_picks_up_a_restore_after_the_api_server_restarted() {
    if !common::require_real(&["kubectl"]) {
        return;
    }
    let mut k = KubeEnv::new();
    let vols = volumes_with_data(&k, &["d", "e"]);
    let (d, e) = (&vols[0], &vols[1]);
    for v in [d, e] {
        k.sh_ok(&format!(
            "kubectl get secret {} -n storageos -o yaml > {}.yaml",
            v.secret(),
            v.name
        ));
        k.sh_ok(&format!(
            "kubectl delete secret {} -n storageos",
            v.secret()
        ));
    }
    let serve = serve_kube(&k);
    assert!(!served(&serve, d) && !served(&serve, e));

    // The API server goes away and comes back with its history: the watch resumes.
    k.api.stop();
    std::thread::sleep(Duration::from_millis(300));
    k.api.start_again(History::Keep);
    k.sh_ok("storageos-fuse keys restore d.yaml");
    appears_intact(&serve, d, RECONNECT_BOUND, "restore after a reconnect");

    // It restarts having lost its history: the watch gets 410 Gone and relists.
    let gone = k.api.gone_sent();
    k.api.restart(History::Lose);
    k.sh_ok("kubectl create -f e.yaml");
    appears_intact(&serve, e, RECONNECT_BOUND, "restore after a 410 relist");
    assert!(k.api.gone_sent() > gone, "the server answered 410 Gone");
    assert!(served(&serve, d));
    assert!(serve.stop().success());
}
