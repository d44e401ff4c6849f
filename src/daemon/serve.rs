//! `serve [--mountpoint DIR]`: DaemonSet mode. One FUSE mount exposing
//! `DIR/<namespace>/<name>` and `DIR/by-id/<id>` for every volume of the node that can be
//! served: unencrypted ones, and encrypted ones whose key is in the live keyring and passes
//! both checks (`Manager::cipher_for`).
//!
//! A scanner thread keeps the tree current. It wakes on inotify events of the volumes
//! directory, on every keyring change, and every `RESCAN` as a safety net; each pass
//! compares the volumes on disk and the keys with what is served:
//! - a new volume that can be unlocked is opened (taking its backing-file lock, so a
//!   `mount` of it elsewhere is refused) and appears;
//! - an encrypted volume appears as soon as its key is restored, without a restart;
//! - once unlocked, a volume stays served until it is deleted: if its Secret is deleted
//!   meanwhile, serving goes on (the key is already in memory) and a warning says to
//!   restore the Secret, since it will not be served again after a restart without it;
//! - deletion: `volume delete` of a served volume leaves a release marker
//!   (`VolumeStore::release_marker`); the scanner drops the volume if nothing has it open
//!   (no open file, no loop device), which releases its lock, and `delete` proceeds. A
//!   volume in use is kept and the delete is refused with what to detach. A volume whose
//!   files vanished behind our back is dropped too.
//!
//! With `--listen ADDR`, `daemon::http` answers health probes and metric scrapes.
//!
//! Owns the serve loop, its mount point and the delete hand-over; the tree itself is
//! `fuse::VolumeTree`, keys come from whichever source fed the keyring.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use super::{http, mounts, signals};
use crate::error::{Error, Result};
use crate::fuse::{FsOptions, RemoveError, VolumeTable, VolumeTree, fuse_config};
use crate::image::{BackingIo, ImageError, VolumeImage};
use crate::keys::{self, Keyring};
use crate::manager::Manager;
use crate::volume::{VolumeMeta, VolumeStore};

pub const DEFAULT_MOUNTPOINT: &str = "/var/lib/storageos/volumes";
/// Full rescan even without events.
const RESCAN: Duration = Duration::from_secs(2);
/// Quiet time after an event: a volume creation or deletion is a burst of events.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// A release marker older than this is a leftover of a killed `delete`.
const MARKER_TTL: Duration = Duration::from_secs(60);
/// How long the first scan waits for the key source's first snapshot.
const SYNC_WAIT: Duration = Duration::from_secs(10);
/// How long `volume delete` waits for `serve` to let go of an idle volume.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ServeRequest {
    pub mountpoint: Option<PathBuf>,
    pub threads: usize,
    pub allow_other: bool,
    /// `--listen ADDR`: health and metrics endpoint (off when `None`).
    pub listen: Option<String>,
    pub backing_io: BackingIo,
}

