//! The StorageOS encryption guide, replayed with the real `kubectl` against the test API
//! server (tests/common/kube_api.rs) and storageos-fuse with `--key-source kube`: Secrets
//! created with the volume, backed up with `kubectl get -o yaml`, deleted, restored both
//! ways, and the volume's data intact afterwards.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};

use common::kube_api::KubeEnv;

/// `kubectl get secrets -n storageos` rows as (NAME, TYPE, DATA).
fn secret_rows(out: &str) -> Vec<(String, String, String)> {
    let mut lines = out.lines();
    let head: Vec<&str> = lines
        .next()
        .expect("table header")
        .split_whitespace()
        .collect();
    assert_eq!(
        head,
        ["NAME", "TYPE", "DATA", "AGE"],
        "kubectl table header:\n{out}"
    );
    lines
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c[0].to_string(), c[1].to_string(), c[2].to_string())
        })
        .collect()
}

/// Writes a recognisable pattern into the mounted image at a few offsets.
fn write_pattern(img: &std::path::Path) -> Vec<(u64, Vec<u8>)> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let chunks: Vec<(u64, Vec<u8>)> = [(0u64, 1u64), (1 << 20, 2), (3 << 30, 3)]
        .into_iter()
        .map(|(off, seed)| (off, common::pseudo_random(seed, 64 << 10)))
        .collect();
    for (off, data) in &chunks {
        f.seek(SeekFrom::Start(*off)).unwrap();
        f.write_all(data).unwrap();
    }
    f.sync_all().unwrap();
    chunks
}

fn check_pattern(img: &std::path::Path, chunks: &[(u64, Vec<u8>)]) {
    let mut f = fs::File::open(img).unwrap();
    for (off, data) in chunks {
        let mut got = vec![0u8; data.len()];
        f.seek(SeekFrom::Start(*off)).unwrap();
        f.read_exact(&mut got).unwrap();
        assert!(&got == data, "data at offset {off} differs after restore");
    }
}

/// The Secret of a `kubectl get -o yaml` file as JSON, server fields kept.
fn raw_secret_json(yaml: &str) -> serde_json::Value {
    let mut v =
        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {}, "data": {}});
    let mut section = "";
    for line in yaml.lines() {
        let indented = line.starts_with("  ");
        let Some((k, val)) = line.trim().split_once(':') else {
            continue;
        };
        let val = val.trim().trim_matches('"');
        if !indented {
            section = k;
            if k == "type" {
                v["type"] = val.into();
            }
        } else if line.starts_with("    ") {
            continue;
        } else if section == "data" {
            v["data"][k] = val.into();
        } else if section == "metadata" && !val.is_empty() {
            v["metadata"][k] = val.into();
        }
    }
    v
}

