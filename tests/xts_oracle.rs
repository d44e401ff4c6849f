//! The fast XTS kernel (`crypt::SectorCipher`) against two independent implementations:
//! OpenSSL's EVP `aes-256-xts` (IV = le128(sector index)) and the `xts-mode` crate. Random
//! keys and data (seed printed, `XTS_ORACLE_SEED=N` replays), both sector sizes, buffers
//! of one to many sectors (crossing the kernels' batch and padding boundaries, and leaving
//! a short last group), sector indexes past 2^32 and 2^63, in place and `encrypt_to`.
//! Both kernels run: the default one (VAES on a CPU with avx2, vaes, aes and vpclmulqdq,
//! which is asserted to be chosen there) and the portable one.

mod common;

use aes::Aes256;
use aes::cipher::{Array, KeyInit};
use openssl::symm::{Cipher, Crypter, Mode};
use storageos_fuse::crypt::{SectorCipher, VolumeKey};
use xts_mode::{Xts128, get_tweak_default};

fn seed() -> u64 {
    std::env::var("XTS_ORACLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let mut b = [0u8; 8];
            storageos_fuse::crypt::fill_random(&mut b);
            u64::from_le_bytes(b)
        })
}

fn key(seed: u64) -> (Vec<u8>, VolumeKey) {
    let bytes = common::pseudo_random(seed, 64);
    let vk = VolumeKey::from_bytes(&bytes).expect("random halves differ");
    (bytes, vk)
}

fn openssl_sector(key: &[u8], index: u64, data: &[u8], mode: Mode) -> Vec<u8> {
    let iv = (index as u128).to_le_bytes();
    let mut c = Crypter::new(Cipher::aes_256_xts(), mode, key, Some(&iv)).unwrap();
    let mut out = vec![0u8; data.len() + 16];
    let n = c.update(data, &mut out).unwrap();
    let m = c.finalize(&mut out[n..]).unwrap();
    out.truncate(n + m);
    out
}

fn openssl(key: &[u8], first: u64, data: &[u8], sector: usize, mode: Mode) -> Vec<u8> {
    data.chunks(sector)
        .enumerate()
        .flat_map(|(i, s)| openssl_sector(key, first + i as u64, s, mode))
        .collect()
}

fn xts_mode(key: &[u8], first: u64, data: &[u8], sector: usize, encrypt: bool) -> Vec<u8> {
    let k1: Array<u8, _> = Array::try_from(&key[..32]).unwrap();
    let k2: Array<u8, _> = Array::try_from(&key[32..]).unwrap();
    let xts = Xts128::<Aes256>::new(Aes256::new(&k1), Aes256::new(&k2));
    let mut buf = data.to_vec();
    if encrypt {
        xts.encrypt_area(&mut buf, sector, first as u128, get_tweak_default);
    } else {
        xts.decrypt_area(&mut buf, sector, first as u128, get_tweak_default);
    }
    buf
}

/// First sector indexes: small, around 2^32 (no wrap), far past it.
fn firsts(seed: u64) -> Vec<u64> {
    let r = u64::from_le_bytes(common::pseudo_random(seed ^ 0x5eed, 8).try_into().unwrap());
    vec![
        0,
        0xff,
        (1 << 32) - 3,
        1 << 32,
        (1 << 32) + (r & 0xffff_ffff),
        (1 << 40) + (r >> 24),
        (1 << 63) + (r >> 2),
    ]
}

/// Sector counts: one, a few, and across the 16-sector (VAES) and 64-sector (portable)
/// tweak batches, with a short last batch.
const COUNTS: [usize; 9] = [1, 2, 3, 7, 16, 17, 64, 65, 131];

/// The default cipher and the portable one for this key. On a CPU with avx2, vaes, aes and
/// vpclmulqdq the default must be the VAES kernel.
fn ciphers(vk: &VolumeKey, sector: usize) -> [SectorCipher; 2] {
    let default = SectorCipher::new(vk, sector).unwrap();
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("vaes")
        && is_x86_feature_detected!("aes")
        && is_x86_feature_detected!("vpclmulqdq")
    {
        assert_eq!(default.kernel_name(), "vaes", "{default:?}");
    }
    let portable = SectorCipher::new_portable(vk, sector).unwrap();
    assert_eq!(portable.kernel_name(), "portable");
    [default, portable]
}

