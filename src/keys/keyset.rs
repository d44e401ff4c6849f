//! A snapshot of the keys a source holds: namespace keys and volume-key records by name,
//! plus the problems met while reading them (which file or Secret, what is wrong).

use std::collections::BTreeMap;

use super::manifest::SecretManifest;
use super::record::{KeySecret, VolKeyRecord, classify};
use crate::crypt::NamespaceKey;

/// One problem met while loading keys. `source` is a file path or a Secret name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIssue {
    pub source: String,
    pub message: String,
}

impl std::fmt::Display for KeyIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.source, self.message)
    }
}

/// Keys by name, and the manifests they came from (for backup).
#[derive(Debug, Default, Clone)]
pub struct KeySet {
    pub ns_keys: BTreeMap<String, NamespaceKey>,
    pub vol_keys: BTreeMap<String, VolKeyRecord>,
    /// Every valid ns-key/vol-key Secret, by Secret name, as it would be backed up.
    pub manifests: BTreeMap<String, SecretManifest>,
}

/// A `KeySet` and the issues met building it.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub keys: KeySet,
    pub issues: Vec<KeyIssue>,
}

impl KeySet {
    /// Adds one Secret. Unrelated Secrets are ignored (`Ok(false)`); broken ones and
    /// conflicting duplicates are refused with a message.
    pub fn insert(&mut self, m: SecretManifest) -> Result<bool, String> {
        let Some(secret) = classify(&m)? else {
            return Ok(false);
        };
        if let Some(existing) = self.manifests.get(&m.name) {
            if existing.data == m.data {
                return Ok(true);
            }
            return Err(format!(
                "Secret {} is defined twice with different data; keeping the first one",
                m.name
            ));
        }
        match secret {
            KeySecret::Namespace { namespace, key } => {
                self.ns_keys.insert(namespace, key);
            }
            KeySecret::Volume(rec) => {
                self.vol_keys.insert(rec.volume_id.clone(), rec);
            }
        }
        self.manifests.insert(m.name.clone(), m);
        Ok(true)
    }

    pub fn ns_key(&self, namespace: &str) -> Option<&NamespaceKey> {
        self.ns_keys.get(namespace)
    }

    pub fn vol_key(&self, volume_id: &str) -> Option<&VolKeyRecord> {
        self.vol_keys.get(volume_id)
    }
}
