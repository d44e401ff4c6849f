//! Output people expect: `volume list -o yaml` beside `-o json`, colours and progress only
//! on a terminal (plain text for pipes and scripts).

mod common;

use std::process::Command;

use common::Env;

const ENC: &str = "storageos.com/encryption=true";

/// Runs `storageos-fuse ARGS` under a pseudo-terminal (util-linux `script`), returning
/// what the terminal showed (stdout and stderr together).
fn on_tty(env: &Env, args: &str) -> String {
    let cmd = env.cmd();
    let mut c = Command::new("script");
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let line = format!("{} {args}", common::bin().display());
    let o = c.args(["-qec", &line, "/dev/null"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn list_as_yaml_matches_json_and_colour_only_on_a_terminal() {
    if !common::require_real(&["script"]) {
        return;
    }
    let env = Env::new();
    env.ok(&["volume", "create", "apps/web", "--size", "8Mi"]);
    env.ok(&["volume", "create", "secure/db", "--size", "8Mi", "-l", ENC]);

    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["volume", "list", "-o", "json"])).unwrap();
    let yaml_text = env.ok(&["volume", "list", "-o", "yaml"]);
    let yaml: serde_json::Value = serde_saphyr::from_str(&yaml_text).unwrap();
    assert_eq!(yaml, json, "-o yaml holds what -o json holds:\n{yaml_text}");
    assert_eq!(yaml.as_array().unwrap().len(), 2);
    assert!(yaml_text.contains("key_status: available"), "{yaml_text}");

    // Piped: plain text, no escape sequences.
    let table = env.ok(&["volume", "list"]);
    assert!(table.starts_with("NAMESPACE"), "{table}");
    assert!(!table.contains('\x1b'), "no colour in a pipe: {table:?}");

    // On a terminal: the header is bold, the rows are not.
    let shown = on_tty(&env, "volume list");
    let header = shown.lines().next().unwrap();
    assert!(
        header.starts_with("\x1b[1mNAMESPACE") && header.ends_with("\x1b[0m"),
        "{shown:?}"
    );
    assert!(
        shown.lines().skip(1).all(|l| !l.contains('\x1b')),
        "{shown:?}"
    );
}

#[test]
fn backup_shows_progress_only_on_a_terminal() {
    if !common::require_real(&["script"]) {
        return;
    }
    let env = Env::new();
    for i in 0..5 {
        env.ok(&[
            "volume",
            "create",
            &format!("team{}/v{i}", i % 2),
            "--size",
            "1Mi",
            "-l",
            ENC,
        ]);
    }
    // 2 ns-keys + 5 vol-keys.
    let out = env.path("backup-pipe");
    let o = env.run(&["keys", "backup", "--out", out.to_str().unwrap()]);
    assert!(o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        !err.contains('\r') && !err.contains("backing up"),
        "{err:?}"
    );
    assert!(err.contains("backed up 7 Secret(s)"), "{err}");
    assert_eq!(String::from_utf8(o.stdout).unwrap().lines().count(), 7);

    let out = env.path("backup-tty");
    let shown = on_tty(&env, &format!("keys backup --out {}", out.display()));
    assert!(shown.contains("\rbacking up Secrets: 7/7"), "{shown:?}");
    assert!(shown.contains("backing up Secrets: 1/7"), "{shown:?}");
    assert!(shown.contains("backed up 7 Secret(s)"), "{shown:?}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 7);
}