/// Serves until SIGTERM/SIGINT (or `umount DIR`) unmounts the tree.
pub fn run_serve(mgr: &Manager, keyring: Arc<Keyring>, req: &ServeRequest) -> Result<()> {
    let at = match &req.mountpoint {
        Some(p) => std::path::absolute(p)
            .map_err(|e| Error::Usage(format!("--mountpoint {}: {e}", p.display())))?,
        None => PathBuf::from(DEFAULT_MOUNTPOINT),
    };
    // Bound first: a bad or taken address changes nothing.
    let listener = req.listen.as_deref().map(http::bind).transpose()?;
    let vols_dir = mgr.store.volumes_dir();
    crate::fsutil::create_private_dir(&vols_dir)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", vols_dir.display())))?;
    prepare_mountpoint(&at)?;

    let table = VolumeTable::new();
    let opts = FsOptions {
        fsname: mounts::SERVE_FSNAME.to_string(),
        threads: req.threads,
        allow_other: req.allow_other,
    };
    let session = fuser::Session::new(VolumeTree::new(table.clone()), &at, &fuse_config(&opts))
        .map_err(|e| {
            Error::Mount(format!(
                "cannot mount FUSE on {}: {e} (is /dev/fuse present and are you root?)",
                at.display()
            ))
        })?;
    let notifier = session.notifier();
    let session_alive = Arc::new(AtomicBool::new(true));
    let serving = Arc::new(AtomicBool::new(false));
    let _http = listener
        .map(|l| {
            http::spawn(
                l,
                http::Status {
                    store: mgr.store.clone(),
                    keyring: keyring.clone(),
                    table: table.clone(),
                    mountpoint: at.clone(),
                    session_alive: session_alive.clone(),
                    serving: serving.clone(),
                },
            )
        })
        .transpose()?;

    let (wake, woken) = mpsc::channel::<()>();
    let events = wake.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if keys::is_change(&res) {
            let _ = events.send(());
        }
    })
    .and_then(|mut w| w.watch(&vols_dir, RecursiveMode::NonRecursive).map(|_| w))
    .map_err(|e| {
        tracing::warn!(
            "cannot watch {} ({e}); new and deleted volumes show within {} s",
            vols_dir.display(),
            RESCAN.as_secs()
        )
    })
    .ok();

    let mut scanner = Scanner {
        mgr,
        keyring: keyring.clone(),
        table: table.clone(),
        notifier,
        noted: BTreeMap::new(),
        backing_io: req.backing_io,
    };
    // A source that loads in the background (kube) gets a moment to deliver its first
    // snapshot, so encrypted volumes are not reported missing for nothing.
    let deadline = Instant::now() + SYNC_WAIT;
    while !keyring.is_synced() && Instant::now() < deadline {
        keyring.wait_change(keyring.generation(), Duration::from_millis(200));
    }
    if !keyring.is_synced() {
        tracing::warn!(
            "the key source has not delivered its keys after {} s; serving what needs no key, encrypted volumes appear once their keys arrive",
            SYNC_WAIT.as_secs()
        );
    }
    // First pass before announcing, so what can be served is there when we say ready.
    scanner.scan();
    tracing::info!(mountpoint = %at.display(), volumes = table.ids().len(), "serving volumes");
    println!("{}", at.display());
    let _ = std::io::stdout().flush();
    signals::unmount_on_signal(at.clone());
    serving.store(true, Ordering::Release);

    let stop = AtomicBool::new(false);
    let outcome = std::thread::scope(|s| {
        let key_wake = wake.clone();
        let stop_ref = &stop;
        let ring = keyring.clone();
        s.spawn(move || {
            let mut generation = ring.generation();
            while !stop_ref.load(Ordering::Acquire) {
                let now = ring.wait_change(generation, Duration::from_millis(500));
                if now != generation {
                    generation = now;
                    let _ = key_wake.send(());
                }
            }
        });
        s.spawn(move || {
            loop {
                match woken.recv_timeout(RESCAN) {
                    Ok(()) => {
                        let start = Instant::now();
                        while start.elapsed() < Duration::from_millis(500)
                            && woken.recv_timeout(DEBOUNCE).is_ok()
                        {}
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if stop_ref.load(Ordering::Acquire) {
                    break;
                }
                scanner.scan();
            }
        });
        let res = session.run();
        session_alive.store(false, Ordering::Release);
        serving.store(false, Ordering::Release);
        stop.store(true, Ordering::Release);
        let _ = wake.send(());
        res
    });
    if let Some(w) = watcher.as_mut() {
        let _ = w.unwatch(&vols_dir);
    }
    outcome.map_err(|e| {
        Error::Mount(format!(
            "FUSE session for {} ended with an error: {e}",
            at.display()
        ))
    })?;
    tracing::info!(path = %at.display(), "unmounted; exiting");
    Ok(())
}

/// Creates the mount point directory, or recovers a dead mount left by a killed server.
fn prepare_mountpoint(at: &Path) -> Result<()> {
    if mounts::is_dead_mount(at) {
        tracing::warn!(
            "{} was a dead mount (its server had stopped); cleared it",
            at.display()
        );
        mounts::clear_dead_mount(at)
            .map_err(|e| Error::Mount(format!("cannot clear dead mount {}: {e}", at.display())))?;
    }
    if let Ok(Some(m)) = mounts::mount_at(at)
        && m.fstype.starts_with("fuse")
    {
        return Err(Error::Mount(format!(
            "{} is already a FUSE mount point (source {}); stop the server there (`storageos-fuse umount {}`) or choose another --mountpoint",
            at.display(),
            m.source,
            at.display()
        )));
    }
    match fs::symlink_metadata(at) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(Error::Usage(format!(
            "--mountpoint {} exists and is not a directory",
            at.display()
        ))),
        Err(_) => fs::create_dir_all(at)
            .map_err(|e| Error::Io(format!("cannot create mount point {}: {e}", at.display()))),
    }
}