#[test]
fn guide_backup_delete_restore_with_kubectl() {
    if !common::require_real(&["kubectl"]) {
        return;
    }
    let k = KubeEnv::new();

    // Create the encrypted volume as the guide does.
    k.sh_ok("storageos-fuse volume create default/pvc0002 --label storageos.com/encryption=true --key-source kube");
    let id = k
        .sh_ok("storageos-fuse volume inspect default/pvc0002 | grep -m1 id")
        .split('"')
        .nth(3)
        .expect("id value")
        .to_string();
    assert_eq!(id.len(), 36, "volume id: {id}");
    let vol_key = format!("vol-key.{id}");

    let rows = secret_rows(&k.sh_ok("kubectl get secrets -n storageos"));
    assert!(
        rows.contains(&("ns-key.default".into(), "Opaque".into(), "1".into())),
        "{rows:?}"
    );
    assert!(
        rows.contains(&(vol_key.clone(), "Opaque".into(), "4".into())),
        "{rows:?}"
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    let stored = k.api.secret("storageos", &vol_key).unwrap();
    assert_eq!(
        stored["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "storageos-fuse"
    );
    assert_eq!(
        stored["metadata"]["labels"]["storageos.com/volume-id"],
        id.as_str()
    );
    assert_eq!(
        stored["metadata"]["labels"]["storageos.com/namespace"],
        "default"
    );

    // Data written through the mount.
    let img = k.env.path("pvc0002.img");
    let img_s = img.to_str().unwrap();
    k.sf(&["mount", "default/pvc0002", "--at", img_s, "--background"]);
    let chunks = write_pattern(&img);
    k.sf(&["umount", img_s]);

    // Back up both ways, then lose the Secret.
    k.sh_ok(&format!(
        "kubectl get secret {vol_key} -n storageos -o yaml > f"
    ));
    let raw = fs::read_to_string(k.env.path("f")).unwrap();
    assert!(
        raw.contains("resourceVersion:"),
        "raw kubectl output keeps server fields:\n{raw}"
    );
    let listed = k.sh_ok("storageos-fuse keys backup --out backup");
    assert_eq!(
        listed.lines().count(),
        2,
        "backup wrote one file per Secret: {listed}"
    );
    let backup_file = k.env.path(&format!("backup/{vol_key}.yaml"));
    let backup = fs::read_to_string(&backup_file).unwrap();
    for field in [
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "managedFields",
    ] {
        assert!(!backup.contains(field), "backup holds {field}:\n{backup}");
    }
    k.sh_ok(&format!("kubectl delete secret {vol_key} -n storageos"));

    // Without its Secret the volume cannot be mounted; the error names the Secret.
    let err = k.sf_fails(&["mount", "default/pvc0002", "--at", img_s, "--background"]);
    assert!(
        err.contains(&vol_key) && err.contains("namespace storageos"),
        "{err}"
    );
    assert!(err.contains("restore"), "{err}");

    // What the API server refuses, as a real one does. kubectl's own `create -f` clears
    // metadata.resourceVersion before it posts (kubectl 1.33, seen with -v=9), so the raw
    // file is refused only when its Secret still exists (409) ...
    k.sh_ok("kubectl get secret ns-key.default -n storageos -o yaml > nsk-raw.yaml");
    let refused = k.sh_fails("kubectl create -f nsk-raw.yaml");
    assert!(
        refused.contains("AlreadyExists")
            && refused.contains("secrets \"ns-key.default\" already exists"),
        "{refused}"
    );
    // ... and a client that posts the object as read, server fields included, is refused
    // with the real server's 400.
    let raw_json = k.env.path("f.json");
    fs::write(
        &raw_json,
        serde_json::to_vec(&raw_secret_json(&raw)).unwrap(),
    )
    .unwrap();
    let refused = k.sh_fails("kubectl create --raw /api/v1/namespaces/storageos/secrets -f f.json");
    assert!(
        refused.contains("resourceVersion should not be set on objects to be created"),
        "{refused}"
    );
    assert!(k.api.secret("storageos", &vol_key).is_none());

    // Restore 1: storageos-fuse keys restore accepts the raw file.
    let out = k.sh_ok("storageos-fuse keys restore f");
    assert!(out.contains(&format!("secret/{vol_key} restored")), "{out}");
    k.sf(&["mount", "default/pvc0002", "--at", img_s, "--background"]);
    check_pattern(&img, &chunks);
    k.sf(&["umount", img_s]);
    // Restoring the same Secret again is fine.
    let again = k.sh_ok("storageos-fuse keys restore f");
    assert!(again.contains("unchanged"), "{again}");

    // Restore 2: kubectl create -f of the `keys backup` output.
    k.sh_ok(&format!("kubectl delete secret {vol_key} -n storageos"));
    k.sf_fails(&["mount", "default/pvc0002", "--at", img_s, "--background"]);
    let created = k.sh_ok(&format!("kubectl create -f backup/{vol_key}.yaml"));
    assert!(
        created.contains(&format!("secret/{vol_key} created")),
        "{created}"
    );
    k.sf(&["mount", "default/pvc0002", "--at", img_s, "--background"]);
    check_pattern(&img, &chunks);
    k.sf(&["umount", img_s]);
    let status = k.sf(&["keys", "status"]);
    assert!(
        status.contains(&id) && status.contains("available"),
        "{status}"
    );

    // And the raw file itself once the Secret is gone: kubectl clears resourceVersion and
    // the server replaces uid and creationTimestamp, as a real one does.
    k.sh_ok(&format!("kubectl delete secret {vol_key} -n storageos"));
    k.sh_ok("kubectl create -f f");
    let recreated = k.api.secret("storageos", &vol_key).unwrap();
    assert_ne!(recreated["metadata"]["uid"], stored["metadata"]["uid"]);
    assert_eq!(recreated["data"], stored["data"]);
    k.sf(&["mount", "default/pvc0002", "--at", img_s, "--background"]);
    check_pattern(&img, &chunks);
    k.sf(&["umount", img_s]);
}

#[test]
fn restore_with_different_data_names_the_secret_and_changes_nothing() {
    if !common::require_real(&["kubectl"]) {
        return;
    }
    let k = KubeEnv::new();
    k.sf(&[
        "volume",
        "create",
        "default/a",
        "--size",
        "1Mi",
        "-l",
        "storageos.com/encryption=true",
    ]);
    let view: serde_json::Value =
        serde_json::from_str(&k.sf(&["volume", "inspect", "default/a"])).unwrap();
    let id = view["id"].as_str().unwrap().to_string();
    let vol_key = format!("vol-key.{id}");
    k.sh_ok(&format!(
        "kubectl get secret {vol_key} -n storageos -o yaml > f"
    ));
    // Same Secret with another iv: a different key.
    let raw = fs::read_to_string(k.env.path("f")).unwrap();
    let other_iv = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let changed: String = raw
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("iv:") {
                format!("  iv: {other_iv}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(raw.trim(), changed.trim());
    fs::write(k.env.path("changed.yaml"), changed).unwrap();
    let before = k.api.secret("storageos", &vol_key).unwrap();
    let err = k.sf_fails(&[
        "keys",
        "restore",
        k.env.path("changed.yaml").to_str().unwrap(),
    ]);
    assert!(
        err.contains(&vol_key) && err.contains("different data"),
        "{err}"
    );
    assert_eq!(k.api.secret("storageos", &vol_key).unwrap(), before);
    let status = k.sf(&["keys", "status"]);
    assert!(status.contains("available"), "{status}");

    // `volume delete` removes the vol-key Secret through the API; the ns-key stays.
    k.sf(&["volume", "delete", "default/a"]);
    let rows = secret_rows(&k.sh_ok("kubectl get secrets -n storageos"));
    assert_eq!(
        rows,
        [(
            "ns-key.default".to_string(),
            "Opaque".to_string(),
            "1".to_string()
        )]
    );
}