#[test]
fn encrypt_equals_openssl_and_xts_mode() {
    let seed = seed();
    for sector in [512usize, 4096] {
        for (case, first) in firsts(seed).into_iter().enumerate() {
            for count in COUNTS {
                let s = seed.wrapping_add((case * 1000 + count + sector) as u64);
                let (raw, vk) = key(s);
                let plain = common::pseudo_random(s ^ 0xda7a, sector * count);
                let want = openssl(&raw, first, &plain, sector, Mode::Encrypt);
                assert!(
                    want == xts_mode(&raw, first, &plain, sector, true),
                    "seed {seed}: OpenSSL and xts-mode differ (oracle self-check)"
                );
                for c in ciphers(&vk, sector) {
                    let ctx = format!("seed {seed}, {c:?}, first {first:#x}, count {count}");
                    let mut ours = plain.clone();
                    c.encrypt(&mut ours, first).unwrap();
                    assert!(ours != plain, "{ctx}: encryption changed nothing");
                    assert!(ours == want, "{ctx}: differs from OpenSSL and xts-mode");
                    let mut out = vec![0x5au8; plain.len()];
                    c.encrypt_to(&plain, &mut out, first).unwrap();
                    assert!(out == want, "{ctx}: encrypt_to differs from OpenSSL");
                }
            }
        }
    }
}

#[test]
fn decrypt_inverts_openssl_and_xts_mode() {
    let seed = seed();
    for sector in [512usize, 4096] {
        for (case, first) in firsts(seed).into_iter().enumerate() {
            for count in COUNTS {
                let s = seed.wrapping_add((case * 7919 + count * 31 + sector) as u64);
                let (raw, vk) = key(s);
                let plain = common::pseudo_random(s ^ 0x1dea, sector * count);
                let ctx = format!("seed {seed}, sector {sector}, first {first:#x}, count {count}");
                let ct = openssl(&raw, first, &plain, sector, Mode::Encrypt);
                for c in ciphers(&vk, sector) {
                    let mut ours = ct.clone();
                    c.decrypt(&mut ours, first).unwrap();
                    assert!(
                        ours == plain,
                        "{ctx}, {c:?}: does not decrypt OpenSSL's ciphertext"
                    );
                }
                assert!(
                    plain == xts_mode(&raw, first, &ct, sector, false),
                    "{ctx}: xts-mode decryption differs (oracle self-check)"
                );
                assert!(
                    openssl(&raw, first, &ct, sector, Mode::Decrypt) == plain,
                    "{ctx}: OpenSSL round trip (oracle self-check)"
                );
            }
        }
    }
}

#[test]
fn sectors_past_2_pow_32_do_not_wrap() {
    // Sector 2^32 + 5 must not be encrypted like sector 5 (a 32-bit IV would wrap).
    let (_, vk) = key(seed());
    for c in ciphers(&vk, 4096) {
        let plain = common::pseudo_random(42, 4096);
        let mut low = plain.clone();
        let mut high = plain.clone();
        c.encrypt(&mut low, 5).unwrap();
        c.encrypt(&mut high, (1 << 32) + 5).unwrap();
        assert_ne!(low, high, "{c:?}");
    }
}

#[test]
fn benchmark_prints_the_documented_json() {
    let out = std::process::Command::new(common::bin())
        .args(["benchmark", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    // serde_json's map is sorted here; the field order is checked on the raw text below.
    assert_eq!(keys.len(), 5, "{text}");
    assert!(
        text.starts_with(
            r#"{"cipher":"aes-xts","key_bits":512,"sector_size":4096,"encrypt_mib_s":"#
        ),
        "{text}"
    );
    assert!(text.contains(r#","decrypt_mib_s":"#), "{text}");
    assert!(v["encrypt_mib_s"].as_f64().unwrap() > 0.0);
    assert!(v["decrypt_mib_s"].as_f64().unwrap() > 0.0);
}
