//! Cryptography: the sector cipher (AES-256-XTS), the key types, and the key hierarchy
//! primitives (HKDF key derivation, RFC 3394 key wrap, key digest).
//!
//! Owns every byte of key material in the process: keys are small types that zeroize on
//! drop and never implement `Display` or print their bytes in `Debug`. Does not know
//! about Secrets, YAML or files; `keys` turns manifests into these types.

mod bench;
mod hierarchy;
mod key;
mod random;
#[cfg(target_arch = "x86_64")]
mod vaes;
mod xts;

pub use bench::{XtsBenchmark, benchmark_xts};
pub use hierarchy::{
    KEY_DIGEST_LEN, UnwrapError, VUK_LEN, derive_kek, key_digest, unwrap_volume_key,
    unwrap_volume_key_checked, wrap_volume_key,
};
pub use key::{IV_LEN, Iv, Kek, KeyError, NSK_LEN, NamespaceKey, VK_LEN, VolumeKey};
pub use random::fill_random;
pub use xts::{SectorCipher, XtsError};
