//! The volume manager: the plain logic behind every command, on top of a volume store and
//! a key store. Creating a volume stages its files, makes its keys, then commits, so a
//! failure leaves nothing behind; unlocking refuses any key that fails a check.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;

use crate::crypt::{SectorCipher, VolumeKey};
use crate::error::{Error, Result};
use crate::keys::{self, KeySet, KeyStore};
use crate::volume::labels::{self, Labels};
use crate::volume::meta::{CIPHER, FORMAT, KEY_BITS};
use crate::volume::{EncryptionMeta, VolumeMeta, VolumeRef, VolumeStore, names, size};

pub struct Manager {
    pub store: VolumeStore,
    pub keys: Box<dyn KeyStore>,
}

/// `volume create` arguments, unparsed: parsing is part of the operation.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub volume: String,
    pub size: Option<String>,
    pub labels: Vec<String>,
    pub sector_size: u32,
}

/// Whether an encrypted volume can be unlocked with the keys the source holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyStatus {
    Available,
    Missing,
    Mismatch,
    NotEncrypted,
}

impl KeyStatus {
    /// The status of `meta` against `keys`.
    pub fn of(meta: &VolumeMeta, keys: &KeySet) -> Self {
        if !meta.encrypted() {
            return KeyStatus::NotEncrypted;
        }
        match keys.vol_key(&meta.id) {
            None => KeyStatus::Missing,
            Some(rec) => match meta.key_digest().map(|d| rec.unlock(&meta.id, &d)) {
                Some(Ok(_)) => KeyStatus::Available,
                _ => KeyStatus::Mismatch,
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Missing => "missing",
            Self::Mismatch => "mismatch",
            Self::NotEncrypted => "not-encrypted",
        }
    }
}

/// `volume inspect` output; field order is the JSON order, `id` first.
#[derive(Debug, Serialize)]
pub struct VolumeView {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub labels: Labels,
    pub size_bytes: u64,
    pub sector_size: u32,
    pub encrypted: bool,
    pub key_status: KeyStatus,
    pub key_secret: Option<String>,
    pub created_at: String,
    pub served: bool,
    pub data_path: String,
}

impl Manager {
    pub fn new(store: VolumeStore, keys: Box<dyn KeyStore>) -> Self {
        Self { store, keys }
    }

    pub fn create(&self, req: &CreateRequest) -> Result<VolumeMeta> {
        let vref = VolumeRef::parse(&req.volume).map_err(Error::Usage)?;
        let (namespace, name) = vref.namespace_and_name();
        if req.sector_size != 512 && req.sector_size != 4096 {
            return Err(Error::Usage(format!(
                "--sector-size {} is not supported: use 512 or 4096",
                req.sector_size
            )));
        }
        let size_bytes = match &req.size {
            Some(s) => size::parse_size(s, req.sector_size as u64).map_err(Error::Usage)?,
            None => size::DEFAULT_SIZE,
        };
        let (labels, encrypted) = labels::parse_create_labels(&req.labels).map_err(Error::Usage)?;
        if let Some(existing) = self.store.find_by_name(namespace, name)? {
            return Err(
                crate::volume::VolumeError::Exists(existing.display_name(), existing.id).into(),
            );
        }

        let id = names::new_volume_id();
        let staged = self.store.stage(&id, size_bytes)?;
        // Every namespace gets its key with its first volume, encrypted or not.
        let nsk = keys::ensure_namespace_key(self.keys.as_ref(), namespace)?;
        let encryption = if encrypted {
            let record = keys::new_volume_keys(&id, namespace, &nsk);
            let manifest = record.to_manifest(self.keys.key_namespace());
            if self.keys.create(&manifest)? == keys::CreateOutcome::AlreadyExists {
                return Err(Error::Io(format!(
                    "Secret {} already exists in {}: refusing to overwrite a volume key",
                    manifest.name,
                    self.keys.location()
                )));
            }
            Some(EncryptionMeta {
                cipher: CIPHER.into(),
                key_bits: KEY_BITS,
                key_digest: base64::engine::general_purpose::STANDARD.encode(record.digest),
            })
        } else {
            None
        };
        let meta = VolumeMeta {
            format: FORMAT,
            id: id.clone(),
            namespace: namespace.into(),
            name: name.into(),
            labels,
            size_bytes,
            sector_size: req.sector_size,
            created_at: jiff::Timestamp::now()
                .round(jiff::Unit::Second)
                .unwrap_or(jiff::Timestamp::now())
                .to_string(),
            encryption,
        };
        let done = staged.write_meta(&meta).and_then(|_| staged.commit());
        if let Err(e) = done {
            if meta.encrypted() {
                let _ = self.keys.delete(&keys::vol_key_name(&id));
            }
            return Err(e.into());
        }
        Ok(meta)
    }

