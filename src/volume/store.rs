//! `<data-dir>/volumes/<id>/{volume.json,data}`: listing, lookup, staged creation (a volume
//! appears whole or not at all), label updates and deletion.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::meta::VolumeMeta;
use super::names::VolumeRef;
use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {0} not found (see `storageos-fuse volume list`)")]
    NotFound(String),
    #[error("volume {0} already exists (id {1})")]
    Exists(String, String),
    #[error("volume {0} is being served (mounted); run `storageos-fuse umount {0}` first")]
    Busy(String),
    #[error("{0}")]
    Io(String),
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> VolumeError {
    let hint = match e.raw_os_error() {
        Some(libc::EFBIG) => {
            " (the size is larger than the file system of the data directory allows)"
        }
        Some(libc::ENOSPC) => " (no space left on the file system of the data directory)",
        Some(libc::EACCES) | Some(libc::EPERM) => " (permission denied: run as root)",
        _ => "",
    };
    VolumeError::Io(format!("cannot {what} {}: {e}{hint}", path.display()))
}

#[derive(Debug, Clone)]
pub struct VolumeStore {
    data_dir: PathBuf,
}

/// A volume being created under a hidden name; `commit` makes it visible, dropping it
/// without commit removes every trace.
pub struct StagedVolume {
    dir: PathBuf,
    target: PathBuf,
    committed: bool,
    /// Parent directories this staging created (deepest last): removed again, if still
    /// empty, when the creation is abandoned, so a refused create leaves no trace.
    created_parents: Vec<PathBuf>,
}

impl StagedVolume {
    pub fn write_meta(&self, meta: &VolumeMeta) -> Result<(), VolumeError> {
        let path = self.dir.join("volume.json");
        let mut json = serde_json::to_vec_pretty(meta).expect("metadata serializes");
        json.push(b'\n');
        fsutil::write_atomic(&path, &json).map_err(|e| io_err("write", &path, e))
    }

    pub fn commit(mut self) -> Result<(), VolumeError> {
        fs::rename(&self.dir, &self.target).map_err(|e| io_err("create", &self.target, e))?;
        self.committed = true;
        let parent = self.target.parent().expect("volume dirs have a parent");
        fsutil::fsync_dir(parent).map_err(|e| io_err("sync", parent, e))
    }
}

impl Drop for StagedVolume {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
            for d in self.created_parents.iter().rev() {
                // remove_dir refuses non-empty directories: anything else there stays.
                let _ = fs::remove_dir(d);
            }
        }
    }
}

impl VolumeStore {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn volumes_dir(&self) -> PathBuf {
        self.data_dir.join("volumes")
    }

    pub fn volume_dir(&self, id: &str) -> PathBuf {
        self.volumes_dir().join(id)
    }

    pub fn data_path(&self, id: &str) -> PathBuf {
        self.volume_dir(id).join("data")
    }

    pub fn meta_path(&self, id: &str) -> PathBuf {
        self.volume_dir(id).join("volume.json")
    }

    pub fn read_meta(&self, id: &str) -> Result<VolumeMeta, String> {
        let path = self.meta_path(id);
        let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let meta: VolumeMeta = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not valid metadata: {e}", path.display()))?;
        meta.validate()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.id != id {
            return Err(format!(
                "{}: id {} does not match its directory",
                path.display(),
                meta.id
            ));
        }
        Ok(meta)
    }

