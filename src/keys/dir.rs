//! Key source `dir`: Secret manifests as YAML files in a directory (the keys dir). Reads
//! every `*.yaml`/`*.yml` file (single Secret, several documents, or `kind: List`); writes
//! one `<secret-name>.yaml` per Secret, created atomically and never overwritten.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::keyset::{KeyIssue, KeySet, LoadReport};
use super::manifest::{SecretManifest, parse_manifests};
use super::store::{CreateOutcome, KeyStore, KeysError, check_key_manifest};
use crate::fsutil;

/// A manifest file larger than this is refused (a Secret is at most 1 MiB in Kubernetes).
const MAX_FILE: u64 = 4 << 20;

#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
    key_namespace: String,
}

impl DirStore {
    pub fn new(dir: impl Into<PathBuf>, key_namespace: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            key_namespace: key_namespace.into(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest files of the directory, sorted. Hidden entries (`.tmp.*`, kubelet's
    /// `..data`) are skipped; symlinks to files are followed.
    pub fn manifest_files(&self) -> Result<Vec<PathBuf>, KeysError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(KeysError::Io(format!(
                    "cannot read keys directory {}: {e}",
                    self.dir.display()
                )));
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                !name.starts_with('.')
                    && (name.ends_with(".yaml") || name.ends_with(".yml"))
                    && p.is_file()
            })
            .collect();
        files.sort();
        Ok(files)
    }

    fn secret_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.yaml"))
    }
}

/// Reads one manifest file into `keys`, recording every problem against the file.
pub fn load_file(path: &Path, keys: &mut KeySet, issues: &mut Vec<KeyIssue>) {
    let source = path.display().to_string();
    let mut issue = |message: String| {
        issues.push(KeyIssue {
            source: source.clone(),
            message,
        })
    };
    let bytes = match fs::File::open(path).and_then(|f| {
        let mut buf = zeroize::Zeroizing::new(Vec::new());
        f.take(MAX_FILE + 1).read_to_end(&mut buf)?;
        Ok(buf)
    }) {
        Ok(b) if b.len() as u64 > MAX_FILE => {
            return issue(format!("file is larger than {MAX_FILE} bytes"));
        }
        Ok(b) => b,
        Err(e) => return issue(format!("cannot read: {e}")),
    };
    match parse_manifests(&bytes) {
        Err(e) => issue(format!("file {e}")),
        Ok(docs) => {
            for doc in docs {
                match doc {
                    Err(e) => issue(e.to_string()),
                    Ok(m) => {
                        if let Err(e) = keys.insert(m) {
                            issue(e)
                        }
                    }
                }
            }
        }
    }
}

impl KeyStore for DirStore {
    fn location(&self) -> String {
        format!(
            "namespace {} (keys directory {})",
            self.key_namespace,
            self.dir.display()
        )
    }

    fn key_namespace(&self) -> &str {
        &self.key_namespace
    }

    fn load(&self) -> Result<LoadReport, KeysError> {
        let mut report = LoadReport::default();
        for path in self.manifest_files()? {
            load_file(&path, &mut report.keys, &mut report.issues);
        }
        Ok(report)
    }

    fn create(&self, m: &SecretManifest) -> Result<CreateOutcome, KeysError> {
        check_key_manifest(m)?;
        if self.load()?.keys.manifests.contains_key(&m.name) {
            return Ok(CreateOutcome::AlreadyExists);
        }
        fsutil::create_private_dir(&self.dir).map_err(|e| {
            KeysError::Io(format!(
                "cannot create keys directory {}: {e}",
                self.dir.display()
            ))
        })?;
        let path = self.secret_path(&m.name);
        let text = m.to_yaml();
        match fsutil::create_atomic(&path, text.as_bytes()) {
            Ok(true) => Ok(CreateOutcome::Created),
            Ok(false) => Ok(CreateOutcome::AlreadyExists),
            Err(e) => Err(KeysError::Io(format!(
                "cannot write {}: {e}",
                path.display()
            ))),
        }
    }

    fn delete(&self, name: &str) -> Result<(), KeysError> {
        for ext in ["yaml", "yml"] {
            let p = self.dir.join(format!("{name}.{ext}"));
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(KeysError::Io(format!("cannot remove {}: {e}", p.display()))),
            }
        }
        let _ = fsutil::fsync_dir(&self.dir);
        Ok(())
    }

    fn restore_hint(&self, secret: &str) -> String {
        format!(
            "restore it from your backup with `storageos-fuse keys restore FILE` (or copy {secret}.yaml into {})",
            self.dir.display()
        )
    }
}
