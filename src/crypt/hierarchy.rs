//! The key hierarchy of DESIGN.md: KEK = HKDF-SHA256(salt = IV, ikm = NSK,
//! info = "storageos-fuse vuk v1 " + id); VUK = RFC 3394 wrap of VK under KEK;
//! DIGEST = HMAC-SHA256(VK, "storageos-fuse key digest v1").

use aes_kw::KwAes256;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::key::{Iv, Kek, KeyError, NamespaceKey, VK_LEN, VolumeKey};

/// Length of the wrapped volume key: VK plus the 8-byte integrity block.
pub const VUK_LEN: usize = VK_LEN + 8;
/// Length of the key digest.
pub const KEY_DIGEST_LEN: usize = 32;

const KEK_INFO_PREFIX: &str = "storageos-fuse vuk v1 ";
const DIGEST_MESSAGE: &[u8] = b"storageos-fuse key digest v1";

/// Derives the key-encryption key of one volume.
pub fn derive_kek(nsk: &NamespaceKey, iv: &Iv, volume_id: &str) -> Kek {
    let hk = Hkdf::<Sha256>::new(Some(iv.as_bytes()), nsk.as_bytes());
    let info = format!("{KEK_INFO_PREFIX}{volume_id}");
    let mut okm = [0u8; 32];
    hk.expand(info.as_bytes(), &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    Kek(okm)
}

/// Wraps VK under KEK (RFC 3394). The result is not secret without the NSK.
pub fn wrap_volume_key(kek: &Kek, vk: &VolumeKey) -> [u8; VUK_LEN] {
    let kw = KwAes256::new((&kek.0).into());
    let mut out = [0u8; VUK_LEN];
    kw.wrap_key(vk.as_bytes(), &mut out)
        .expect("64-byte key wraps into 72 bytes");
    out
}

/// Why a VUK did not unwrap into a usable volume key. Carries no key bytes.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnwrapError {
    /// The RFC 3394 integrity check failed: wrong NSK, IV or id, or a corrupted VUK.
    #[error("the wrapped key does not open with this key-encryption key")]
    Integrity,
    /// The wrapped key opened, but what it holds is not a valid XTS key (equal halves).
    #[error("the unwrapped key {0}")]
    InvalidKey(#[from] KeyError),
}

/// Unwraps a VUK, telling a failed integrity check apart from an invalid key inside.
pub fn unwrap_volume_key_checked(kek: &Kek, vuk: &[u8]) -> Result<VolumeKey, UnwrapError> {
    if vuk.len() != VUK_LEN {
        return Err(UnwrapError::Integrity);
    }
    let kw = KwAes256::new((&kek.0).into());
    let mut out = Zeroizing::new([0u8; VK_LEN]);
    kw.unwrap_key(vuk, &mut out[..])
        .map_err(|_| UnwrapError::Integrity)?;
    Ok(VolumeKey::from_bytes(&out[..])?)
}

/// Unwraps a VUK. `None` when the integrity check fails (wrong NSK, IV, id, or a
/// corrupted VUK) or the unwrapped key is not a valid XTS key.
pub fn unwrap_volume_key(kek: &Kek, vuk: &[u8]) -> Option<VolumeKey> {
    unwrap_volume_key_checked(kek, vuk).ok()
}

/// The digest that identifies a volume key without revealing it.
pub fn key_digest(vk: &VolumeKey) -> [u8; KEY_DIGEST_LEN] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(vk.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(DIGEST_MESSAGE);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VUK that passes the integrity check but holds a key with equal XTS halves is
    /// refused as an invalid key, not reported as a wrong namespace key.
    #[test]
    fn equal_halves_inside_a_valid_wrap_are_refused() {
        let kek = derive_kek(
            &NamespaceKey::from_bytes(&[3u8; 32]).unwrap(),
            &Iv::from_bytes(&[4u8; 32]).unwrap(),
            "4276fc07-7d85-70bf-35a0-f0b005e55e0f",
        );
        let kw = KwAes256::new((&kek.0).into());
        let mut vuk = [0u8; VUK_LEN];
        kw.wrap_key(&[9u8; VK_LEN], &mut vuk).unwrap();
        assert_eq!(
            unwrap_volume_key_checked(&kek, &vuk).unwrap_err(),
            UnwrapError::InvalidKey(KeyError::EqualHalves)
        );
        vuk[0] ^= 1;
        assert_eq!(
            unwrap_volume_key_checked(&kek, &vuk).unwrap_err(),
            UnwrapError::Integrity
        );
    }

    /// RFC 3394 section 4.6: wrap 256 bits of key data with a 256-bit KEK. Checked through
    /// the same type path (the crate's KwAes256) used for the 512-bit VK.
    #[test]
    fn rfc3394_known_answer() {
        let kek: Vec<u8> = (0u8..32).collect();
        let data: Vec<u8> = [
            0x00u8, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
            0x0c, 0x0d, 0x0e, 0x0f,
        ]
        .to_vec();
        let kw = KwAes256::new_from_slice(&kek).unwrap();
        let mut out = [0u8; 40];
        kw.wrap_key(&data, &mut out).unwrap();
        let expected = [
            0x28, 0xc9, 0xf4, 0x04, 0xc4, 0xb8, 0x10, 0xf4, 0xcb, 0xcc, 0xb3, 0x5c, 0xfb, 0x87,
            0xf8, 0x26, 0x3f, 0x57, 0x86, 0xe2, 0xd8, 0x0e, 0xd3, 0x26, 0xcb, 0xc7, 0xf0, 0xe7,
            0x1a, 0x99, 0xf4, 0x3b, 0xfb, 0x98, 0x8b, 0x9b, 0x7a, 0x02, 0xdd, 0x21,
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn wrap_unwrap_round_trip_and_binding() {
        let nsk = NamespaceKey::generate();
        let iv = Iv::generate();
        let vk = VolumeKey::generate();
        let kek = derive_kek(&nsk, &iv, "a");
        let vuk = wrap_volume_key(&kek, &vk);
        assert_eq!(unwrap_volume_key(&kek, &vuk).unwrap(), vk);
        // Another volume id, another IV or another NSK give another KEK: unwrap fails.
        assert!(unwrap_volume_key(&derive_kek(&nsk, &iv, "b"), &vuk).is_none());
        assert!(unwrap_volume_key(&derive_kek(&nsk, &Iv::generate(), "a"), &vuk).is_none());
        assert!(
            unwrap_volume_key(&derive_kek(&NamespaceKey::generate(), &iv, "a"), &vuk).is_none()
        );
        let mut bad = vuk;
        bad[10] ^= 1;
        assert!(unwrap_volume_key(&kek, &bad).is_none());
    }

    #[test]
    fn digest_is_hmac_sha256_of_the_fixed_message() {
        // Expected value computed independently with Python's hmac module.
        let mut k = [0x0bu8; 64];
        k[32..].fill(0x0c);
        let vk = VolumeKey::from_bytes(&k).unwrap();
        let hex: String = key_digest(&vk).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "d3928a5ee30c9c2692e67b5f88bcb534b50e33ce8a7daaf69a0ee7c331a8c321"
        );
    }
}
