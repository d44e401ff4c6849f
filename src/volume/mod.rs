//! Volumes on the node: names and ids, sizes, labels, the metadata file (`volume.json`,
//! format 1), the sparse backing file and its lock.
//!
//! Owns `<data-dir>/volumes/`. Does not hold keys (see `keys`) and does not do sector I/O
//! (see `image`).

pub mod labels;
pub mod lock;
pub mod meta;
pub mod names;
pub mod size;
mod store;

pub use meta::{EncryptionMeta, VolumeMeta};
pub use names::VolumeRef;
pub use store::{StagedVolume, VolumeError, VolumeStore};