    /// Every volume, sorted by namespace and name, and the directories that could not be read.
    pub fn list(&self) -> Result<(Vec<VolumeMeta>, Vec<String>), VolumeError> {
        let dir = self.volumes_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), Vec::new()));
            }
            Err(e) => return Err(io_err("read", &dir, e)),
        };
        let mut vols = Vec::new();
        let mut issues = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            match self.read_meta(&name) {
                Ok(m) => vols.push(m),
                Err(e) => issues.push(e),
            }
        }
        vols.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok((vols, issues))
    }

    pub fn find_by_name(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<VolumeMeta>, VolumeError> {
        Ok(self
            .list()?
            .0
            .into_iter()
            .find(|m| m.namespace == namespace && m.name == name))
    }

    pub fn find(&self, r: &VolumeRef) -> Result<VolumeMeta, VolumeError> {
        match r {
            VolumeRef::Name { namespace, name } => self
                .find_by_name(namespace, name)?
                .ok_or_else(|| VolumeError::NotFound(r.to_string())),
            VolumeRef::IdOrName(s) => {
                if self.meta_path(s).exists() {
                    return self.read_meta(s).map_err(VolumeError::Io);
                }
                self.find_by_name(super::names::DEFAULT_NAMESPACE, s)?
                    .ok_or_else(|| VolumeError::NotFound(r.to_string()))
            }
        }
    }

    /// Creates the hidden staging directory with a sparse data file of exactly `size` bytes.
    pub fn stage(&self, id: &str, size: u64) -> Result<StagedVolume, VolumeError> {
        let vols = self.volumes_dir();
        let created_parents: Vec<PathBuf> = [self.data_dir.clone(), vols.clone()]
            .into_iter()
            .filter(|d| !d.exists())
            .collect();
        let dir = vols.join(format!(".staging-{id}"));
        let staged = StagedVolume {
            dir: dir.clone(),
            target: self.volume_dir(id),
            committed: false,
            created_parents,
        };
        fsutil::create_private_dir(&vols).map_err(|e| io_err("create", &vols, e))?;
        fsutil::create_private_dir(&dir).map_err(|e| io_err("create", &dir, e))?;
        let data = dir.join("data");
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&data)
            .map_err(|e| io_err("create", &data, e))?;
        f.set_len(size).map_err(|e| {
            if e.raw_os_error() == Some(libc::EFBIG) {
                VolumeError::Io(format!(
                    "a volume of {} is larger than the file system of the data directory {} allows for one file; use a smaller --size or another --data-dir",
                    super::size::format_size(size),
                    self.data_dir.display()
                ))
            } else {
                io_err("size", &data, e)
            }
        })?;
        f.sync_all().map_err(|e| io_err("sync", &data, e))?;
        Ok(staged)
    }

    pub fn write_meta(&self, meta: &VolumeMeta) -> Result<(), VolumeError> {
        let path = self.meta_path(&meta.id);
        let mut json = serde_json::to_vec_pretty(meta).expect("metadata serializes");
        json.push(b'\n');
        fsutil::write_atomic(&path, &json).map_err(|e| io_err("write", &path, e))
    }

    /// The marker a `volume delete` leaves while it asks a running `serve` to let go of
    /// an idle volume (`serve` drops the volume and its lock, and does not take it again
    /// while the marker is fresh). Hidden, so listings skip it.
    pub fn release_marker(&self, id: &str) -> PathBuf {
        self.volumes_dir().join(format!(".release-{id}"))
    }

    /// Ids with a release request younger than `max_age` (an older marker is the leftover
    /// of a killed `delete` and is ignored).
    pub fn release_requests(&self, max_age: std::time::Duration) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.volumes_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_prefix(".release-")?.to_string();
                let age = e
                    .metadata()
                    .ok()?
                    .modified()
                    .ok()?
                    .elapsed()
                    .unwrap_or_default();
                (age <= max_age).then_some(id)
            })
            .collect()
    }

    /// Whether a process serves the volume now (holds the backing-file lock).
    pub fn is_served(&self, meta: &VolumeMeta) -> bool {
        super::lock::is_locked(&self.data_path(&meta.id)).unwrap_or(false)
    }

    /// Removes the data, then the metadata, then the directory. Refused while served.
    pub fn delete(&self, meta: &VolumeMeta) -> Result<(), VolumeError> {
        let data = self.data_path(&meta.id);
        if data.exists() {
            let f = fs::File::open(&data).map_err(|e| io_err("open", &data, e))?;
            if !super::lock::try_lock(&f).map_err(|e| io_err("lock", &data, e))? {
                return Err(VolumeError::Busy(meta.display_name()));
            }
            // Hold the lock while removing so no server can start in between.
            fs::remove_file(&data).map_err(|e| io_err("remove", &data, e))?;
        }
        let m = self.meta_path(&meta.id);
        match fs::remove_file(&m) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &m, e)),
        }
        let dir = self.volume_dir(&meta.id);
        fs::remove_dir_all(&dir).map_err(|e| io_err("remove", &dir, e))?;
        let _ = fsutil::fsync_dir(&self.volumes_dir());
        Ok(())
    }
}
