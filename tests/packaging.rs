//! Packaging and operations: the Kubernetes manifests validate offline
//! (`kubernetes-validate --strict`), the manifests, Containerfile and systemd unit agree
//! with the daemon on flags, paths and names, RBAC is least privilege, and completions and
//! the manual page come from the clap definitions.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin, in_ci};

fn pkg(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging")
        .join(rel)
}

fn yaml(rel: &str) -> serde_json::Value {
    serde_saphyr::from_str(&fs::read_to_string(pkg(rel)).unwrap()).unwrap()
}

fn help(args: &[&str]) -> String {
    let o = Command::new(bin())
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap()
}

/// Every `--flag` in `args` must be one the daemon's `serve --help` lists.
fn assert_serve_accepts(args: &[String], what: &str) {
    let serve_help = help(&["serve"]);
    let global_help = help(&[]);
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap();
        assert!(
            serve_help.contains(&format!("{flag} "))
                || serve_help.contains(&format!("{flag}\n"))
                || global_help.contains(flag),
            "{what}: flag {flag} is not accepted by `storageos-fuse serve`"
        );
    }
}

const MANIFESTS: &[&str] = &[
    "namespace.yaml",
    "serviceaccount.yaml",
    "role.yaml",
    "rolebinding.yaml",
    "daemonset.yaml",
    "pvc-example.yaml",
];

fn kubernetes_validate() -> Option<PathBuf> {
    let candidates = [
        "kubernetes-validate",
        "/opt/storageos-fuse-test-venv/bin/kubernetes-validate",
    ];
    for c in candidates {
        if Command::new(c)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
        {
            return Some(PathBuf::from(c));
        }
    }
    None
}

#[test]
fn manifests_validate_strictly_offline() {
    let Some(kv) = kubernetes_validate() else {
        assert!(
            !in_ci(),
            "kubernetes-validate missing (scripts/test.sh installs it)"
        );
        eprintln!("SKIPPED: kubernetes-validate not installed");
        return;
    };
    let files: Vec<PathBuf> = MANIFESTS
        .iter()
        .map(|m| pkg(&format!("kubernetes/{m}")))
        .collect();
    let o = Command::new(&kv)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}");
    assert_eq!(out.matches("passed").count(), MANIFESTS.len(), "{out}");

    // The kustomization renders (kubectl's built-in kustomize) and the result validates.
    let k = Command::new("kubectl")
        .args(["kustomize"])
        .arg(pkg("kubernetes"))
        .output()
        .unwrap();
    assert!(k.status.success(), "{}", String::from_utf8_lossy(&k.stderr));
    let rendered = tempfile::NamedTempFile::new().unwrap();
    fs::write(rendered.path(), &k.stdout).unwrap();
    let o = Command::new(&kv)
        .arg("--strict")
        .arg(rendered.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).matches("passed").count(),
        5
    );
}

