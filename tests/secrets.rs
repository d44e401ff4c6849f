//! Secrets: no key byte in any output or log, even at `RUST_LOG=trace` (every key value of
//! the volume, the NSK, VUK, IV, digest and the unwrapped VK, searched in base64, URL-safe
//! base64, hex and as a Rust byte list); file and directory modes as DESIGN.md says; the
//! image file 0600 and owned by root; `allow_other` off unless asked for.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::Env;
use common::kube_api::KubeEnv;
use common::serve::{Serve, wait_until};

const ENC: &str = "storageos.com/encryption=true";

fn item(path: &Path, field: &str) -> Vec<u8> {
    let text = fs::read_to_string(path).unwrap();
    let prefix = format!("  {field}: ");
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {field} in {}", path.display()));
    STANDARD.decode(v.trim()).unwrap()
}

/// The volume key, unwrapped the way DESIGN.md says (HKDF, RFC 3394), for the search.
fn unwrap_vk(id: &str, nsk: &[u8], iv: &[u8], vuk: &[u8]) -> Vec<u8> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(iv), nsk);
    let mut kek = [0u8; 32];
    hk.expand(format!("storageos-fuse vuk v1 {id}").as_bytes(), &mut kek)
        .unwrap();
    let kw = <aes_kw::KwAes256 as hmac::KeyInit>::new((&kek).into());
    let mut vk = vec![0u8; 64];
    kw.unwrap_key(vuk, &mut vk).unwrap();
    vk
}

/// Every printable form a key could leak in.
fn forms(name: &str, key: &[u8]) -> Vec<(String, String)> {
    let mut v = vec![
        (format!("{name} base64"), STANDARD.encode(key)),
        (format!("{name} base64url"), URL_SAFE_NO_PAD.encode(key)),
        (format!("{name} hex"), hex::encode(key)),
        (format!("{name} HEX"), hex::encode_upper(key)),
        (
            format!("{name} byte list"),
            format!("{:?}", &key[..8]).trim_end_matches(']').to_string(),
        ),
    ];
    // Halves and partial runs (a log of one XTS half, or of a truncated buffer).
    for (i, part) in key.chunks(16).enumerate() {
        v.push((format!("{name} hex part {i}"), hex::encode(part)));
        v.push((format!("{name} base64 part {i}"), STANDARD.encode(part)));
    }
    v
}

fn search(haystacks: &[(String, Vec<u8>)], needles: &[(String, String)]) -> usize {
    for (what, hay) in haystacks {
        let text = String::from_utf8_lossy(hay);
        for (name, n) in needles {
            assert!(!text.contains(n.as_str()), "{name} appears in {what}");
        }
    }
    haystacks.iter().map(|(_, h)| h.len()).sum()
}

/// Runs with RUST_LOG=trace, keeping stdout and stderr for the search.
fn traced(env: &Env, args: &[&str], outputs: &mut Vec<(String, Vec<u8>)>) -> String {
    traced_cmd(env.cmd(), "trace", args, outputs)
}

/// Same, from a prepared command and with the given RUST_LOG.
fn traced_cmd(
    mut cmd: std::process::Command,
    rust_log: &str,
    args: &[&str],
    outputs: &mut Vec<(String, Vec<u8>)>,
) -> String {
    let o = cmd.env("RUST_LOG", rust_log).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    outputs.push((format!("stdout of {args:?}"), o.stdout.clone()));
    outputs.push((format!("stderr of {args:?}"), o.stderr.clone()));
    String::from_utf8(o.stdout).unwrap()
}

/// Every printable form of every key value in the Secret YAML files of `dir`.
fn key_needles(dir: &Path) -> Vec<(String, String)> {
    let mut needles = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(vid) = name
            .strip_prefix("vol-key.")
            .and_then(|n| n.strip_suffix(".yaml"))
        {
            let (nsk, iv, vuk, digest) = (
                item(&p, "nsk"),
                item(&p, "iv"),
                item(&p, "vuk"),
                item(&p, "digest"),
            );
            let vk = unwrap_vk(vid, &nsk, &iv, &vuk);
            for (n, k) in [
                ("NSK", &nsk),
                ("IV", &iv),
                ("VUK", &vuk),
                ("digest", &digest),
                ("VK", &vk),
            ] {
                needles.extend(forms(&format!("{n} of {vid}"), k));
            }
        } else if name.starts_with("ns-key.") {
            needles.extend(forms(&format!("ns-key {name}"), &item(&p, "key")));
        }
    }
    needles
}

/// Waits (hang bound only) until serve exposes `rel`, then writes and reads it back.
fn served_io(serve: &Serve, rel: &str) {
    let p = serve.path(rel);
    assert!(
        wait_until(Duration::from_secs(30), || p.exists()),
        "{rel} never served; log:\n{}",
        serve.log_text()
    );
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let data = common::pseudo_random(11, 64 << 10);
    f.write_all_at(&data, 8192).unwrap();
    f.sync_all().unwrap();
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, 8192).unwrap();
    assert!(back == data, "{rel}: data read back through serve differs");
}