struct Scanner<'a> {
    mgr: &'a Manager,
    keyring: Arc<Keyring>,
    table: Arc<VolumeTable>,
    notifier: fuser::Notifier,
    /// The last thing logged per volume (or listing issue), so a state is logged once.
    noted: BTreeMap<String, String>,
    backing_io: BackingIo,
}

impl Scanner<'_> {
    fn note(&mut self, key: &str, msg: String, warn: bool) {
        if self.noted.get(key) == Some(&msg) {
            return;
        }
        if warn {
            tracing::warn!("{msg}");
        } else {
            tracing::info!("{msg}");
        }
        self.noted.insert(key.to_string(), msg);
    }

    fn scan(&mut self) {
        let keys = self.keyring.snapshot();
        let (vols, issues) = match self.mgr.store.list() {
            Ok(v) => v,
            Err(e) => {
                let msg = format!("cannot list volumes, keeping the served ones: {e}");
                return self.note("list", msg, true);
            }
        };
        self.noted.remove("list");
        for issue in issues {
            self.note(
                &format!("issue {issue}"),
                format!("skipped volume: {issue}"),
                true,
            );
        }
        let markers: HashSet<String> = self
            .mgr
            .store
            .release_requests(MARKER_TTL)
            .into_iter()
            .collect();
        let present: BTreeMap<&str, &VolumeMeta> =
            vols.iter().map(|m| (m.id.as_str(), m)).collect();
        let mut inval = Vec::new();

        for v in self.table.volumes() {
            let label = format!("{}/{} ({})", v.namespace, v.name, v.id);
            let Some(meta) = present.get(v.id.as_str()) else {
                if let Ok(i) = self.table.remove_anyway(&v.id) {
                    tracing::info!("volume {label} was deleted; no longer served");
                    inval.extend(i);
                }
                continue;
            };
            if markers.contains(&v.id) {
                match self.table.remove_if_idle(&v.id) {
                    Ok(i) => {
                        tracing::info!("volume {label} released for deletion");
                        inval.extend(i);
                    }
                    Err(RemoveError::InUse(n)) => self.note(
                        &v.id,
                        format!("volume {label}: deletion requested, but it is in use ({n} open handles: an open file or a loop device); keeping it served"),
                        true,
                    ),
                    Err(RemoveError::NotServed) => {}
                }
                continue;
            }
            if meta.encrypted() && keys.vol_key(&v.id).is_none() {
                let secret = keys::vol_key_name(&v.id);
                self.note(
                    &v.id,
                    format!("Secret {secret} of served volume {label} was deleted from {}; the volume keeps being served with the key in memory, but will not be served after a restart: {}",
                        self.mgr.keys.location(), self.mgr.keys.restore_hint(&secret)),
                    true,
                );
            } else {
                self.noted.remove(&v.id);
            }
        }

        for meta in &vols {
            if self.table.get(&meta.id).is_some() || markers.contains(&meta.id) {
                continue;
            }
            let cipher = match self.mgr.cipher_for(meta, &keys) {
                Ok(c) => c,
                Err(e) => {
                    self.note(&meta.id, format!("not serving: {e}"), true);
                    continue;
                }
            };
            let data = self.mgr.store.data_path(&meta.id);
            match VolumeImage::open(
                &data,
                meta.size_bytes,
                meta.sector_size,
                cipher,
                self.backing_io,
            ) {
                Ok(image) => {
                    if self
                        .table
                        .insert(&meta.id, &meta.namespace, &meta.name, image)
                    {
                        tracing::info!(
                            "serving volume {} ({}){}",
                            meta.display_name(),
                            meta.id,
                            if meta.encrypted() { ", encrypted" } else { "" }
                        );
                        self.noted.remove(&meta.id);
                    }
                }
                Err(ImageError::Locked { .. }) => self.note(
                    &meta.id,
                    format!(
                        "not serving volume {}: another process serves it (a `storageos-fuse mount`, or another `serve`); it appears here once that one lets go",
                        meta.display_name()
                    ),
                    true,
                ),
                Err(e) => self.note(
                    &meta.id,
                    format!("not serving volume {}: {e}", meta.display_name()),
                    true,
                ),
            }
        }
        self.noted
            .retain(|k, _| k.starts_with("issue ") || present.contains_key(k.as_str()));

        // Never while holding a table lock: the kernel may call back into the tree.
        for (parent, name) in inval {
            if let Err(e) = self.notifier.inval_entry(parent, &name)
                && e.raw_os_error() != Some(libc::ENOENT)
            {
                tracing::debug!("cannot invalidate {name:?}: {e}");
            }
        }
    }
}

