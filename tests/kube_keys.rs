//! Key source `kube` against the test API server (tests/common/kube_api.rs): the ns-key
//! race between two creators, the Secrets watcher feeding a keyring across server restarts
//! and 410 Gone, and `keys restore`/`keys backup` of the field cases on both sources.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::kube_api::{History, KubeApi, KubeEnv};
use serde_json::json;
use storageos_fuse::keys::kube::{KubeConnect, KubeStore, spawn_kube_watcher};
use storageos_fuse::keys::{self, KeyStore, Keyring};

/// Waits (at most a minute, so a broken watcher fails instead of hanging) until `ok` holds
/// for the keyring. Not a timing assertion: the bound only stops a hang.
fn wait_for(ring: &Keyring, what: &str, ok: impl Fn(&Keyring) -> bool) {
    let end = Instant::now() + Duration::from_secs(60);
    let mut generation = ring.generation();
    while !ok(ring) {
        assert!(Instant::now() < end, "keyring never got to: {what}");
        generation = ring.wait_change(generation, Duration::from_millis(200));
    }
}

fn vol_key_json(store: &dyn KeyStore, id: &str, namespace: &str) -> serde_json::Value {
    let nsk = keys::ensure_namespace_key(store, namespace).unwrap();
    let m = keys::new_volume_keys(id, namespace, &nsk).to_manifest(store.key_namespace());
    let secret = keys::kube::secret_from_manifest(&m, store.key_namespace());
    serde_json::to_value(secret).unwrap()
}

fn connect(api: &KubeApi, dir: &std::path::Path) -> KubeConnect {
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    KubeConnect {
        namespace: "storageos".into(),
        kubeconfig: Some(kubeconfig),
    }
}