#[test]
fn rbac_is_least_privilege_on_secrets_of_the_install_namespace() {
    let role = yaml("kubernetes/role.yaml");
    assert_eq!(role["kind"], "Role", "namespaced Role, not ClusterRole");
    assert_eq!(role["metadata"]["namespace"], "storageos");
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["resources"], serde_json::json!(["secrets"]));
    assert_eq!(rules[0]["apiGroups"], serde_json::json!([""]));
    let mut verbs: Vec<&str> = rules[0]["verbs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    verbs.sort();
    assert_eq!(verbs, ["create", "get", "list", "watch"]);
    let rb = yaml("kubernetes/rolebinding.yaml");
    assert_eq!(rb["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(
        rb["subjects"][0]["name"],
        yaml("kubernetes/serviceaccount.yaml")["metadata"]["name"]
    );
}

#[test]
fn daemonset_agrees_with_the_daemon() {
    let ds = yaml("kubernetes/daemonset.yaml");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["serviceAccountName"],
        yaml("kubernetes/serviceaccount.yaml")["metadata"]["name"]
    );
    let c = &pod["containers"][0];
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(args[0], "serve");
    assert_serve_accepts(&args, "daemonset");
    assert!(c["securityContext"]["privileged"].as_bool().unwrap());

    // Environment: the names the daemon reads, with the key source kube and the namespace
    // from the downward API.
    let env = c["env"].as_array().unwrap();
    let get = |n: &str| {
        env.iter()
            .find(|e| e["name"] == n)
            .unwrap_or_else(|| panic!("env {n}"))
            .clone()
    };
    assert_eq!(
        get("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(get("STORAGEOS_FUSE_KEY_SOURCE")["value"], "kube");
    let global = help(&[]);
    for e in env
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .filter(|n| *n != "RUST_LOG")
    {
        assert!(global.contains(e), "the daemon does not read {e}");
    }

    // Paths: host paths are the daemon's defaults, mounted with Bidirectional propagation.
    let mountpoint = args
        .iter()
        .find_map(|a| a.strip_prefix("--mountpoint="))
        .unwrap();
    assert_eq!(mountpoint, "/var/lib/storageos/volumes");
    assert!(
        help(&["serve"]).contains("/var/lib/storageos/volumes"),
        "serve default mountpoint"
    );
    let data_dir = get("STORAGEOS_FUSE_DATA_DIR")["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(global.contains(&format!("[default: {data_dir}]")));
    let vols = pod["volumes"].as_array().unwrap();
    let host = |n: &str| {
        vols.iter().find(|v| v["name"] == n).unwrap()["hostPath"]["path"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(host("fuse"), "/dev/fuse");
    assert_eq!(host("data"), data_dir);
    assert_eq!(host("volumes"), mountpoint);
    for m in c["volumeMounts"].as_array().unwrap() {
        if m["name"] != "fuse" {
            assert_eq!(m["mountPropagation"], "Bidirectional", "{m}");
        }
        assert_eq!(
            m["mountPath"].as_str().unwrap(),
            host(m["name"].as_str().unwrap())
        );
    }

    // Probes hit the health endpoints on the port the daemon listens on.
    let listen = args
        .iter()
        .find_map(|a| a.strip_prefix("--listen="))
        .unwrap();
    let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(c["ports"][0]["containerPort"], port);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");

    // The install namespace is the daemon's default key namespace.
    assert_eq!(
        ds["metadata"]["namespace"],
        yaml("kubernetes/namespace.yaml")["metadata"]["name"]
    );
    assert!(global.contains("[default: storageos]"));
}

#[test]
fn containerfile_and_systemd_unit_use_real_flags() {
    let cf = fs::read_to_string(pkg("Containerfile")).unwrap();
    assert!(cf.matches("FROM ").count() >= 2, "multi-stage build");
    for pkgname in ["fuse3", "util-linux", "e2fsprogs"] {
        assert!(cf.contains(pkgname), "runtime image has {pkgname}");
    }
    let cmd_line = cf.lines().find(|l| l.starts_with("CMD")).unwrap();
    let cmd: Vec<String> = serde_json::from_str(cmd_line.trim_start_matches("CMD").trim()).unwrap();
    assert_eq!(cmd[0], "serve");
    assert_serve_accepts(&cmd, "Containerfile CMD");

    let unit = fs::read_to_string(pkg("systemd/storageos-fuse.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let words: Vec<String> = exec.split_whitespace().map(str::to_string).collect();
    assert_eq!(words[1], "serve");
    assert_serve_accepts(&words[1..], "systemd ExecStart");
    assert!(unit.contains("KillSignal=SIGTERM"));
}

#[test]
fn completions_and_manpage_come_from_the_cli_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let o = Command::new(bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success());
        let s = String::from_utf8(o.stdout).unwrap();
        for word in ["volume", "mount", "umount", "key-source"] {
            assert!(s.contains(word), "{shell} completion lacks {word}");
        }
    }
    let o = Command::new(bin()).arg("manpage").output().unwrap();
    assert!(o.status.success());
    let man = String::from_utf8(o.stdout).unwrap();
    assert!(man.contains(".TH storageos-fuse 1"));
    assert!(
        man.contains("data\\-dir") && man.contains("umount"),
        "manual page documents the flags and commands"
    );
}
