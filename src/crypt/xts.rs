//! AES-256-XTS (IEEE 1619) over whole sectors, as dm-crypt's `aes-xts-plain64` with
//! `--iv-large-sectors`: data unit = one sector, tweak = sector index as a 128-bit
//! little-endian integer.
//!
//! The transform is batched: for each sector all tweaks are computed first (one AES of the
//! sector index, then multiplications by alpha), then the whole sector goes through the
//! `aes` crate's parallel block API in one call, which keeps AES-NI pipelines full.
//! `xts-mode` and OpenSSL are the test oracles that prove this equal to the standard.

use aes::Aes256;
use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};

use super::key::VolumeKey;

/// AES block.
type Block = Array<u8, aes::cipher::consts::U16>;

/// Largest sector size the batch buffers hold.
const MAX_SECTOR: usize = 4096;
const MAX_BLOCKS: usize = MAX_SECTOR / 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XtsError {
    #[error("sector size {0} is not supported (512 or 4096)")]
    SectorSize(usize),
    #[error("buffer of {len} bytes is not a whole number of {sector_size}-byte sectors")]
    Misaligned { len: usize, sector_size: usize },
}

/// The per-volume sector cipher. Built from a [`VolumeKey`]; the expanded AES key
/// schedules zeroize on drop (the `aes` crate's `zeroize` feature).
pub struct SectorCipher {
    data: Aes256,
    tweak: Aes256,
    sector_size: usize,
}

impl std::fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SectorCipher(aes-xts-plain64, sector {})",
            self.sector_size
        )
    }
}

/// Multiplies a tweak by alpha in GF(2^128), little-endian convention of IEEE 1619.
#[inline(always)]
fn mul_alpha(t: u128) -> u128 {
    let carry = (t >> 127) as u8;
    (t << 1) ^ (0x87 * carry as u128)
}

impl SectorCipher {
    pub fn new(key: &VolumeKey, sector_size: usize) -> Result<Self, XtsError> {
        if sector_size != 512 && sector_size != 4096 {
            return Err(XtsError::SectorSize(sector_size));
        }
        Ok(Self {
            data: Aes256::new(key.data_half().into()),
            tweak: Aes256::new(key.tweak_half().into()),
            sector_size,
        })
    }

    pub fn sector_size(&self) -> usize {
        self.sector_size
    }

    fn check(&self, buf: &[u8]) -> Result<(), XtsError> {
        if !buf.len().is_multiple_of(self.sector_size) {
            return Err(XtsError::Misaligned {
                len: buf.len(),
                sector_size: self.sector_size,
            });
        }
        Ok(())
    }

    /// Encrypts `buf` in place: whole sectors, the first being sector `first_sector`.
    pub fn encrypt(&self, buf: &mut [u8], first_sector: u64) -> Result<(), XtsError> {
        self.check(buf)?;
        for (i, sector) in buf.chunks_exact_mut(self.sector_size).enumerate() {
            self.crypt_sector(sector, first_sector.wrapping_add(i as u64), true);
        }
        Ok(())
    }

    /// Decrypts `buf` in place: whole sectors, the first being sector `first_sector`.
    pub fn decrypt(&self, buf: &mut [u8], first_sector: u64) -> Result<(), XtsError> {
        self.check(buf)?;
        for (i, sector) in buf.chunks_exact_mut(self.sector_size).enumerate() {
            self.crypt_sector(sector, first_sector.wrapping_add(i as u64), false);
        }
        Ok(())
    }

    fn crypt_sector(&self, sector: &mut [u8], index: u64, encrypt: bool) {
        let n = sector.len() / 16;
        let mut tweaks = [0u128; MAX_BLOCKS];
        let mut t = Block::from((index as u128).to_le_bytes());
        self.tweak.encrypt_block(&mut t);
        let mut t = u128::from_le_bytes(t.into());
        for slot in tweaks[..n].iter_mut() {
            *slot = t;
            t = mul_alpha(t);
        }
        let (blocks, rest) = Block::slice_as_chunks_mut(sector);
        debug_assert!(rest.is_empty());
        xor_tweaks(blocks, &tweaks[..n]);
        if encrypt {
            self.data.encrypt_blocks(blocks);
        } else {
            self.data.decrypt_blocks(blocks);
        }
        xor_tweaks(blocks, &tweaks[..n]);
    }
}

#[inline(always)]
fn xor_tweaks(blocks: &mut [Block], tweaks: &[u128]) {
    for (b, t) in blocks.iter_mut().zip(tweaks) {
        let v = u128::from_le_bytes((*b).into()) ^ t;
        *b = Block::from(v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const K1: &str = "2718281828459045235360287471352662497757247093699959574966967627";
    const K2: &str = "3141592653589793238462643383279502884197169399375105820974944592";

    /// IEEE 1619-2007 Annex B, XTS-AES-256 vector 10: data unit 0xff, 512 bytes.
    const V10_CT: &str = "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed43851ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151";

    fn v10_cipher() -> SectorCipher {
        let key = VolumeKey::from_bytes(&hex(&format!("{K1}{K2}"))).unwrap();
        SectorCipher::new(&key, 512).unwrap()
    }

    fn v10_plaintext() -> Vec<u8> {
        (0..512).map(|i| (i % 256) as u8).collect()
    }

    #[test]
    fn ieee1619_vector_10_encrypts() {
        let mut buf = v10_plaintext();
        v10_cipher().encrypt(&mut buf, 0xff).unwrap();
        assert_eq!(buf, hex(V10_CT));
    }

    #[test]
    fn ieee1619_vector_10_decrypts() {
        let mut buf = hex(V10_CT);
        v10_cipher().decrypt(&mut buf, 0xff).unwrap();
        assert_eq!(buf, v10_plaintext());
    }

    /// Vector 11 (data unit 0xffff): first 32 bytes of the ciphertext.
    #[test]
    fn ieee1619_vector_11_prefix() {
        let mut buf = v10_plaintext();
        v10_cipher().encrypt(&mut buf, 0xffff).unwrap();
        assert_eq!(
            buf[..32],
            hex("77a31251618a15e6b92d1d66dffe7b50b50bad552305ba0217a610688eff7e11")[..]
        );
    }

    #[test]
    fn refuses_partial_sectors_and_odd_sizes() {
        let c = v10_cipher();
        let mut buf = vec![0u8; 700];
        assert!(matches!(
            c.encrypt(&mut buf, 0),
            Err(XtsError::Misaligned { .. })
        ));
        let key = VolumeKey::generate();
        assert_eq!(
            SectorCipher::new(&key, 1024).unwrap_err(),
            XtsError::SectorSize(1024)
        );
    }

    #[test]
    fn multi_sector_buffer_equals_sector_by_sector() {
        let key = VolumeKey::generate();
        let c = SectorCipher::new(&key, 4096).unwrap();
        let plain: Vec<u8> = (0..4096 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut whole = plain.clone();
        c.encrypt(&mut whole, 41).unwrap();
        for s in 0..3 {
            let mut one = plain[s * 4096..(s + 1) * 4096].to_vec();
            c.encrypt(&mut one, 41 + s as u64).unwrap();
            assert_eq!(one, whole[s * 4096..(s + 1) * 4096]);
        }
    }
}
