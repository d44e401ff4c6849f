//! A volume whose key is missing or fails a check is never served: `mount` exits non-zero
//! with one `error:` line naming the Secret and the way out, and nothing is mounted.

mod common;

use std::fs;

use common::{Env, require_real};

fn create(env: &Env) -> String {
    let v: serde_json::Value = serde_json::from_str(&env.ok(&[
        "volume",
        "create",
        "default/pvc0002",
        "--size",
        "16Mi",
        "--label",
        "storageos.com/encryption=true",
    ]))
    .unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn assert_not_mounted(id: &str) {
    assert!(
        !fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(id)
    );
}

#[test]
fn missing_vol_key_is_refused_by_name_then_restored() {
    if !require_real(&[]) {
        return;
    }
    let env = Env::new();
    let id = create(&env);
    let secret = env.keys.join(format!("vol-key.{id}.yaml"));
    let backup = env.path("backup.yaml");
    fs::rename(&secret, &backup).unwrap();

    assert_eq!(env.inspect("pvc0002")["key_status"], "missing");
    let img = env.path("img");
    for extra in [&[][..], &["--background"][..]] {
        let mut args = vec!["mount", "default/pvc0002", "--at", img.to_str().unwrap()];
        args.extend(extra);
        let line = env.fails(&args);
        assert!(line.contains(&format!("vol-key.{id}")), "{line}");
        assert!(line.contains("missing"), "{line}");
        assert!(line.contains("restore"), "{line}");
        assert_not_mounted(&id);
    }
    assert!(!img.exists(), "nothing created for a refused mount");

    fs::rename(&backup, &secret).unwrap();
    assert_eq!(env.inspect("pvc0002")["key_status"], "available");
    env.mount_bg("default/pvc0002", "ok");
    env.ok(&["umount", "default/pvc0002"]);
}

fn tamper(env: &Env, id: &str, field: &str) {
    use base64::Engine as _;
    let p = env.keys.join(format!("vol-key.{id}.yaml"));
    let text = fs::read_to_string(&p).unwrap();
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let prefix = format!("  {field}: ");
            match l.strip_prefix(&prefix) {
                Some(v) => {
                    let mut bytes = base64::engine::general_purpose::STANDARD.decode(v).unwrap();
                    bytes[3] ^= 0x40;
                    format!(
                        "{prefix}{}",
                        base64::engine::general_purpose::STANDARD.encode(bytes)
                    )
                }
                None => l.to_string(),
            }
        })
        .collect();
    assert_ne!(out.join("\n"), text.trim_end(), "field {field} found");
    fs::write(&p, out.join("\n") + "\n").unwrap();
}

#[test]
fn altered_vol_key_is_refused() {
    if !require_real(&[]) {
        return;
    }
    for field in ["vuk", "iv", "nsk", "digest"] {
        let env = Env::new();
        let id = create(&env);
        tamper(&env, &id, field);
        assert_eq!(env.inspect(&id)["key_status"], "mismatch", "{field}");
        let img = env.path("img");
        let line = env.fails(&["mount", &id, "--at", img.to_str().unwrap(), "--background"]);
        assert!(
            line.contains(&format!("vol-key.{id}")) && line.contains("refused"),
            "{field}: {line}"
        );
        assert_not_mounted(&id);
    }
}

#[test]
fn vol_key_copied_from_another_volume_is_refused() {
    if !require_real(&[]) {
        return;
    }
    let env = Env::new();
    let a = create(&env);
    let b: serde_json::Value = serde_json::from_str(&env.ok(&[
        "volume",
        "create",
        "other",
        "--size",
        "16Mi",
        "--label",
        "storageos.com/encryption=true",
    ]))
    .unwrap();
    let b = b["id"].as_str().unwrap().to_string();
    // Replace b's Secret with a's, renamed: a real key, but not b's.
    let text = fs::read_to_string(env.keys.join(format!("vol-key.{a}.yaml")))
        .unwrap()
        .replace(&a, &b);
    fs::write(env.keys.join(format!("vol-key.{b}.yaml")), text).unwrap();
    let line = env.fails(&["mount", &b, "--at", env.path("img").to_str().unwrap()]);
    assert!(
        line.contains(&format!("vol-key.{b}")) && line.contains("does not open"),
        "{line}"
    );
    assert_not_mounted(&b);
}