    pub fn find(&self, volume: &str) -> Result<VolumeMeta> {
        let vref = VolumeRef::parse(volume).map_err(Error::Usage)?;
        Ok(self.store.find(&vref)?)
    }

    /// Loads the key source, logging (never failing on) broken Secrets.
    pub fn load_keys(&self) -> Result<KeySet> {
        let report = self.keys.load()?;
        for issue in &report.issues {
            tracing::warn!("skipped key Secret: {issue}");
        }
        Ok(report.keys)
    }

    pub fn key_status(&self, meta: &VolumeMeta, keys: &KeySet) -> KeyStatus {
        KeyStatus::of(meta, keys)
    }

    pub fn view(&self, meta: &VolumeMeta, keys: &KeySet) -> VolumeView {
        VolumeView {
            id: meta.id.clone(),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            labels: meta.labels.clone(),
            size_bytes: meta.size_bytes,
            sector_size: meta.sector_size,
            encrypted: meta.encrypted(),
            key_status: self.key_status(meta, keys),
            key_secret: meta.encrypted().then(|| keys::vol_key_name(&meta.id)),
            created_at: meta.created_at.clone(),
            served: self.store.is_served(meta),
            data_path: self.store.data_path(&meta.id).display().to_string(),
        }
    }

    /// The volume key of an encrypted volume, after both checks; an error names the Secret
    /// and how to restore it.
    pub fn unlock_key(&self, meta: &VolumeMeta, keys: &KeySet) -> Result<VolumeKey> {
        let secret = keys::vol_key_name(&meta.id);
        let location = self.keys.location();
        let Some(rec) = keys.vol_key(&meta.id) else {
            return Err(Error::MissingKey {
                volume: meta.display_name(),
                hint: self.keys.restore_hint(&secret),
                secret,
                location,
            });
        };
        let digest = meta.key_digest().ok_or_else(|| {
            Error::Io(format!(
                "volume {}: key_digest in volume.json is not valid",
                meta.display_name()
            ))
        })?;
        rec.unlock(&meta.id, &digest).map_err(|why| Error::BadKey {
            volume: meta.display_name(),
            hint: format!("restore the original Secret {secret} from your backup"),
            secret,
            location,
            why: why.to_string(),
        })
    }

    /// The sector cipher for serving a volume: `None` for an unencrypted one.
    pub fn cipher_for(&self, meta: &VolumeMeta, keys: &KeySet) -> Result<Option<SectorCipher>> {
        if !meta.encrypted() {
            return Ok(None);
        }
        let vk = self.unlock_key(meta, keys)?;
        Ok(Some(
            SectorCipher::new(&vk, meta.sector_size as usize)
                .map_err(|e| Error::Io(e.to_string()))?,
        ))
    }

    pub fn update_labels(&self, volume: &str, changes: &[String]) -> Result<VolumeMeta> {
        if changes.is_empty() {
            return Err(Error::Usage(
                "volume update needs at least one --label KEY=VALUE".into(),
            ));
        }
        let mut meta = self.find(volume)?;
        meta.labels = labels::apply_update(&meta.labels, changes).map_err(Error::Usage)?;
        self.store.write_meta(&meta)?;
        Ok(meta)
    }

    /// Removes data, metadata, then the vol-key Secret. The ns-key stays. A volume a
    /// running `serve` exposes is released by it first, unless it is in use.
    pub fn delete(&self, volume: &str) -> Result<VolumeMeta> {
        let meta = self.find(volume)?;
        match self.store.delete(&meta) {
            // A running `serve` holds every volume it exposes: ask it to let go.
            Err(crate::volume::VolumeError::Busy(_))
                if crate::daemon::serve::served_by_serve(&meta.id) =>
            {
                crate::daemon::serve::delete_through_serve(&self.store, &meta)?
            }
            other => other?,
        }
        if meta.encrypted() {
            self.keys.delete(&keys::vol_key_name(&meta.id))?;
        }
        Ok(meta)
    }

    /// Per-volume key status, for `keys status`.
    pub fn key_statuses(&self) -> Result<BTreeMap<String, (VolumeMeta, KeyStatus)>> {
        let keys = self.load_keys()?;
        let (vols, _) = self.store.list()?;
        Ok(vols
            .into_iter()
            .map(|m| {
                let s = self.key_status(&m, &keys);
                (m.display_name(), (m, s))
            })
            .collect())
    }
}
