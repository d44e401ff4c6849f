//! Shared test support: the built binary, scratch environments with their own data and
//! keys directories, and cleanup of the real mounts and loop devices tests create.
//!
//! Tests here use real parts (FUSE, loop devices, ext4). Without root or /dev/fuse they
//! are skipped locally, but under `CI=true` they fail loudly instead.
#![allow(dead_code)]

pub mod kube_api;
pub mod serve;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_storageos-fuse"))
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether the real parts are here: root, /dev/fuse, loop devices and the named tools.
/// Locally a missing part skips the test (with a note); under CI=true it fails the test.
pub fn require_real(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for dev in ["/dev/fuse", "/dev/loop-control"] {
        if !Path::new(dev).exists() {
            missing.push(dev.to_string());
        }
    }
    for t in tools {
        if !have(t) {
            missing.push(t.to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("real parts missing: {}", missing.join(", "));
    if in_ci() {
        panic!("{msg} (CI=true: refusing to skip; scripts/test.sh installs them)");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// A scratch node: its own data dir and keys dir under a temp dir. Drop unmounts and
/// detaches whatever the test left under it.
pub struct Env {
    pub root: tempfile::TempDir,
    pub data: PathBuf,
    pub keys: PathBuf,
}

impl Env {
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("sfuse-test-")
            .tempdir()
            .expect("tempdir");
        let data = root.path().join("data");
        let keys = root.path().join("keys");
        Self { root, data, keys }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("STORAGEOS_FUSE_DATA_DIR", &self.data)
            .env("STORAGEOS_FUSE_KEYS_DIR", &self.keys)
            .env_remove("STORAGEOS_FUSE_KEY_SOURCE")
            .env_remove("POD_NAMESPACE");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run storageos-fuse")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        expect_success(self.run(args), args)
    }

    /// Runs and expects failure with exactly one `error:` line on stderr; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        expect_failure(self.run(args), args)
    }

    pub fn inspect(&self, volume: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["volume", "inspect", volume])).expect("inspect JSON")
    }

    pub fn volume_dir(&self, id: &str) -> PathBuf {
        self.data.join("volumes").join(id)
    }

    /// `volume create VOLUME EXTRA...`; returns the new volume's id.
    pub fn inspect_created(&self, volume: &str, extra: &[&str]) -> String {
        let mut args = vec!["volume", "create", volume];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        let v: serde_json::Value = serde_json::from_str(&out).expect("create prints JSON");
        v["id"].as_str().expect("id").to_string()
    }

    /// `mount --background --at <root>/<name>.img`; returns the image path.
    pub fn mount_bg(&self, volume: &str, name: &str) -> PathBuf {
        let img = self.path(&format!("{name}.img"));
        let out = self.ok(&[
            "mount",
            volume,
            "--at",
            img.to_str().unwrap(),
            "--background",
        ]);
        assert_eq!(
            out.trim(),
            img.to_str().unwrap(),
            "mount prints the image path"
        );
        img
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        cleanup_under(self.root.path());
    }
}

/// A storageos-fuse run that must succeed; its stdout.
pub fn expect_success(o: Output, args: &[&str]) -> String {
    assert!(
        o.status.success(),
        "storageos-fuse {args:?} failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("utf-8 stdout")
}

/// A storageos-fuse run that must fail with exactly one `error:` line; that line.
pub fn expect_failure(o: Output, args: &[&str]) -> String {
    assert!(
        !o.status.success(),
        "storageos-fuse {args:?} unexpectedly succeeded"
    );
    error_line(&o)
}

/// The one `error:` line of a failed command (asserts there is exactly one).
pub fn error_line(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one error: line, stderr was:\n{err}"
    );
    lines[0].to_string()
}

/// Unmounts every mount and detaches every loop device under `root` (deepest first).
pub fn cleanup_under(root: &Path) {
    let root_s = root.to_string_lossy().to_string();
    if let Ok(text) = fs::read_to_string("/proc/self/mountinfo") {
        let mut points: Vec<String> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|p| p.starts_with(&root_s))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(&p).output();
        }
    }
    if let Ok(o) = Command::new("losetup")
        .args(["-n", "-O", "NAME,BACK-FILE", "-l"])
        .output()
    {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let mut it = line.split_whitespace();
            if let (Some(dev), Some(file)) = (it.next(), it.next())
                && file.starts_with(&root_s)
            {
                let _ = Command::new("losetup").arg("-d").arg(dev).output();
            }
        }
    }
}