#[test]
fn two_creators_in_a_new_namespace_converge_on_one_ns_key() {
    let k = KubeEnv::new();
    // Both creators must have listed (no ns-key yet) and sent their create before either
    // is answered: the race happens every run.
    k.api.hold_creates("ns-key.", 2);
    let spawn = |name: &str| {
        k.sf_cmd()
            .args(["volume", "create", &format!("race/{name}"), "--size", "1Mi"])
            .args(["--label", "storageos.com/encryption=true"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn storageos-fuse")
    };
    let a = spawn("one");
    let b = spawn("two");
    for (name, child) in [("one", a), ("two", b)] {
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "create race/{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(k.api.conflicts(), 1, "one creator lost the race with 409");
    let names = k.api.secret_names("storageos");
    assert_eq!(
        names.iter().filter(|n| n.starts_with("ns-key.")).count(),
        1,
        "{names:?}"
    );
    for v in ["race/one", "race/two"] {
        let view: serde_json::Value =
            serde_json::from_str(&k.sf(&["volume", "inspect", v])).unwrap();
        assert_eq!(view["key_status"], "available", "{v}: {view}");
    }
    // Both volumes really unlock: serve each one.
    for v in ["race/one", "race/two"] {
        if common::require_real(&[]) {
            let img = k.env.path(&format!("{}.img", v.replace('/', "-")));
            k.sf(&["mount", v, "--at", img.to_str().unwrap(), "--background"]);
            k.sf(&["umount", img.to_str().unwrap()]);
        }
    }
}

#[test]
fn watcher_follows_secrets_through_restarts_and_410() {
    let tmp = tempfile::tempdir().unwrap();
    let mut api = KubeApi::start();
    let conn = connect(&api, tmp.path());
    let store = KubeStore::connect(&conn).unwrap();
    let id1 = "11111111-1111-4111-8111-111111111111";
    assert_eq!(
        api.create_secret("storageos", vol_key_json(&store, id1, "default")),
        201
    );
    // An unrelated Secret, and a broken vol-key (no iv).
    api.create_secret(
        "storageos",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "registry-pull"},
               "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "e30="}}),
    );
    let mut broken = vol_key_json(&store, "22222222-2222-4222-8222-222222222222", "default");
    broken["data"].as_object_mut().unwrap().remove("iv");
    assert_eq!(api.create_secret("storageos", broken), 201);

    // Field cases: a short ns-key is stored by the server but skipped by the watcher; a
    // vol-key whose name has path characters is refused by the server itself.
    let fixture = |rel: &str| {
        let text = std::fs::read(case(rel)).unwrap();
        let m = keys::parse_manifests(&text).unwrap().remove(0).unwrap();
        serde_json::to_value(keys::kube::secret_from_manifest(&m, "storageos")).unwrap()
    };
    assert_eq!(
        api.create_secret("storageos", fixture("bad/short-ns-key.yaml")),
        201
    );
    assert_eq!(
        api.create_secret("storageos", fixture("bad/vol-key-bad-id.yaml")),
        422
    );

    let ring = Keyring::new();
    let watcher = spawn_kube_watcher(&conn, ring.clone()).unwrap();
    wait_for(&ring, "initial list", |r| {
        r.snapshot().vol_key(id1).is_some()
    });
    let snap = ring.snapshot();
    assert!(snap.ns_key("default").is_some());
    assert!(!snap.manifests.contains_key("registry-pull"));
    assert!(snap.ns_key("beta").is_none());
    let issues: Vec<String> = ring.issues().iter().map(|i| i.to_string()).collect();
    assert_eq!(issues.len(), 2, "{issues:?}");
    assert!(
        issues
            .iter()
            .any(|i| i.contains("vol-key.22222222-2222-4222-8222-222222222222"))
    );
    assert!(issues.iter().any(|i| i.contains("ns-key.beta")));
    assert!(!issues.iter().any(|i| i.contains("registry-pull")));

    // Live: a Secret created and one deleted while watching.
    let id3 = "33333333-3333-4333-8333-333333333333";
    store
        .create(
            &keys::kube::manifest_from_secret(
                serde_json::from_value(vol_key_json(&store, id3, "default")).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
    wait_for(&ring, "vol-key 3 added", |r| {
        r.snapshot().vol_key(id3).is_some()
    });
    store.delete(&keys::vol_key_name(id1)).unwrap();
    wait_for(&ring, "vol-key 1 deleted", |r| {
        r.snapshot().vol_key(id1).is_none()
    });

    // The server goes away, comes back with its history: the watch resumes.
    api.stop();
    std::thread::sleep(Duration::from_millis(300));
    api.start_again(History::Keep);
    let id4 = "44444444-4444-4444-8444-444444444444";
    assert_eq!(
        api.create_secret("storageos", vol_key_json(&store, id4, "default")),
        201
    );
    wait_for(&ring, "vol-key 4 after reconnect", |r| {
        r.snapshot().vol_key(id4).is_some()
    });

    // The server restarts mid-watch and has lost history: it answers 410 Gone, the
    // watcher relists, and a Secret created afterwards is still picked up.
    let gone_before = api.gone_sent();
    api.restart(History::Lose);
    let id5 = "55555555-5555-4555-8555-555555555555";
    assert_eq!(
        api.create_secret("storageos", vol_key_json(&store, id5, "default")),
        201
    );
    wait_for(&ring, "vol-key 5 after 410", |r| {
        r.snapshot().vol_key(id5).is_some()
    });
    assert!(
        api.gone_sent() > gone_before,
        "the server answered 410 Gone"
    );
    let snap = ring.snapshot();
    assert!(snap.vol_key(id3).is_some() && snap.vol_key(id4).is_some());
    assert!(snap.vol_key(id1).is_none());
    watcher.stop();
}

fn case(rel: &str) -> PathBuf {
    common::fixtures().join("cases").join(rel)
}

#[test]
fn restore_accepts_kubectl_output_and_refuses_bad_cases_on_both_sources() {
    let k = KubeEnv::new();
    let list = case("kubectl/secrets-list.get-o-yaml.yaml");
    let multi = case("kubectl/multi-doc.yaml");
    let single = case("kubectl/ns-key.default.get-o-yaml.yaml");

    // Every bad case alone is refused, naming the file, and creates nothing.
    let bad_dir = common::fixtures().join("cases/bad");
    let mut bad: Vec<PathBuf> = std::fs::read_dir(&bad_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    bad.sort();
    assert!(bad.len() >= 9);
    for f in &bad {
        let name = f.file_name().unwrap().to_str().unwrap();
        let err = k.sf_fails(&["keys", "restore", f.to_str().unwrap()]);
        assert!(err.contains(name), "{name}: {err}");
        let err = k.env.fails(&["keys", "restore", f.to_str().unwrap()]);
        assert!(err.contains(name), "dir source, {name}: {err}");
        // Together with good files: still refused as a whole.
        k.sf_fails(&[
            "keys",
            "restore",
            single.to_str().unwrap(),
            f.to_str().unwrap(),
        ]);
    }
    assert!(k.api.secret_names("storageos").is_empty());
    assert!(!k.env.keys.exists() || std::fs::read_dir(&k.env.keys).unwrap().next().is_none());

    for (label, out) in [
        (
            "kube",
            k.sf_run(&[
                "keys",
                "restore",
                list.to_str().unwrap(),
                multi.to_str().unwrap(),
                single.to_str().unwrap(),
            ]),
        ),
        (
            "dir",
            k.env.run(&[
                "keys",
                "restore",
                list.to_str().unwrap(),
                multi.to_str().unwrap(),
                single.to_str().unwrap(),
            ]),
        ),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{label}: {stderr}");
        assert!(
            stderr.contains("skipped"),
            "{label}: unrelated Secret noted: {stderr}"
        );
    }
    let mut names = k.api.secret_names("storageos");
    names.sort();
    let mut files: Vec<String> = std::fs::read_dir(&k.env.keys)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".yaml")
                .to_string()
        })
        .collect();
    files.sort();
    assert_eq!(names, files, "both sources hold the same Secrets");
    assert!(names.contains(&"ns-key.default".to_string()));
    assert!(
        names.contains(&"ns-key.mongo".to_string()) && names.contains(&"ns-key.web".to_string())
    );
    assert!(names.iter().any(|n| n.starts_with("vol-key.")));
    assert!(
        !names
            .iter()
            .any(|n| n.contains("registry") || n.contains("docker")),
        "{names:?}"
    );

    // Backups from either source carry the same data and no server fields.
    k.sf(&[
        "keys",
        "backup",
        "--out",
        k.env.path("bk-kube").to_str().unwrap(),
    ]);
    k.env.ok(&[
        "keys",
        "backup",
        "--out",
        k.env.path("bk-dir").to_str().unwrap(),
    ]);
    for n in &names {
        let a = std::fs::read_to_string(k.env.path(&format!("bk-kube/{n}.yaml"))).unwrap();
        let b = std::fs::read_to_string(k.env.path(&format!("bk-dir/{n}.yaml"))).unwrap();
        let pa = keys::parse_manifests(a.as_bytes())
            .unwrap()
            .remove(0)
            .unwrap();
        let pb = keys::parse_manifests(b.as_bytes())
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(pa.data, pb.data, "{n}");
        assert_eq!(pa.namespace.as_deref(), Some("storageos"));
        assert!(!a.contains("resourceVersion") && !a.contains("uid:"), "{a}");
    }
}

#[test]
fn kube_store_reports_an_unreachable_server_in_one_line() {
    let api = KubeApi::start();
    let tmp = tempfile::tempdir().unwrap();
    let conn = connect(&api, tmp.path());
    drop(api);
    let store = KubeStore::connect(&conn).unwrap();
    let err = store.load().unwrap_err().to_string();
    assert!(err.contains("namespace storageos"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}
