//! `mount VOLUME --at PATH [--background]` and `umount VOLUME|PATH`.
//!
//! `--background` re-executes this binary as a child that mounts and then reports the
//! image path on its stdout; the parent returns only then (or relays the child's error),
//! so "returns once it is usable" holds. The child logs to `<data-dir>/logs/<id>.log`.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::mounts;
use crate::error::{Error, Result};
use crate::fuse::{FsOptions, ImageFile, fuse_config};
use crate::image::{BackingIo, ImageError, VolumeImage};
use crate::manager::Manager;
use crate::volume::VolumeMeta;

/// Set in the environment of the `--background` child.
const CHILD_ENV: &str = "STORAGEOS_FUSE_BACKGROUND_CHILD";

#[derive(Debug, Clone)]
pub struct MountRequest {
    pub volume: String,
    pub at: Option<PathBuf>,
    pub background: bool,
    pub threads: usize,
    pub allow_other: bool,
    pub backing_io: BackingIo,
}

pub fn default_mount_path(meta: &VolumeMeta) -> PathBuf {
    PathBuf::from(format!(
        "/run/storageos-fuse/{}/{}",
        meta.namespace, meta.name
    ))
}

pub fn run_mount(mgr: &Manager, req: &MountRequest) -> Result<()> {
    if req.background && std::env::var_os(CHILD_ENV).is_none() {
        // Check what can be checked cheaply first, so the common errors come from here.
        let meta = mgr.find(&req.volume)?;
        let keys = mgr.load_keys()?;
        mgr.cipher_for(&meta, &keys)?;
        // Recover a stale mount point here, where stderr still reaches the user.
        recover_dead_mount(&mount_path(req, &meta)?)?;
        return spawn_background(mgr, &meta);
    }
    let meta = mgr.find(&req.volume)?;
    let keys = mgr.load_keys()?;
    let cipher = mgr.cipher_for(&meta, &keys)?;
    drop(keys);
    let data = mgr.store.data_path(&meta.id);
    let image = VolumeImage::open(&data, meta.size_bytes, meta.sector_size, cipher, req.backing_io).map_err(|e| match e {
        ImageError::Locked { .. } => Error::Mount(format!(
            "volume {} is already served by another process (see `grep {} /proc/mounts`); run `storageos-fuse umount {}` first, or use its image under the running `serve` mount",
            meta.display_name(),
            meta.id,
            meta.display_name()
        )),
        other => other.into(),
    })?;
    let at = mount_path(req, &meta)?;
    prepare_mount_point(&at)?;

    let opts = FsOptions {
        fsname: mounts::fsname_for_volume(&meta.id),
        threads: req.threads,
        allow_other: req.allow_other,
    };
    let fs = ImageFile::new(Arc::new(image));
    let session = fuser::Session::new(fs, &at, &fuse_config(&opts)).map_err(|e| {
        Error::Mount(format!(
            "cannot mount FUSE on {}: {e} (is /dev/fuse present and are you root?)",
            at.display()
        ))
    })?;
    tracing::info!(volume = %meta.display_name(), id = %meta.id, path = %at.display(), "serving volume image");
    announce_ready(&at, mgr, &meta);
    super::signals::unmount_on_signal(at.clone());
    session.run().map_err(|e| {
        Error::Mount(format!(
            "FUSE session for {} ended with an error: {e}",
            at.display()
        ))
    })?;
    tracing::info!(path = %at.display(), "unmounted; exiting");
    Ok(())
}

fn mount_path(req: &MountRequest, meta: &VolumeMeta) -> Result<PathBuf> {
    Ok(match &req.at {
        Some(p) => std::path::absolute(p)
            .map_err(|e| Error::Usage(format!("--at {}: {e}", p.display())))?,
        None => default_mount_path(meta),
    })
}

/// Clears a dead mount (its server was killed) left on `at`, saying so on stderr.
fn recover_dead_mount(at: &Path) -> Result<()> {
    if mounts::is_dead_mount(at) {
        mounts::clear_dead_mount(at)
            .map_err(|e| Error::Mount(format!("cannot clear dead mount {}: {e}", at.display())))?;
        eprintln!(
            "storageos-fuse: {} was a dead mount (its server had stopped); cleared it and mounting again",
            at.display()
        );
    }
    Ok(())
}

/// Creates the mount point file (mode 0600) and its parents, or recovers a dead mount left
/// there by a server that was killed.
fn prepare_mount_point(at: &Path) -> Result<()> {
    recover_dead_mount(at)?;
    if let Ok(Some(m)) = mounts::mount_at(at) {
        return Err(Error::Mount(format!(
            "{} is already a mount point (source {}); choose another --at or unmount it",
            at.display(),
            m.source
        )));
    }
    match fs::symlink_metadata(at) {
        Ok(md) if md.is_dir() => {
            return Err(Error::Usage(format!(
                "--at {} is a directory; give the path of a file to create",
                at.display()
            )));
        }
        Ok(md) if !md.is_file() => {
            return Err(Error::Usage(format!(
                "--at {} exists and is not a regular file",
                at.display()
            )));
        }
        Ok(_) => return Ok(()),
        Err(_) => {}
    }
    if let Some(parent) = at.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| Error::Io(format!("cannot create {}: {e}", parent.display())))?;
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(at)
        .map_err(|e| Error::Io(format!("cannot create mount point {}: {e}", at.display())))?;
    Ok(())
}