/// Volumes locked by some process but not by a `mount`: what a running `serve` holds
/// (for `umount <serve mountpoint>` to wait until it has let go of them).
pub fn held_volume_ids(store: &VolumeStore) -> Vec<String> {
    let Ok((vols, _)) = store.list() else {
        return Vec::new();
    };
    vols.into_iter()
        .filter(|m| store.is_served(m))
        .filter(|m| mounts::mounts_of_volume(&m.id).is_ok_and(|v| v.is_empty()))
        .map(|m| m.id)
        .collect()
}

/// Whether `volume delete` should ask a running `serve` to let go of the volume: a serve
/// mount exists and no `mount` of the volume does (a `mount` never lets go).
pub fn served_by_serve(id: &str) -> bool {
    let mounted = mounts::mounts_of_volume(id)
        .map(|m| !m.is_empty())
        .unwrap_or(true);
    let serving = mounts::serve_mounts()
        .map(|m| !m.is_empty())
        .unwrap_or(false);
    serving && !mounted
}

/// `volume delete` of a volume a running `serve` holds: leaves a release marker, waits
/// for the lock to be let go, deletes, removes the marker. If the volume is in use the
/// marker is removed and nothing else changed.
pub fn delete_through_serve(store: &VolumeStore, meta: &VolumeMeta) -> Result<()> {
    let marker = store.release_marker(&meta.id);
    fs::write(&marker, b"")
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", marker.display())))?;
    let data = store.data_path(&meta.id);
    let deadline = Instant::now() + RELEASE_WAIT;
    let mut released = false;
    while Instant::now() < deadline {
        if !crate::volume::lock::is_locked(&data).unwrap_or(true) {
            released = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let res = if released {
        store.delete(meta).map_err(Error::from)
    } else {
        Err(Error::Mount(format!(
            "volume {} is in use through `serve` (its image is open or attached to a loop device); detach it (`losetup -j <mountpoint>/by-id/{}`, then `losetup -d /dev/loopN`) and delete again",
            meta.display_name(),
            meta.id
        )))
    };
    let _ = fs::remove_file(&marker);
    res
}
