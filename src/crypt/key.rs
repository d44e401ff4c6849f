//! Key types. Each key is its own type so that a tweak key cannot be passed where a
//! namespace key is expected; all of them zeroize on drop and redact themselves in `Debug`.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::random::fill_random;

/// Length of a namespace key (NSK).
pub const NSK_LEN: usize = 32;
/// Length of a volume key (VK): XTS data key then tweak key.
pub const VK_LEN: usize = 64;
/// Length of the per-volume IV (the HKDF salt).
pub const IV_LEN: usize = 32;

/// Why bytes were refused as a key. Carries lengths, never key bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("is {got} bytes, expected {expected}")]
    Length { expected: usize, got: usize },
    #[error("has equal XTS data and tweak halves (IEEE 1619 forbids it)")]
    EqualHalves,
}

fn copy_exact<const N: usize>(bytes: &[u8]) -> Result<[u8; N], KeyError> {
    bytes.try_into().map_err(|_| KeyError::Length {
        expected: N,
        got: bytes.len(),
    })
}

macro_rules! redacted_debug {
    ($t:ty, $name:literal) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!($name, "(<redacted>)"))
            }
        }
    };
}

/// NSK: 32 random bytes, one per Kubernetes namespace.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct NamespaceKey([u8; NSK_LEN]);
redacted_debug!(NamespaceKey, "NamespaceKey");

impl NamespaceKey {
    pub fn generate() -> Self {
        let mut k = [0u8; NSK_LEN];
        fill_random(&mut k);
        Self(k)
    }
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        copy_exact(bytes).map(Self)
    }
    pub fn as_bytes(&self) -> &[u8; NSK_LEN] {
        &self.0
    }
}

/// VK: the 512-bit XTS key. `[0..32]` encrypts data, `[32..64]` encrypts tweaks; the
/// halves always differ (checked on construction).
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct VolumeKey([u8; VK_LEN]);
redacted_debug!(VolumeKey, "VolumeKey");

impl VolumeKey {
    pub fn generate() -> Self {
        loop {
            let mut k = [0u8; VK_LEN];
            fill_random(&mut k);
            match Self::from_array(k) {
                Ok(key) => return key,
                Err(_) => continue, // equal halves: 2^-256, but the rule is absolute
            }
        }
    }
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        Self::from_array(copy_exact(bytes)?)
    }
    fn from_array(mut k: [u8; VK_LEN]) -> Result<Self, KeyError> {
        let equal = k[..32] == k[32..];
        let key = Self(k);
        k.zeroize();
        if equal {
            Err(KeyError::EqualHalves)
        } else {
            Ok(key)
        }
    }
    pub fn as_bytes(&self) -> &[u8; VK_LEN] {
        &self.0
    }
    pub fn data_half(&self) -> &[u8; 32] {
        self.0[..32].try_into().expect("32 bytes")
    }
    pub fn tweak_half(&self) -> &[u8; 32] {
        self.0[32..].try_into().expect("32 bytes")
    }
}

/// KEK: derived per volume from the NSK; wraps the VK.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Kek(pub(super) [u8; 32]);
redacted_debug!(Kek, "Kek");

/// The per-volume HKDF salt. Not secret on its own, but only ever stored beside the
/// wrapped key in the vol-key Secret.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Iv([u8; IV_LEN]);
redacted_debug!(Iv, "Iv");

impl Iv {
    pub fn generate() -> Self {
        let mut k = [0u8; IV_LEN];
        fill_random(&mut k);
        Self(k)
    }
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        copy_exact(bytes).map(Self)
    }
    pub fn as_bytes(&self) -> &[u8; IV_LEN] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_halves_are_refused() {
        let bytes = [7u8; 64];
        assert_eq!(VolumeKey::from_bytes(&bytes), Err(KeyError::EqualHalves));
    }

    #[test]
    fn wrong_lengths_are_refused() {
        assert_eq!(
            NamespaceKey::from_bytes(&[1u8; 16]).unwrap_err(),
            KeyError::Length {
                expected: 32,
                got: 16
            }
        );
        assert!(VolumeKey::from_bytes(&[1u8; 63]).is_err());
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let k = NamespaceKey::from_bytes(&[0xab; 32]).unwrap();
        let s = format!("{k:?}");
        assert!(!s.contains("ab") && !s.contains("171"), "{s}");
    }
}
