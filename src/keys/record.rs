//! What a Secret means to the product: a namespace key (`ns-key.<ns>`, item `key`) or a
//! volume-key record (`vol-key.<id>`, items `vuk`, `iv`, `digest`, `nsk`), and the unlock
//! of a volume key from its record with both checks of DESIGN.md.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use super::manifest::SecretManifest;
use super::{
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, VOLUME_ID_LABEL, VOLUME_NAMESPACE_LABEL, ns_key_name,
    vol_key_name,
};
use crate::crypt::{self, Iv, KEY_DIGEST_LEN, NamespaceKey, VUK_LEN, VolumeKey};
use crate::volume::names;

/// The wrapped volume key and what opens it. Everything needed to decrypt a volume.
#[derive(Clone, PartialEq, Eq)]
pub struct VolKeyRecord {
    pub volume_id: String,
    /// Volume namespace, from the `storageos.com/namespace` label when present.
    pub volume_namespace: Option<String>,
    pub vuk: [u8; VUK_LEN],
    pub iv: Iv,
    pub digest: [u8; KEY_DIGEST_LEN],
    pub nsk: NamespaceKey,
}

impl std::fmt::Debug for VolKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VolKeyRecord({})", self.volume_id)
    }
}

/// A Secret the product understands.
#[derive(Clone, Debug)]
pub enum KeySecret {
    Namespace {
        namespace: String,
        key: NamespaceKey,
    },
    Volume(VolKeyRecord),
}

/// The kind of a Secret by its name, before its contents are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretKind {
    NamespaceKey,
    VolumeKey,
    Unrelated,
}

impl SecretKind {
    pub fn of(name: &str) -> Self {
        if name.starts_with("ns-key.") {
            Self::NamespaceKey
        } else if name.starts_with("vol-key.") {
            Self::VolumeKey
        } else {
            Self::Unrelated
        }
    }
}

fn item<'a>(m: &'a SecretManifest, field: &str) -> Result<&'a Zeroizing<Vec<u8>>, String> {
    m.data
        .get(field)
        .ok_or_else(|| format!("Secret {}: data.{field} is missing", m.name))
}

fn sized<const N: usize>(m: &SecretManifest, field: &str) -> Result<[u8; N], String> {
    let v = item(m, field)?;
    v[..].try_into().map_err(|_| {
        format!(
            "Secret {}: data.{field} is {} bytes, expected {N}",
            m.name,
            v.len()
        )
    })
}

/// Reads a Secret as a key. `Ok(None)`: not one of ours (ignored); `Err`: ours but broken,
/// with a message naming the Secret and the item (never a value).
pub fn classify(m: &SecretManifest) -> Result<Option<KeySecret>, String> {
    match SecretKind::of(&m.name) {
        SecretKind::Unrelated => Ok(None),
        SecretKind::NamespaceKey => {
            let ns = &m.name["ns-key.".len()..];
            names::validate_namespace(ns)
                .map_err(|e| format!("Secret {}: bad namespace: {e}", m.name))?;
            let key = NamespaceKey::from_bytes(item(m, "key")?)
                .map_err(|e| format!("Secret {}: data.key {e}", m.name))?;
            Ok(Some(KeySecret::Namespace {
                namespace: ns.to_string(),
                key,
            }))
        }
        SecretKind::VolumeKey => {
            let id = &m.name["vol-key.".len()..];
            names::validate_volume_id(id)
                .map_err(|e| format!("Secret {}: bad volume id: {e}", m.name))?;
            let vuk = sized::<VUK_LEN>(m, "vuk")?;
            let iv = Iv::from_bytes(item(m, "iv")?)
                .map_err(|e| format!("Secret {}: data.iv {e}", m.name))?;
            let digest = sized::<KEY_DIGEST_LEN>(m, "digest")?;
            let nsk = NamespaceKey::from_bytes(item(m, "nsk")?)
                .map_err(|e| format!("Secret {}: data.nsk {e}", m.name))?;
            Ok(Some(KeySecret::Volume(VolKeyRecord {
                volume_id: id.to_string(),
                volume_namespace: m.labels.get(VOLUME_NAMESPACE_LABEL).cloned(),
                vuk,
                iv,
                digest,
                nsk,
            })))
        }
    }
}

fn managed_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())])
}

/// The `ns-key.<ns>` Secret for a namespace key.
pub fn ns_key_manifest(namespace: &str, key: &NamespaceKey, key_namespace: &str) -> SecretManifest {
    SecretManifest {
        name: ns_key_name(namespace),
        namespace: Some(key_namespace.to_string()),
        labels: managed_labels(),
        secret_type: "Opaque".into(),
        data: BTreeMap::from([("key".to_string(), Zeroizing::new(key.as_bytes().to_vec()))]),
    }
}