#[test]
fn no_key_byte_in_any_output_or_log_at_trace() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    let mut outputs = Vec::new();
    let out = traced(
        &env,
        &[
            "volume", "create", "secret", "--size", "8Mi", "--label", ENC,
        ],
        &mut outputs,
    );
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    traced(
        &env,
        &[
            "volume",
            "create",
            "small",
            "--size",
            "1Mi",
            "--sector-size",
            "512",
            "--label",
            ENC,
        ],
        &mut outputs,
    );
    traced(&env, &["volume", "inspect", "secret"], &mut outputs);
    traced(&env, &["volume", "list"], &mut outputs);
    traced(&env, &["volume", "list", "-o", "json"], &mut outputs);
    traced(&env, &["keys", "status"], &mut outputs);
    traced(
        &env,
        &["volume", "update", "secret", "--label", "tier=gold"],
        &mut outputs,
    );

    // Background mount (its log is <data-dir>/logs/<id>.log, start-up output included),
    // with I/O.
    let img = env.path("secret.img");
    traced(
        &env,
        &[
            "mount",
            "secret",
            "--at",
            img.to_str().unwrap(),
            "--background",
        ],
        &mut outputs,
    );
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    f.write_all_at(&common::pseudo_random(9, 1 << 20), 12345)
        .unwrap();
    f.sync_all().unwrap();
    let mut back = vec![0u8; 4096];
    f.read_exact_at(&mut back, 0).unwrap();
    drop(f);
    traced(&env, &["umount", "secret"], &mut outputs);

    // Foreground mount: its stderr is the log.
    let fg_img = env.path("fg.img");
    let mut child = env
        .cmd()
        .env("RUST_LOG", "trace")
        .args(["mount", "small", "--at", fg_img.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0] as char);
    }
    assert_eq!(
        line,
        fg_img.to_str().unwrap(),
        "foreground mount prints the image path when ready"
    );
    let mut f = fs::OpenOptions::new().write(true).open(&fg_img).unwrap();
    f.write_all(&[7u8; 3000]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    traced(&env, &["umount", fg_img.to_str().unwrap()], &mut outputs);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let mut err = Vec::new();
    child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        String::from_utf8_lossy(&err).contains("TRACE")
            || String::from_utf8_lossy(&err).contains("DEBUG"),
        "trace logging was on in the foreground server"
    );
    outputs.push(("foreground mount stdout".into(), rest));
    outputs.push(("foreground mount stderr".into(), err));

    // keys backup, then serve at trace picking up a restored key while it runs.
    let small_id = env.inspect("small")["id"].as_str().unwrap().to_string();
    let small_key = format!("vol-key.{small_id}.yaml");
    let backup = env.path("backup");
    traced(
        &env,
        &["keys", "backup", "--out", backup.to_str().unwrap()],
        &mut outputs,
    );
    fs::remove_file(env.keys.join(&small_key)).unwrap();
    let mut cmd = env.cmd();
    cmd.env("RUST_LOG", "trace");
    let serve = Serve::start_cmd(&env, cmd);
    let restore = env.path(&format!("backup/{small_key}"));
    traced(
        &env,
        &["keys", "restore", restore.to_str().unwrap()],
        &mut outputs,
    );
    served_io(&serve, "default/small");
    served_io(&serve, "default/secret");
    let serve_log = serve.log.clone();
    assert!(serve.stop().success());
    let serve_log = fs::read(&serve_log).unwrap();
    assert!(
        String::from_utf8_lossy(&serve_log).contains("TRACE"),
        "trace logging was on in serve"
    );
    outputs.push(("serve log".into(), serve_log));

    for e in fs::read_dir(env.data.join("logs")).unwrap() {
        let p = e.unwrap().path();
        outputs.push((p.display().to_string(), fs::read(&p).unwrap()));
    }
    let bg_log = String::from_utf8_lossy(
        &outputs
            .iter()
            .find(|(w, _)| w.ends_with(&format!("{id}.log")))
            .expect("the background server's log")
            .1,
    )
    .into_owned();
    assert!(
        bg_log.contains("before it was serving") && bg_log.contains("DEBUG"),
        "the background log keeps the start-up output at trace: {bg_log}"
    );
    assert!(
        outputs
            .iter()
            .any(|(w, h)| w.ends_with(&format!("{id}.log")) && !h.is_empty()),
        "the background log exists and is not empty"
    );

    // Every key value of every volume and namespace.
    let needles = key_needles(&env.keys);
    assert!(needles.len() > 60, "keys found: {}", needles.len());
    let bytes = search(&outputs, &needles);
    eprintln!(
        "RESULT secrets: {} key forms searched in {} outputs/logs ({bytes} bytes), 0 found",
        needles.len(),
        outputs.len()
    );
}

