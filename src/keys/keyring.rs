//! The live keyring: the latest `KeySet` a key source delivered, shared by every part of a
//! running daemon. Sources (the `dir` watcher, the kube watcher) call `replace` with a full
//! snapshot; consumers read `snapshot()` and may wait for the next change.
//!
//! Owns no I/O: feeding it is the sources' job, so tests can drive it directly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::keyset::{KeyIssue, KeySet, LoadReport};

#[derive(Default)]
struct State {
    keys: Arc<KeySet>,
    issues: Vec<KeyIssue>,
    generation: u64,
    synced: bool,
}

#[derive(Default)]
pub struct Keyring {
    state: Mutex<State>,
    changed: Condvar,
    /// Times the feeding source lost its watch and started again (`/metrics`).
    restarts: AtomicU64,
}

impl Keyring {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current keys. Cheap: shares the snapshot.
    pub fn snapshot(&self) -> Arc<KeySet> {
        self.lock().keys.clone()
    }

    /// Problems of the current snapshot (broken files or Secrets).
    pub fn issues(&self) -> Vec<KeyIssue> {
        self.lock().issues.clone()
    }

    /// Whether a source has delivered at least one full snapshot.
    pub fn is_synced(&self) -> bool {
        self.lock().synced
    }

    /// Called by a source each time its watch failed and is being restarted.
    pub fn note_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Watch restarts of the feeding source so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Installs a full snapshot from a source. New issues are logged once, by name.
    pub fn replace(&self, report: LoadReport) {
        let mut st = self.lock();
        for issue in &report.issues {
            if !st.issues.contains(issue) {
                tracing::warn!("skipped key Secret: {issue}");
            }
        }
        st.keys = Arc::new(report.keys);
        st.issues = report.issues;
        st.generation += 1;
        st.synced = true;
        drop(st);
        self.changed.notify_all();
    }

    /// Waits until the generation moves past `since` or `timeout` passes; returns the
    /// generation then.
    pub fn wait_change(&self, since: u64, timeout: Duration) -> u64 {
        let st = self.lock();
        let (st, _) = self
            .changed
            .wait_timeout_while(st, timeout, |s| s.generation <= since)
            .unwrap_or_else(|p| p.into_inner());
        st.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_bumps_generation_and_wakes_waiters() {
        let ring = Keyring::new();
        assert!(!ring.is_synced());
        let r2 = ring.clone();
        let t = std::thread::spawn(move || r2.wait_change(0, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        ring.replace(LoadReport::default());
        assert_eq!(t.join().unwrap(), 1);
        assert!(ring.is_synced());
    }
}
