//! The key-store abstraction both sources implement (`dir`: YAML files; `kube`: Secrets
//! through the API), and the plain logic on top of it that must behave the same on both:
//! create-or-adopt of a namespace key when two nodes race.

use super::keyset::LoadReport;
use super::manifest::SecretManifest;
use super::record::{KeySecret, classify, ns_key_manifest};
use crate::crypt::NamespaceKey;

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{0}")]
    Io(String),
    #[error(
        "Secret {name} already exists in {location} with different data; nothing was restored (delete that Secret first if the backup is the one to keep)"
    )]
    Conflict { name: String, location: String },
    #[error("{0}")]
    Invalid(String),
}

/// What `create` did.
#[derive(Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// A Secret of that name was already there (409 AlreadyExists); nothing was written.
    AlreadyExists,
}

pub trait KeyStore: Send + Sync {
    /// Where the Secrets live, for messages: `namespace storageos` or a directory.
    fn location(&self) -> String;
    /// The key namespace Secrets are created in.
    fn key_namespace(&self) -> &str;
    /// Reads every Secret; broken ones become issues, never a failure of the whole load.
    fn load(&self) -> Result<LoadReport, KeysError>;
    /// Creates a Secret if no Secret of that name exists (never overwrites).
    fn create(&self, m: &SecretManifest) -> Result<CreateOutcome, KeysError>;
    /// Deletes a Secret; absent is fine.
    fn delete(&self, name: &str) -> Result<(), KeysError>;
    /// The `restore` hint for error messages.
    fn restore_hint(&self, secret: &str) -> String;
    /// The valid key Secret of that name, if the store holds one.
    fn existing(&self, name: &str) -> Result<Option<SecretManifest>, KeysError> {
        Ok(self.load()?.keys.manifests.get(name).cloned())
    }
}

/// The namespace key of `namespace`, created on first use. When another node (or process)
/// creates it at the same moment, the loser reads and adopts the winner's key.
pub fn ensure_namespace_key(
    store: &dyn KeyStore,
    namespace: &str,
) -> Result<NamespaceKey, KeysError> {
    if let Some(k) = store.load()?.keys.ns_key(namespace) {
        return Ok(k.clone());
    }
    let key = NamespaceKey::generate();
    let manifest = ns_key_manifest(namespace, &key, store.key_namespace());
    match store.create(&manifest)? {
        CreateOutcome::Created => Ok(key),
        CreateOutcome::AlreadyExists => {
            let report = store.load()?;
            if let Some(k) = report.keys.ns_key(namespace) {
                return Ok(k.clone());
            }
            let name = manifest.name;
            let why = report
                .issues
                .iter()
                .find(|i| i.message.contains(&name) || i.source.contains(&name))
                .map(|i| i.to_string())
                .unwrap_or_else(|| "it cannot be read".to_string());
            Err(KeysError::Invalid(format!(
                "Secret {name} exists in {} but is not usable: {why}",
                store.location()
            )))
        }
    }
}

/// Checks that a manifest is a well-formed key Secret before it is written anywhere.
pub fn check_key_manifest(m: &SecretManifest) -> Result<Option<KeySecret>, KeysError> {
    classify(m).map_err(KeysError::Invalid)
}
