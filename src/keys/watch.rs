//! The live `dir` key source: keeps a `Keyring` equal to what the keys directory holds
//! while a daemon runs. Watches the directory with inotify (through `notify`) and, on any
//! change, reloads the whole directory and installs the result with `Keyring::replace`.
//!
//! Whole-directory reloads make every way a file can change look the same: a new file,
//! an atomic rename over an old one (editors, `kubectl ... > f; mv`), a deletion, or a
//! kubelet-projected directory whose `..data` symlink is swapped to a new `..<timestamp>`
//! directory (the visible `*.yaml` are symlinks through `..data`). Events are debounced a
//! little, and a periodic full reload is the safety net for anything inotify cannot see
//! (a queue overflow, a change on another host of a network file system). A keys
//! directory that does not exist yet is fine: its nearest existing ancestor is watched
//! until it appears, and a directory renamed away or replaced is followed by identity.
//!
//! Owns the watch thread and the watch bookkeeping; does not parse files (that is
//! `DirStore::load`) and does not decide what consumers do with a new snapshot.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use super::dir::DirStore;
use super::keyring::Keyring;
use super::store::KeyStore;

/// Quiet time after an event before reloading: a kubelet swap or an editor's
/// write-then-rename is several events in a burst.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest a continuous stream of events may delay a reload.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);
/// Full reload even without events.
pub const RESYNC: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path} for key changes: {source}")]
    Watch {
        path: String,
        #[source]
        source: notify::Error,
    },
    #[error("cannot start the key watcher: {0}")]
    Start(String),
}