impl VolKeyRecord {
    /// The `vol-key.<id>` Secret holding this record.
    pub fn to_manifest(&self, key_namespace: &str) -> SecretManifest {
        let mut labels = managed_labels();
        labels.insert(VOLUME_ID_LABEL.into(), self.volume_id.clone());
        if let Some(ns) = &self.volume_namespace {
            labels.insert(VOLUME_NAMESPACE_LABEL.into(), ns.clone());
        }
        SecretManifest {
            name: vol_key_name(&self.volume_id),
            namespace: Some(key_namespace.to_string()),
            labels,
            secret_type: "Opaque".into(),
            data: BTreeMap::from([
                ("digest".to_string(), Zeroizing::new(self.digest.to_vec())),
                (
                    "iv".to_string(),
                    Zeroizing::new(self.iv.as_bytes().to_vec()),
                ),
                (
                    "nsk".to_string(),
                    Zeroizing::new(self.nsk.as_bytes().to_vec()),
                ),
                ("vuk".to_string(), Zeroizing::new(self.vuk.to_vec())),
            ]),
        }
    }

    /// Unwraps the volume key and checks it against this record's digest and the volume's
    /// own `key_digest`. A key that fails either check is never returned.
    pub fn unlock(
        &self,
        volume_id: &str,
        volume_digest: &[u8; KEY_DIGEST_LEN],
    ) -> Result<VolumeKey, UnlockError> {
        if self.volume_id != volume_id {
            return Err(UnlockError::WrongVolume);
        }
        let kek = crypt::derive_kek(&self.nsk, &self.iv, volume_id);
        let vk = crypt::unwrap_volume_key_checked(&kek, &self.vuk).map_err(|e| match e {
            crypt::UnwrapError::Integrity => UnlockError::Unwrap,
            crypt::UnwrapError::InvalidKey(_) => UnlockError::InvalidKey,
        })?;
        let d = crypt::key_digest(&vk);
        if !ct_eq(&d, &self.digest) || !ct_eq(&d, volume_digest) {
            return Err(UnlockError::DigestMismatch);
        }
        Ok(vk)
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a present vol-key record does not open its volume.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnlockError {
    #[error("the Secret belongs to another volume")]
    WrongVolume,
    #[error(
        "its wrapped key does not open with its namespace key (vuk, iv or nsk altered, or copied from another volume)"
    )]
    Unwrap,
    #[error(
        "the wrapped key opens, but the volume key inside is not a valid XTS key (its data and tweak halves are equal)"
    )]
    InvalidKey,
    #[error("the unwrapped key does not match the digest recorded for the volume (key mismatch)")]
    DigestMismatch,
}

/// Creates the keys of a new encrypted volume: a fresh VK wrapped under the namespace key.
/// Returns the record to store and the digest to put in the volume's metadata.
pub fn new_volume_keys(
    volume_id: &str,
    volume_namespace: &str,
    nsk: &NamespaceKey,
) -> VolKeyRecord {
    let vk = VolumeKey::generate();
    let iv = Iv::generate();
    let kek = crypt::derive_kek(nsk, &iv, volume_id);
    VolKeyRecord {
        volume_id: volume_id.to_string(),
        volume_namespace: Some(volume_namespace.to_string()),
        vuk: crypt::wrap_volume_key(&kek, &vk),
        iv,
        digest: crypt::key_digest(&vk),
        nsk: nsk.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4276fc07-7d85-70bf-35a0-f0b005e55e0f";

    fn fresh() -> VolKeyRecord {
        new_volume_keys(ID, "default", &NamespaceKey::generate())
    }

    #[test]
    fn create_then_unlock() {
        let r = fresh();
        let vk = r.unlock(ID, &r.digest).unwrap();
        assert_eq!(crypt::key_digest(&vk), r.digest);
    }

    #[test]
    fn every_altered_item_is_refused() {
        let r = fresh();
        let mut a = r.clone();
        a.vuk[5] ^= 1;
        assert_eq!(a.unlock(ID, &r.digest), Err(UnlockError::Unwrap));
        let mut b = r.clone();
        b.iv = Iv::generate();
        assert_eq!(b.unlock(ID, &r.digest), Err(UnlockError::Unwrap));
        let mut c = r.clone();
        c.nsk = NamespaceKey::generate();
        assert_eq!(c.unlock(ID, &r.digest), Err(UnlockError::Unwrap));
        let mut d = r.clone();
        d.digest[0] ^= 1;
        assert_eq!(d.unlock(ID, &r.digest), Err(UnlockError::DigestMismatch));
        // The record is intact but the volume's metadata records another key.
        let mut other = r.digest;
        other[31] ^= 1;
        assert_eq!(r.unlock(ID, &other), Err(UnlockError::DigestMismatch));
    }

    #[test]
    fn record_copied_onto_another_volume_is_refused() {
        let r = fresh();
        let other = "5a2679ac-9ba3-44d9-97db-98705e30b006";
        let mut copy = r.clone();
        copy.volume_id = other.to_string();
        assert_eq!(copy.unlock(other, &r.digest), Err(UnlockError::Unwrap));
    }

    #[test]
    fn manifest_round_trip() {
        let r = fresh();
        let m = r.to_manifest("storageos");
        assert_eq!(m.name, format!("vol-key.{ID}"));
        match classify(&m).unwrap().unwrap() {
            KeySecret::Volume(back) => assert_eq!(back, r),
            other => panic!("{other:?}"),
        }
    }
}