/// Prints the image path. In a `--background` child, stdout is the parent's pipe: print,
/// then point stdout and stderr at the log so the parent can exit.
fn announce_ready(at: &Path, mgr: &Manager, meta: &VolumeMeta) {
    if std::env::var_os(CHILD_ENV).is_some() {
        let dir = mgr.store.data_dir().join("logs");
        let _ = crate::fsutil::create_private_dir(&dir);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(dir.join(format!("{}.log", meta.id)));
        if let Ok(log) = log {
            // SAFETY: dup2 onto the standard descriptors with a valid open descriptor.
            unsafe { libc::dup2(log.as_raw_fd(), 2) };
            println!("{}", at.display());
            let _ = std::io::stdout().flush();
            // SAFETY: as above; stdout now goes to the log too.
            unsafe { libc::dup2(log.as_raw_fd(), 1) };
            return;
        }
    }
    println!("{}", at.display());
    let _ = std::io::stdout().flush();
}

fn spawn_background(mgr: &Manager, meta: &VolumeMeta) -> Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Io(format!("cannot find own executable: {e}")))?;
    let args: Vec<_> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--background")
        .collect();
    let mut child = Command::new(exe)
        .args(args)
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Io(format!("cannot start the background server: {e}")))?;
    // Drain the child's stderr while it starts, so its output (RUST_LOG=trace can be
    // long) never fills the pipe and stalls it before it is serving.
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(drain(stderr, EARLY_OUTPUT_LIMIT));
    });
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let _ = out.read_line(&mut line);
    if !line.trim().is_empty() {
        // Serving. Its stderr now goes to its log; what it wrote before (key loading,
        // mounting) is kept there too. If it could not open its log, the pipe stays open:
        // do not wait for it.
        if let Ok(early) = rx.recv_timeout(Duration::from_secs(2)) {
            keep_early_output(mgr, meta, &early);
        }
        print!("{line}");
        return Ok(());
    }
    let err = rx.recv().unwrap_or_default();
    let err = String::from_utf8_lossy(&err);
    let _ = child.wait();
    let msg = err
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "the background server for {} exited before mounting: {}",
                meta.display_name(),
                err.trim()
            )
        });
    Err(Error::Mount(msg))
}

/// At most this much of a background server's start-up output is kept.
const EARLY_OUTPUT_LIMIT: usize = 1 << 20;

/// Reads `r` to its end, keeping the first `limit` bytes.
fn drain(mut r: impl Read, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Appends a background server's start-up output to its log.
fn keep_early_output(mgr: &Manager, meta: &VolumeMeta, early: &[u8]) {
    if early.is_empty() {
        return;
    }
    let path = mgr
        .store
        .data_dir()
        .join("logs")
        .join(format!("{}.log", meta.id));
    if let Ok(mut log) = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
    {
        let mut text = b"--- output of the server before it was serving ---\n".to_vec();
        text.extend_from_slice(early);
        if !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        text.extend_from_slice(b"--- end of start-up output ---\n");
        let _ = log.write_all(&text);
    }
}

/// `umount VOLUME|PATH`: unmounts, then waits until the server process has let go of the
/// volume, so a following `mount` or `delete` works at once.
pub fn run_umount(mgr: &Manager, target: &str) -> Result<()> {
    let is_path = target.starts_with('/') || target.starts_with('.');
    let (paths, wait_ids): (Vec<PathBuf>, Vec<String>) = if is_path {
        let p = std::path::absolute(target).map_err(|e| Error::Usage(format!("{target}: {e}")))?;
        let entry = mounts::mount_at(&p)
            .map_err(|e| Error::Io(format!("cannot read the mount table: {e}")))?;
        match entry {
            // A `serve` mount: wait for it to let go of every volume it held.
            Some(m) if m.is_serve() => (vec![p], super::serve::held_volume_ids(&mgr.store)),
            Some(m) if m.is_ours() => (
                vec![p],
                m.volume_id().map(str::to_string).into_iter().collect(),
            ),
            Some(m) => {
                return Err(Error::Usage(format!(
                    "{} is a {} mount, not a storageos-fuse image",
                    p.display(),
                    m.fstype
                )));
            }
            None => return Err(Error::Usage(format!("{} is not mounted", p.display()))),
        }
    } else {
        let meta = mgr.find(target)?;
        let found = mounts::mounts_of_volume(&meta.id)
            .map_err(|e| Error::Io(format!("cannot read the mount table: {e}")))?;
        if found.is_empty() {
            let by_serve = if mgr.store.is_served(&meta) && super::serve::served_by_serve(&meta.id)
            {
                "; it is exposed by `serve` (stop that with `storageos-fuse umount <serve mountpoint>`, or delete the volume: serve lets go of an idle volume)"
            } else {
                ""
            };
            return Err(Error::Usage(format!(
                "volume {} is not mounted{by_serve}",
                meta.display_name()
            )));
        }
        (
            found.into_iter().map(|m| m.mount_point).collect(),
            vec![meta.id],
        )
    };
    for p in &paths {
        let dead = mounts::is_dead_mount(p);
        unmount_settling(p).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                Error::Mount(format!(
                    "{} is busy: a loop device or a process still uses it; detach it first (`losetup -j {}`, then `losetup -d /dev/loopN`)",
                    p.display(),
                    p.display()
                ))
            } else {
                Error::Mount(format!("cannot unmount {}: {e}", p.display()))
            }
        })?;
        if dead {
            println!(
                "cleared dead mount {} (its server had stopped); serve it again with `storageos-fuse mount`",
                p.display()
            );
        }
    }
    for id in wait_ids {
        let data = mgr.store.data_path(&id);
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::volume::lock::is_locked(&data).unwrap_or(false) {
            if Instant::now() > deadline {
                return Err(Error::Mount(format!(
                    "unmounted, but the server of volume {id} has not exited after 10 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Unmounts, giving a just-detached loop device a moment to let go: `losetup -d` returns
/// while udev or blkid may still hold the device open, and the loop driver drops its
/// reference to the image only at the last close. A mount still busy after 3 s is busy.
fn unmount_settling(p: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match mounts::unmount(p) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}