/// A running key-source watcher (either source). Dropping it stops the watcher and waits
/// for its thread; the keyring keeps its last snapshot.
pub struct WatchHandle {
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl WatchHandle {
    /// A handle that runs `stop` when dropped (sources build theirs with this).
    pub fn new(stop: impl FnOnce() + Send + 'static) -> Self {
        Self {
            stop: Some(Box::new(stop)),
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

/// The directory actually watched: the keys dir, or its nearest existing ancestor while
/// the keys dir does not exist; with its identity, to notice a rename or replacement.
struct DirWatch {
    watcher: RecommendedWatcher,
    keys_dir: PathBuf,
    watched: Option<(PathBuf, (u64, u64))>,
}

fn identity(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

impl DirWatch {
    /// Points the watch at the right directory; a no-op when it already is.
    fn rewatch(&mut self) -> Result<(), WatchError> {
        let mut target = self.keys_dir.clone();
        let id = loop {
            if let Some(id) = identity(&target) {
                break id;
            }
            match target.parent() {
                Some(p) => target = p.to_path_buf(),
                None => return Ok(()),
            }
        };
        if let Some((p, old)) = &self.watched {
            if *p == target && *old == id {
                return Ok(());
            }
            let _ = self.watcher.unwatch(p);
        }
        self.watched = None;
        self.watcher
            .watch(&target, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Watch {
                path: target.display().to_string(),
                source,
            })?;
        if target != self.keys_dir {
            tracing::info!(
                "keys directory {} does not exist yet; watching {} until it appears",
                self.keys_dir.display(),
                target.display()
            );
        }
        self.watched = Some((target, id));
        Ok(())
    }
}

/// Whether a watcher report may mean a change: any event but an access (our own reads
/// open the directory and its files, which must not trigger another reload), and any
/// error (a queue overflow loses events: reload).
pub fn is_change(res: &notify::Result<notify::Event>) -> bool {
    match res {
        Ok(ev) => !matches!(ev.kind, notify::EventKind::Access(_)),
        Err(_) => true,
    }
}

fn reload(store: &DirStore, keyring: &Keyring) {
    match store.load() {
        Ok(report) => keyring.replace(report),
        Err(e) => tracing::warn!("keys not reloaded, keeping the previous ones: {e}"),
    }
}

/// Loads the keys dir into `keyring` now, then keeps it current until the handle drops.
pub fn spawn_dir_watcher(
    store: DirStore,
    keyring: Arc<Keyring>,
) -> Result<WatchHandle, WatchError> {
    let (tx, rx) = mpsc::channel::<()>();
    let events = tx.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if is_change(&res) {
            let _ = events.send(());
        }
    })
    .map_err(|source| WatchError::Watch {
        path: store.dir().display().to_string(),
        source,
    })?;
    let mut watch = DirWatch {
        watcher,
        keys_dir: store.dir().to_path_buf(),
        watched: None,
    };
    watch.rewatch()?;
    reload(&store, &keyring);

    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread: JoinHandle<()> = std::thread::Builder::new()
        .name("keys-dir-watch".into())
        .spawn(move || {
            loop {
                match rx.recv_timeout(RESYNC) {
                    Ok(()) => {
                        let start = Instant::now();
                        while start.elapsed() < MAX_DEBOUNCE {
                            match rx.recv_timeout(DEBOUNCE) {
                                Ok(()) => continue,
                                Err(_) => break,
                            }
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if stopping.load(Ordering::Acquire) {
                    break;
                }
                if let Err(e) = watch.rewatch() {
                    tracing::warn!("{e}; relying on the periodic reload");
                }
                reload(&store, &keyring);
            }
        })
        .map_err(|e| WatchError::Start(e.to_string()))?;
    let mut thread = Some(thread);
    Ok(WatchHandle::new(move || {
        stop.store(true, Ordering::Release);
        let _ = tx.send(());
        if let Some(t) = thread.take() {
            let _ = t.join();
        }
    }))
}

#[cfg(test)]
mod tests {
    //! The watcher against a real directory and real inotify; the keys are generated.
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::crypt::NamespaceKey;
    use crate::keys::ns_key_manifest;

    fn ns_yaml(ns: &str) -> String {
        ns_key_manifest(ns, &NamespaceKey::generate(), "storageos")
            .to_yaml()
            .to_string()
    }

    /// Waits for the keyring to satisfy `cond`; a generous bound so a slow machine does
    /// not fail the test, while a watcher that never reacts still does.
    fn wait_for(ring: &Keyring, cond: impl Fn(&Keyring) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut generation = ring.generation();
        while Instant::now() < deadline {
            if cond(ring) {
                return true;
            }
            generation = ring.wait_change(generation, Duration::from_millis(200));
        }
        cond(ring)
    }

    fn has(ns: &str) -> impl Fn(&Keyring) -> bool + '_ {
        move |r: &Keyring| r.snapshot().ns_key(ns).is_some()
    }

    #[test]
    fn picks_up_new_renamed_and_removed_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("ns-key.a.yaml"), ns_yaml("a")).unwrap();
        let ring = Keyring::new();
        let _h = spawn_dir_watcher(DirStore::new(&dir, "storageos"), ring.clone()).unwrap();
        assert!(has("a")(&ring), "initial load");

        fs::write(dir.join("ns-key.b.yaml"), ns_yaml("b")).unwrap();
        assert!(wait_for(&ring, has("b")), "new file");

        // Atomic replace: write a hidden temp file, rename it over a visible name.
        fs::write(dir.join(".tmp.c"), ns_yaml("c")).unwrap();
        fs::rename(dir.join(".tmp.c"), dir.join("ns-key.b.yaml")).unwrap();
        assert!(wait_for(&ring, |r| has("c")(r) && !has("b")(r)), "rename");

        fs::remove_file(dir.join("ns-key.a.yaml")).unwrap();
        assert!(wait_for(&ring, |r| !has("a")(r)), "deletion");

        // A file moved in from outside the directory (only IN_MOVED_TO here).
        let outside = tmp.path().join("backup.yaml");
        fs::write(&outside, ns_yaml("d")).unwrap();
        fs::rename(&outside, dir.join("ns-key.d.yaml")).unwrap();
        assert!(wait_for(&ring, has("d")), "moved in");

        // Our own reads must not feed back into reloads: once quiet, the generation
        // stays put (the periodic reload is 10 s away).
        std::thread::sleep(DEBOUNCE * 3);
        let quiet = ring.generation();
        assert_eq!(
            ring.wait_change(quiet, DEBOUNCE * 5),
            quiet,
            "reloads without any change: the watcher reacts to its own reads"
        );
    }

    #[test]
    fn follows_a_kubelet_data_symlink_swap() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        fs::create_dir_all(dir.join("..2026_01_01_00_00_00.1")).unwrap();
        fs::write(
            dir.join("..2026_01_01_00_00_00.1/ns-key.a.yaml"),
            ns_yaml("a"),
        )
        .unwrap();
        symlink("..2026_01_01_00_00_00.1", dir.join("..data")).unwrap();
        symlink("..data/ns-key.a.yaml", dir.join("ns-key.a.yaml")).unwrap();
        let ring = Keyring::new();
        let _h = spawn_dir_watcher(DirStore::new(&dir, "storageos"), ring.clone()).unwrap();
        assert!(has("a")(&ring));

        // What the kubelet's atomic writer does: new timestamped dir, `..data_tmp`
        // symlink renamed over `..data`, old dir removed.
        fs::create_dir(dir.join("..2026_01_01_00_01_00.2")).unwrap();
        fs::write(
            dir.join("..2026_01_01_00_01_00.2/ns-key.a.yaml"),
            ns_yaml("z"),
        )
        .unwrap();
        symlink("..2026_01_01_00_01_00.2", dir.join("..data_tmp")).unwrap();
        fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        fs::remove_dir_all(dir.join("..2026_01_01_00_00_00.1")).unwrap();
        assert!(wait_for(&ring, |r| has("z")(r) && !has("a")(r)));
    }

    #[test]
    fn keys_dir_created_later_and_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("not/yet/keys");
        let ring = Keyring::new();
        let _h = spawn_dir_watcher(DirStore::new(&dir, "storageos"), ring.clone()).unwrap();
        assert!(ring.is_synced() && ring.snapshot().ns_keys.is_empty());

        let staged = tmp.path().join("staged");
        fs::create_dir(&staged).unwrap();
        fs::write(staged.join("ns-key.a.yaml"), ns_yaml("a")).unwrap();
        fs::create_dir_all(dir.parent().unwrap()).unwrap();
        fs::rename(&staged, &dir).unwrap();
        assert!(wait_for(&ring, has("a")), "directory appeared");

        // The directory renamed away and a new one put in its place.
        fs::rename(&dir, tmp.path().join("old")).unwrap();
        assert!(wait_for(&ring, |r| !has("a")(r)), "directory gone");
        fs::create_dir(&staged).unwrap();
        fs::write(staged.join("ns-key.b.yaml"), ns_yaml("b")).unwrap();
        fs::rename(&staged, &dir).unwrap();
        assert!(wait_for(&ring, has("b")), "replacement directory");
        fs::write(dir.join("ns-key.c.yaml"), ns_yaml("c")).unwrap();
        assert!(wait_for(&ring, has("c")), "watching the new directory");
    }
}