#[test]
fn modes_and_mount_options_are_private() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    let id = env.inspect_created("m", &["--size", "1Mi", "--label", ENC]);
    env.inspect_created("plain", &["--size", "1Mi"]);
    let img = env.mount_bg("m", "m");

    // Directories 0700, files 0600, everywhere under the data and keys directories.
    let mut checked = 0;
    for root in [&env.data, &env.keys] {
        assert_eq!(
            fs::metadata(root).unwrap().mode() & 0o7777,
            0o700,
            "{}",
            root.display()
        );
        for (rel, state) in common::tree_state(root) {
            let mode = u32::from_str_radix(state.split(' ').nth(1).unwrap(), 8).unwrap() & 0o7777;
            let want = if state.starts_with("dir") {
                0o700
            } else {
                0o600
            };
            assert_eq!(
                mode,
                want,
                "{}/{rel} is {mode:o}, DESIGN says {want:o}",
                root.display()
            );
            checked += 1;
        }
    }
    assert!(env.data.join("logs").join(format!("{id}.log")).exists());
    assert!(checked >= 8, "{checked}");

    // The image file: 0600, owned by root.
    let md = fs::metadata(&img).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o600);
    assert_eq!((md.uid(), md.gid()), (0, 0));

    // allow_other is off by default: no other user can reach the image.
    let opts = mount_options(&img);
    assert!(
        !opts.contains("allow_other"),
        "allow_other is on without --allow-other: {opts}"
    );
    env.ok(&["umount", "m"]);
    // ... and on when asked for.
    let other = env.path("other.img");
    env.ok(&[
        "mount",
        "m",
        "--at",
        other.to_str().unwrap(),
        "--background",
        "--allow-other",
    ]);
    let opts = mount_options(&other);
    assert!(
        opts.contains("allow_other"),
        "--allow-other is not in the mount options: {opts}"
    );
    env.ok(&["umount", "m"]);
}

/// Mount and super options of the mount on `p`.
fn mount_options(p: &Path) -> String {
    let want = p.to_string_lossy().to_string();
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = text
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .expect("mounted");
    let (left, right) = line.split_once(" - ").unwrap();
    format!(
        "{} {}",
        left.split(' ').nth(5).unwrap(),
        right.split(' ').nth(2).unwrap_or("")
    )
}

/// With key source kube the key data travels through the Kubernetes client: even with
/// RUST_LOG asking for everything from it, serve, create, backup and restore log no key.
#[test]
fn no_key_byte_in_kube_client_logs_at_trace() {
    if !common::require_real(&["kubectl"]) {
        return;
    }
    let k = KubeEnv::new();
    let log =
        "trace,kube_client=trace,kube_runtime=trace,hyper=trace,hyper_util=trace,tower_http=trace";
    let mut outputs = Vec::new();
    let out = traced_cmd(
        k.sf_cmd(),
        log,
        &[
            "volume",
            "create",
            "default/enc",
            "--size",
            "8Mi",
            "--label",
            ENC,
        ],
        &mut outputs,
    );
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    traced_cmd(
        k.sf_cmd(),
        log,
        &[
            "keys",
            "backup",
            "--out",
            k.env.path("backup").to_str().unwrap(),
        ],
        &mut outputs,
    );
    k.sh_ok(&format!("kubectl delete secret vol-key.{id} -n storageos"));

    let mut cmd = k.sf_cmd();
    cmd.env("RUST_LOG", log).env("POD_NAMESPACE", "storageos");
    let serve = Serve::start_cmd(&k.env, cmd);
    let restore = k.env.path(&format!("backup/vol-key.{id}.yaml"));
    traced_cmd(
        k.sf_cmd(),
        log,
        &["keys", "restore", restore.to_str().unwrap()],
        &mut outputs,
    );
    served_io(&serve, "default/enc");
    let serve_log = serve.log.clone();
    assert!(serve.stop().success());
    let serve_log = fs::read(&serve_log).unwrap();
    let text = String::from_utf8_lossy(&serve_log);
    assert!(text.contains("TRACE"), "trace logging was on in serve");
    // kube_client's own trace of every response is capped away, whatever RUST_LOG says.
    assert!(
        !text.contains("headers: {"),
        "kube_client trace in the log:\n{text}"
    );
    outputs.push(("serve log (kube)".into(), serve_log));

    let needles = key_needles(&k.env.path("backup"));
    assert!(needles.len() > 40, "keys found: {}", needles.len());
    let bytes = search(&outputs, &needles);
    eprintln!(
        "RESULT secrets kube: {} key forms searched in {} outputs/logs ({bytes} bytes), 0 found",
        needles.len(),
        outputs.len()
    );
}
