//! Keys: Secret manifests, the volume-key records they carry, the key sources that store
//! them (`dir`, `kube`), the live keyring and its watchers, and the unlock of a volume key.
//!
//! Owns the mapping between Kubernetes Secrets (`ns-key.<ns>`, `vol-key.<id>`) and key
//! types from `crypt`. Does not do any cryptography itself beyond calling `crypt`, and
//! does not know about backing files or FUSE.

mod backup;
mod dir;
mod keyring;
mod keyset;
pub mod kube;
mod manifest;
mod record;
mod store;
mod watch;

pub use backup::{
    RestoreOutcome, RestorePlan, backup_to_dir, backup_to_dir_with, read_restore_files, restore,
};
pub use dir::{DirStore, load_file};
pub use keyring::Keyring;
pub use keyset::{KeyIssue, KeySet, LoadReport};
pub use manifest::{ManifestError, SecretManifest, parse_manifests};
pub use record::{
    KeySecret, SecretKind, UnlockError, VolKeyRecord, classify, new_volume_keys, ns_key_manifest,
};
pub use store::{CreateOutcome, KeyStore, KeysError, ensure_namespace_key};
pub use watch::{WatchError, WatchHandle, is_change, spawn_dir_watcher};

/// Label every Secret this product writes carries.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "storageos-fuse";
/// Labels on vol-key Secrets.
pub const VOLUME_ID_LABEL: &str = "storageos.com/volume-id";
pub const VOLUME_NAMESPACE_LABEL: &str = "storageos.com/namespace";

/// Secret name of a namespace key.
pub fn ns_key_name(namespace: &str) -> String {
    format!("ns-key.{namespace}")
}

/// Secret name of a volume key.
pub fn vol_key_name(volume_id: &str) -> String {
    format!("vol-key.{volume_id}")
}
