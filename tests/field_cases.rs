//! The field cases (tests/fixtures/cases, copied from the shared field-case set): every good
//! file loads, every bad one is refused with a message naming the file and what is wrong,
//! never a panic, and a broken file never stops the good ones beside it.

mod common;

use std::fs;
use std::path::Path;

use common::{Env, fixtures};
use storageos_fuse::keys::{DirStore, KeyStore};

fn keys_dir_with(files: &[&str]) -> (tempfile::TempDir, DirStore) {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        let src = fixtures().join("cases").join(f);
        fs::copy(&src, dir.path().join(Path::new(f).file_name().unwrap())).unwrap();
    }
    let store = DirStore::new(dir.path(), "storageos");
    (dir, store)
}

const GOOD: &[&str] = &[
    "kubectl/ns-key.default.get-o-yaml.yaml",
    "kubectl/secrets-list.get-o-yaml.yaml",
    "kubectl/multi-doc.yaml",
];

const BAD: &[(&str, &str)] = &[
    ("bad/binary-garbage.yaml", "not text"),
    ("bad/configmap-not-secret.yaml", "ConfigMap, not a Secret"),
    ("bad/empty.yaml", "empty"),
    ("bad/not-base64.yaml", "data.key is not valid base64"),
    ("bad/short-ns-key.yaml", "data.key is 16 bytes, expected 32"),
    ("bad/tab-indented.yaml", "not valid YAML"),
    ("bad/truncated.yaml", "not valid YAML"),
    ("bad/vol-key-bad-id.yaml", "bad volume id"),
    ("bad/vol-key-missing-iv.yaml", "data.iv is missing"),
];

#[test]
fn good_kubectl_outputs_load() {
    let (_d, store) = keys_dir_with(GOOD);
    let report = store.load().unwrap();
    assert!(report.issues.is_empty(), "{:?}", report.issues);
    let k = &report.keys;
    for ns in ["default", "mongo", "web"] {
        assert!(k.ns_key(ns).is_some(), "ns-key.{ns}");
    }
    let rec = k
        .vol_key("4276fc07-7d85-70bf-35a0-f0b005e55e0f")
        .expect("vol-key from the List");
    assert_eq!(rec.volume_namespace.as_deref(), Some("default"));
    // The registry Secret in the List is not ours: ignored, not an error.
    assert!(!k.manifests.contains_key("regcred"));
    assert_eq!(k.manifests.len(), 4);
    // The same ns-key.default appears in two files with equal data: one key, no conflict.
    assert_eq!(k.ns_keys.len(), 3);
}

#[test]
fn each_bad_file_is_refused_alone_while_good_ones_load() {
    for (bad, why) in BAD {
        let mut files = GOOD.to_vec();
        files.push(bad);
        let (dir, store) = keys_dir_with(&files);
        let report = store.load().unwrap();
        let name = Path::new(bad)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let issues: Vec<_> = report
            .issues
            .iter()
            .filter(|i| i.source.ends_with(&name))
            .collect();
        assert_eq!(issues.len(), 1, "{bad}: {:?}", report.issues);
        assert!(
            issues[0].message.contains(why),
            "{bad}: {:?} should say {why:?}",
            issues[0].message
        );
        assert!(
            issues[0]
                .source
                .starts_with(&dir.path().display().to_string())
        );
        assert_eq!(
            report.issues.len(),
            1,
            "{bad}: only the bad file is refused"
        );
        assert_eq!(
            report.keys.manifests.len(),
            4,
            "{bad}: good files still load"
        );
    }
}

#[test]
fn refusals_never_echo_key_material() {
    let (_d, store) = keys_dir_with(&BAD.iter().map(|(f, _)| *f).collect::<Vec<_>>());
    let report = store.load().unwrap();
    for issue in &report.issues {
        for secret in [
            "EaFQyTVFYctI5By",
            "73aMAEe85h9XGf4",
            "kUIk++79Cfui8yrm",
            "xu6OHpixnv",
            "Fg6zp4d6ylSLC",
            "u0jpxgl9AYX",
        ] {
            assert!(!issue.to_string().contains(secret), "{issue}");
        }
    }
}

#[test]
fn cli_reports_a_broken_file_and_still_uses_the_good_ones() {
    let env = Env::new();
    fs::create_dir_all(&env.keys).unwrap();
    for f in ["kubectl/multi-doc.yaml", "bad/short-ns-key.yaml"] {
        let src = fixtures().join("cases").join(f);
        fs::copy(&src, env.keys.join(Path::new(f).file_name().unwrap())).unwrap();
    }
    // Creating a volume in namespace `mongo` adopts the restored ns-key.mongo.
    let o = env.run(&[
        "volume",
        "create",
        "mongo/db",
        "--size",
        "1Mi",
        "--label",
        "storageos.com/encryption=true",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("short-ns-key.yaml") && err.contains("16 bytes"),
        "warning names the file: {err}"
    );
    assert!(
        !env.keys.join("ns-key.mongo.yaml").exists(),
        "existing ns-key.mongo was adopted, not recreated"
    );
    let v = env.inspect("mongo/db");
    assert_eq!(v["key_status"], "available");
}

/// The copies in tests/fixtures must stay in step with the shared field cases when those
/// are beside the repository (CI lays them there; a user's clone has only the copies).
#[test]
fn fixtures_match_shared_cases() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/cases");
    if !shared.exists() {
        assert!(
            !common::in_ci(),
            "CI must have ../shared/cases beside the repository"
        );
        return;
    }
    let mut n = 0;
    for sub in ["kubectl", "bad"] {
        for e in fs::read_dir(shared.join(sub)).unwrap().flatten() {
            let ours = fixtures().join("cases").join(sub).join(e.file_name());
            assert_eq!(
                fs::read(e.path()).unwrap(),
                fs::read(&ours).unwrap_or_default(),
                "{}",
                ours.display()
            );
            n += 1;
        }
    }
    assert!(n >= 12);
}
