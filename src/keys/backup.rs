//! `keys backup` and `keys restore`: the plain logic on top of any `KeyStore`.
//!
//! Backup writes one manifest per ns-key/vol-key Secret that `kubectl create -f` accepts
//! (no server fields). Restore reads what operators actually have (raw `kubectl get -o
//! yaml` output: one Secret, a `kind: List`, several documents, server fields present),
//! keeps only what the product owns, checks everything before writing anything, then
//! creates the Secrets: an identical Secret already there is fine, a different one is an
//! error naming it. Does not talk to Kubernetes or the file system except through the store
//! and the files named.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use super::manifest::{SecretManifest, parse_manifests};
use super::record::classify;
use super::store::{CreateOutcome, KeyStore, KeysError};
use crate::fsutil;

/// A restore file larger than this is refused (a Secret is at most 1 MiB in Kubernetes).
const MAX_FILE: u64 = 16 << 20;

/// Writes `<out>/<secret>.yaml` for every valid key Secret of the store; returns the
/// paths written. Broken Secrets are not backed up (they are reported by the load).
pub fn backup_to_dir(store: &dyn KeyStore, out: &Path) -> Result<Vec<PathBuf>, KeysError> {
    backup_to_dir_with(store, out, &mut |_, _| {})
}

/// `backup_to_dir`, calling `progress(done, total)` after each Secret written.
pub fn backup_to_dir_with(
    store: &dyn KeyStore,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<PathBuf>, KeysError> {
    let report = store.load()?;
    let total = report.keys.manifests.len();
    for issue in &report.issues {
        tracing::warn!("not backed up: {issue}");
    }
    fsutil::create_private_dir(out)
        .map_err(|e| KeysError::Io(format!("cannot create {}: {e}", out.display())))?;
    let mut written = Vec::new();
    for (name, m) in &report.keys.manifests {
        let mut m = m.clone();
        // `kubectl create -f` without a namespace would use the context's namespace.
        m.namespace = Some(store.key_namespace().to_string());
        let path = out.join(format!("{name}.yaml"));
        fsutil::write_atomic(&path, m.to_yaml().as_bytes())
            .map_err(|e| KeysError::Io(format!("cannot write {}: {e}", path.display())))?;
        written.push(path);
        progress(written.len(), total);
    }
    Ok(written)
}

/// What a set of restore files holds: the key Secrets to restore, and notes about what was
/// left out (unrelated Secrets).
#[derive(Debug, Default)]
pub struct RestorePlan {
    pub secrets: Vec<SecretManifest>,
    pub skipped: Vec<String>,
}

/// Reads restore files. Any unreadable file, broken document or broken key Secret fails
/// the whole restore (naming the file and what is wrong) before anything is written.
pub fn read_restore_files(paths: &[PathBuf]) -> Result<RestorePlan, KeysError> {
    let mut plan = RestorePlan::default();
    for path in paths {
        let file = path.display();
        let mut bytes = zeroize::Zeroizing::new(Vec::new());
        fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut bytes))
            .map_err(|e| KeysError::Io(format!("cannot read {file}: {e}")))?;
        if bytes.len() as u64 > MAX_FILE {
            return Err(KeysError::Invalid(format!(
                "{file} is larger than {MAX_FILE} bytes: not a Secret backup"
            )));
        }
        let docs = parse_manifests(&bytes)
            .map_err(|e| KeysError::Invalid(format!("{file} {e}; nothing was restored")))?;
        for doc in docs {
            let m =
                doc.map_err(|e| KeysError::Invalid(format!("{file}: {e}; nothing was restored")))?;
            match classify(&m) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    plan.skipped.push(format!(
                        "{file}: Secret {} is not a storageos-fuse key; skipped",
                        m.name
                    ));
                    continue;
                }
                Err(e) => {
                    return Err(KeysError::Invalid(format!(
                        "{file}: {e}; nothing was restored"
                    )));
                }
            }
            if let Some(prev) = plan.secrets.iter().find(|p| p.name == m.name) {
                if prev.data != m.data {
                    return Err(KeysError::Invalid(format!(
                        "Secret {} appears twice in the restore files with different data; nothing was restored",
                        m.name
                    )));
                }
                continue;
            }
            plan.secrets.push(m);
        }
    }
    if plan.secrets.is_empty() {
        return Err(KeysError::Invalid(
            "no ns-key or vol-key Secret in the files given; nothing was restored".into(),
        ));
    }
    Ok(plan)
}

/// What restore did with one Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreOutcome {
    Created(String),
    /// Already there with the same data.
    Unchanged(String),
}

/// Restores the plan into the store (in the store's key namespace). Checks every Secret
/// against what exists first, so a conflict writes nothing.
pub fn restore(store: &dyn KeyStore, plan: &RestorePlan) -> Result<Vec<RestoreOutcome>, KeysError> {
    let conflict = |name: &str| KeysError::Conflict {
        name: name.to_string(),
        location: store.location(),
    };
    let mut todo = Vec::new();
    let mut out = Vec::new();
    for m in &plan.secrets {
        match store.existing(&m.name)? {
            Some(e) if e.data == m.data => out.push(RestoreOutcome::Unchanged(m.name.clone())),
            Some(_) => return Err(conflict(&m.name)),
            None => todo.push(m),
        }
    }
    for m in todo {
        let mut m = m.clone();
        m.namespace = Some(store.key_namespace().to_string());
        match store.create(&m)? {
            CreateOutcome::Created => out.push(RestoreOutcome::Created(m.name.clone())),
            CreateOutcome::AlreadyExists => match store.existing(&m.name)? {
                Some(e) if e.data == m.data => out.push(RestoreOutcome::Unchanged(m.name.clone())),
                _ => return Err(conflict(&m.name)),
            },
        }
    }
    Ok(out)
}