/// A loop device attached to a file; detached on drop.
pub struct Loop {
    pub dev: String,
}

impl Loop {
    pub fn attach(file: &Path, extra: &[&str]) -> Self {
        let o = Command::new("losetup")
            .args(["-f", "--show"])
            .args(extra)
            .arg(file)
            .output()
            .expect("losetup");
        assert!(
            o.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Self {
            dev: String::from_utf8(o.stdout).unwrap().trim().to_string(),
        }
    }

    pub fn detach(self) {
        drop(self)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).output();
    }
}

pub fn sh(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn sha256_file(p: &Path) -> String {
    use std::io::Read;
    let mut h = Sha256::new();
    let mut f = fs::File::open(p).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of bytes in memory (to compare with `sha256_file`).
pub fn sha256_file_bytes(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every file and directory under `dir` with its mode and content hash: compare before
/// and after a refused command to prove nothing changed on disk.
pub fn tree_state(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, d: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let md = fs::symlink_metadata(&p).unwrap();
            use std::os::unix::fs::MetadataExt;
            if md.is_dir() {
                out.insert(rel, format!("dir {:o}", md.mode()));
                walk(base, &p, out);
            } else {
                out.insert(
                    rel,
                    format!("file {:o} {} {}", md.mode(), md.len(), sha256_file(&p)),
                );
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The pid of the process serving the FUSE mount at `mount_point`: a storageos-fuse
/// process whose command line names that path.
pub fn server_pid(mount_point: &Path) -> Option<i32> {
    let want = mount_point.to_string_lossy().to_string();
    let mut found = None;
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // The server holds /dev/fuse open (a `--background` parent that has not exited
        // yet has the same command line but no /dev/fuse).
        let holds_fuse = || {
            fs::read_dir(e.path().join("fd"))
                .map(|fds| {
                    fds.flatten().any(|fd| {
                        fs::read_link(fd.path()).is_ok_and(|t| t == Path::new("/dev/fuse"))
                    })
                })
                .unwrap_or(false)
        };
        if args.first().is_some_and(|a| a.ends_with("storageos-fuse"))
            && args.iter().any(|a| a == "mount")
            && args.contains(&want)
            && holds_fuse()
        {
            found = Some(pid);
        }
    }
    found
}

/// SIGKILLs the server of `mount_point` and waits until it is gone (the mount is then dead).
pub fn kill_server(mount_point: &Path) -> i32 {
    let pid = server_pid(mount_point).expect("a server process for the mount");
    // SAFETY: kill(2) on a pid we just found; no memory is involved.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // Every thread gone or a zombie: only then are its descriptors (and so the FUSE
    // connection) released. The leader turns zombie before its other threads are done,
    // and an empty cmdline comes earlier still, when its memory is freed.
    let state = |stat: &Path| {
        fs::read_to_string(stat).ok().and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
        })
    };
    loop {
        let live = fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks
                    .flatten()
                    .any(|t| !matches!(state(&t.path().join("stat")), None | Some('Z') | Some('X')))
            })
            .unwrap_or(false);
        if !live {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    pid
}

/// Mounts a file system image `dev` (a loop device or file) on `dir` with `opts`.
pub fn mount_fs(dev: &str, dir: &Path, opts: &str) {
    fs::create_dir_all(dir).unwrap();
    sh(&format!("mount -o {opts} {dev} {}", dir.display()));
}

/// How many mounts sit on `path` now (stacked mounts count each).
pub fn mounts_at(path: &Path) -> usize {
    let want = path.to_string_lossy().replace(' ', "\\040");
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .count()
}
