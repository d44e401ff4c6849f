//! AES-256-XTS (IEEE 1619) over whole sectors, as dm-crypt's `aes-xts-plain64` with
//! `--iv-large-sectors`: data unit = one sector, tweak = sector index as a 128-bit
//! little-endian integer.
//!
//! Owns the public sector cipher ([`SectorCipher`]: argument checks, errors, the choice of
//! kernel at construction) and the portable kernel. Two kernels, chosen once per cipher:
//! - on x86_64 with avx2, vaes, aes and vpclmulqdq (e.g. AMD Zen 3), `super::vaes` (VAES
//!   on 256-bit registers, 16 blocks per iteration; it owns its own round keys);
//! - everywhere else, the portable kernel below, on the `aes` crate's key schedules.
//!
//! The portable kernel runs inside the `aes` crate's backend (`encrypt_with_backend`), so
//! it is fed the widest parallel block API the CPU has (AES-NI 8 blocks; the crate's VAES
//! backends need AVX-512), detected at run time: the start tweaks of up to
//! [`TWEAK_BATCH`] sectors are encrypted in one parallel call, then the data blocks of all
//! those sectors flow through the backend in groups of its parallel width, each group's tweaks generated on the fly by
//! doubling in GF(2^128), XORed in place before and after. Only the last group of a
//! buffer is padded, never a serial tail per sector.
//! `xts-mode` and OpenSSL are the test oracles that prove the default kernel equal to the
//! standard (tests/xts_oracle.rs, which also runs the portable one); the IEEE 1619 vectors
//! are checked below against both kernels, and the two kernels against each other.

use aes::Aes256;
use aes::cipher::typenum::Unsigned;
use aes::cipher::{
    Array, BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt, BlockCipherEncBackend,
    BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, KeyInit, ParBlocks, consts::U16,
};

use super::key::VolumeKey;

/// AES block.
type Block = Array<u8, U16>;

/// Sectors whose start tweaks are computed in one parallel call (and whose data blocks
/// then flow through the backend as one stream).
const TWEAK_BATCH: usize = 64;
/// Widest parallel block count of any backend we drive (VAES-512: 64).
const MAX_PAR: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XtsError {
    #[error("sector size {0} is not supported (512 or 4096)")]
    SectorSize(usize),
    #[error("buffer of {len} bytes is not a whole number of {sector_size}-byte sectors")]
    Misaligned { len: usize, sector_size: usize },
}

/// The per-volume sector cipher. Built from a [`VolumeKey`]; the expanded AES key
/// schedules zeroize on drop (the `aes` crate's `zeroize` feature, and `VaesXts`'s own).
pub struct SectorCipher {
    kernel: Kernel,
    sector_size: usize,
}

/// The XTS kernel a cipher runs, chosen once at construction.
enum Kernel {
    /// VAES on ymm registers (x86_64 with avx2, vaes, aes and vpclmulqdq).
    #[cfg(target_arch = "x86_64")]
    Vaes(Box<super::vaes::VaesXts>),
    /// The `aes` crate's backend (AES-NI, or its software fallback).
    Portable(Box<Portable>),
}

/// The portable kernel's key schedules.
struct Portable {
    data: Aes256,
    tweak: Aes256,
}

impl std::fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SectorCipher(aes-xts-plain64, sector {}, {})",
            self.sector_size,
            self.kernel_name()
        )
    }
}

/// Tweak arithmetic on one 128-bit lane. On x86_64 the tweak lives in an SSE register
/// (SSE2 is part of the baseline target, so this needs no run-time detection): doubling is
/// OpenSSL's shuffle/shift/mask sequence and XOR is one `pxor`, so tweaks never bounce
/// through general registers between the AES rounds. `super::vaes` uses the doubling for
/// the first tweaks of each sector.
#[cfg(target_arch = "x86_64")]
pub(super) mod lane {
    use super::Block;
    use core::arch::x86_64::{
        __m128i, _mm_add_epi64, _mm_and_si128, _mm_loadu_si128, _mm_set_epi32, _mm_set_epi64x,
        _mm_shuffle_epi32, _mm_srai_epi32, _mm_storeu_si128, _mm_xor_si128,
    };

    pub type Tweak = __m128i;

    #[inline(always)]
    pub fn from_u128(v: u128) -> Tweak {
        // SAFETY: SSE2 is part of the x86_64 baseline target; no memory is touched.
        unsafe { _mm_set_epi64x((v >> 64) as i64, v as i64) }
    }

    #[inline(always)]
    pub fn zero() -> Tweak {
        from_u128(0)
    }

    /// Multiplies by alpha in GF(2^128), IEEE 1619 little-endian convention.
    #[inline(always)]
    pub fn mul_alpha(t: Tweak) -> Tweak {
        // Top bit of each 64-bit half, broadcast over its dword pair, masked into the
        // carry each half receives: 0x87 into the low half, 1 into the high half.
        // SAFETY: SSE2 is part of the x86_64 baseline target; registers only.
        unsafe {
            let m = _mm_srai_epi32::<31>(_mm_shuffle_epi32::<0x5f>(t));
            let m = _mm_and_si128(m, _mm_set_epi32(0, 1, 0, 0x87));
            _mm_xor_si128(_mm_add_epi64(t, t), m)
        }
    }

    /// `b ^= t`.
    #[inline(always)]
    pub fn xor_into(b: &mut Block, t: Tweak) {
        let p = b.as_mut_ptr().cast::<__m128i>();
        // SAFETY: a Block is exactly 16 initialized bytes, borrowed mutably here; the
        // unaligned load/store intrinsics have no alignment requirement; SSE2 is part of
        // the x86_64 baseline target.
        unsafe { _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), t)) }
    }
}

/// Portable tweak arithmetic on `u128` for other architectures.
#[cfg(not(target_arch = "x86_64"))]
pub(super) mod lane {
    use super::Block;

    pub type Tweak = u128;

    #[inline(always)]
    pub fn from_u128(v: u128) -> Tweak {
        v
    }

    #[inline(always)]
    pub fn zero() -> Tweak {
        0
    }

    #[inline(always)]
    pub fn mul_alpha(t: Tweak) -> Tweak {
        let carry = (t >> 127) as u64;
        (t << 1) ^ (0x87 & carry.wrapping_neg()) as u128
    }

    #[inline(always)]
    pub fn xor_into(b: &mut Block, t: Tweak) {
        b.0 = (u128::from_le_bytes(b.0) ^ t).to_le_bytes();
    }
}

use lane::{Tweak, mul_alpha, xor_into};

/// Yields the tweak of every block of consecutive sectors, given each sector's start
/// tweak (E_K2(index)).
struct Tweaks<'a> {
    starts: &'a [Tweak],
    per_sector: usize,
    next_sector: usize,
    left: usize,
    t: Tweak,
}

impl<'a> Tweaks<'a> {
    fn new(starts: &'a [Tweak], per_sector: usize) -> Self {
        Self {
            starts,
            per_sector,
            next_sector: 0,
            left: 0,
            t: lane::zero(),
        }
    }

    #[inline(always)]
    fn next(&mut self) -> Tweak {
        if self.left == 0 {
            self.t = self.starts[self.next_sector];
            self.next_sector += 1;
            self.left = self.per_sector;
        }
        let r = self.t;
        self.t = mul_alpha(self.t);
        self.left -= 1;
        r
    }
}

/// One XTS pass over whole sectors, run with whichever backend the CPU offers. With
/// `src`, the input is read from there and `blocks` is output only: the copy is fused into
/// the first tweak XOR, so the data crosses memory once.
struct Pass<'a> {
    blocks: &'a mut [Block],
    src: Option<&'a [Block]>,
    starts: &'a [Tweak],
    per_sector: usize,
}

impl Pass<'_> {
    /// XOR tweaks, transform in parallel groups of `B`'s width, XOR tweaks again.
    #[inline(always)]
    fn run<B: BlockSizeUser<BlockSize = U16> + aes::cipher::ParBlocksSizeUser>(
        self,
        mut par: impl FnMut(&mut ParBlocks<B>),
    ) {
        let p = B::ParBlocksSize::USIZE;
        assert!(p <= MAX_PAR, "backend wider than {MAX_PAR} blocks");
        let mut tw = Tweaks::new(self.starts, self.per_sector);
        let mut tweaks = [lane::zero(); MAX_PAR];
        let (groups, tail) = ParBlocks::<B>::slice_as_chunks_mut(self.blocks);
        let mut src = self.src.map(|s| s.chunks_exact(p));
        for group in groups {
            if let Some(s) = src.as_mut() {
                group.copy_from_slice(s.next().expect("src as long as dst"));
            }
            for (b, t) in group.iter_mut().zip(tweaks.iter_mut()) {
                *t = tw.next();
                xor_into(b, *t);
            }
            par(group);
            for (b, t) in group.iter_mut().zip(tweaks.iter()) {
                xor_into(b, *t);
            }
        }
        if tail.is_empty() {
            return;
        }
        if let Some(s) = src {
            tail.copy_from_slice(s.remainder());
        }
        // The last, short group: padded to the parallel width (one wide call beats a
        // serial run of single blocks); the padding is never written back.
        let mut pad = ParBlocks::<B>::default();
        for ((b, t), d) in tail.iter().zip(tweaks.iter_mut()).zip(pad.iter_mut()) {
            *t = tw.next();
            *d = *b;
            xor_into(d, *t);
        }
        par(&mut pad);
        for ((b, t), d) in tail.iter_mut().zip(tweaks.iter()).zip(pad.iter()) {
            *b = *d;
            xor_into(b, *t);
        }
    }
}

struct EncPass<'a>(Pass<'a>);
struct DecPass<'a>(Pass<'a>);

impl BlockSizeUser for EncPass<'_> {
    type BlockSize = U16;
}
impl BlockSizeUser for DecPass<'_> {
    type BlockSize = U16;
}

impl BlockCipherEncClosure for EncPass<'_> {
    #[inline(always)]
    fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
        self.0.run::<B>(|g| backend.encrypt_par_blocks_inplace(g));
    }
}

impl BlockCipherDecClosure for DecPass<'_> {
    #[inline(always)]
    fn call<B: BlockCipherDecBackend<BlockSize = U16>>(self, backend: &B) {
        self.0.run::<B>(|g| backend.decrypt_par_blocks_inplace(g));
    }
}

impl SectorCipher {
    /// The fastest kernel this CPU runs: VAES when it has avx2, vaes, aes and vpclmulqdq,
    /// else the portable one.
    pub fn new(key: &VolumeKey, sector_size: usize) -> Result<Self, XtsError> {
        Self::check_sector_size(sector_size)?;
        #[cfg(target_arch = "x86_64")]
        if let Some(v) = super::vaes::VaesXts::new(key.data_half(), key.tweak_half()) {
            return Ok(Self {
                kernel: Kernel::Vaes(v),
                sector_size,
            });
        }
        Self::new_portable(key, sector_size)
    }

    /// The portable kernel (the `aes` crate's backend) whatever the CPU: for tests and
    /// benchmarks that compare the kernels.
    #[doc(hidden)]
    pub fn new_portable(key: &VolumeKey, sector_size: usize) -> Result<Self, XtsError> {
        Self::check_sector_size(sector_size)?;
        Ok(Self {
            kernel: Kernel::Portable(Box::new(Portable {
                data: Aes256::new(key.data_half().into()),
                tweak: Aes256::new(key.tweak_half().into()),
            })),
            sector_size,
        })
    }

    /// Which kernel this cipher runs: `"vaes"` or `"portable"`.
    #[doc(hidden)]
    pub fn kernel_name(&self) -> &'static str {
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Vaes(_) => "vaes",
            Kernel::Portable(_) => "portable",
        }
    }

    fn check_sector_size(sector_size: usize) -> Result<(), XtsError> {
        if sector_size != 512 && sector_size != 4096 {
            return Err(XtsError::SectorSize(sector_size));
        }
        Ok(())
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
        self.crypt(buf, first_sector, true);
        Ok(())
    }

    /// Encrypts `src` into `dst` (same length, whole sectors, the first being sector
    /// `first_sector`), reading each byte of `src` once: a write path needs no separate
    /// copy into its output buffer.
    pub fn encrypt_to(
        &self,
        src: &[u8],
        dst: &mut [u8],
        first_sector: u64,
    ) -> Result<(), XtsError> {
        self.check(src)?;
        assert_eq!(
            src.len(),
            dst.len(),
            "encrypt_to: src and dst lengths differ"
        );
        match &self.kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Vaes(v) => v.encrypt_to(src, dst, first_sector, self.sector_size),
            Kernel::Portable(p) => {
                let (src_blocks, rest) = Block::slice_as_chunks(src);
                debug_assert!(rest.is_empty());
                self.crypt_blocks(p, dst, Some(src_blocks), first_sector, true);
            }
        }
        Ok(())
    }

    /// Decrypts `buf` in place: whole sectors, the first being sector `first_sector`.
    pub fn decrypt(&self, buf: &mut [u8], first_sector: u64) -> Result<(), XtsError> {
        self.check(buf)?;
        self.crypt(buf, first_sector, false);
        Ok(())
    }

    fn crypt(&self, buf: &mut [u8], first_sector: u64, encrypt: bool) {
        match &self.kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Vaes(v) if encrypt => v.encrypt(buf, first_sector, self.sector_size),
            #[cfg(target_arch = "x86_64")]
            Kernel::Vaes(v) => v.decrypt(buf, first_sector, self.sector_size),
            Kernel::Portable(p) => self.crypt_blocks(p, buf, None, first_sector, encrypt),
        }
    }

    /// The portable kernel.
    fn crypt_blocks(
        &self,
        Portable { data, tweak }: &Portable,
        buf: &mut [u8],
        src: Option<&[Block]>,
        first_sector: u64,
        encrypt: bool,
    ) {
        let per_sector = self.sector_size / 16;
        let (blocks, rest) = Block::slice_as_chunks_mut(buf);
        debug_assert!(rest.is_empty());
        let mut index = first_sector;
        let mut src_chunks = src.map(|s| s.chunks(TWEAK_BATCH * per_sector));
        for chunk in blocks.chunks_mut(TWEAK_BATCH * per_sector) {
            let n = chunk.len() / per_sector;
            let mut starts = [Block::default(); TWEAK_BATCH];
            for (k, s) in starts[..n].iter_mut().enumerate() {
                *s = Block::from((index.wrapping_add(k as u64) as u128).to_le_bytes());
            }
            tweak.encrypt_blocks(&mut starts[..n]);
            let mut start_tweaks = [lane::zero(); TWEAK_BATCH];
            for (t, s) in start_tweaks.iter_mut().zip(&starts[..n]) {
                *t = lane::from_u128(u128::from_le_bytes(s.0));
            }
            index = index.wrapping_add(n as u64);
            let pass = Pass {
                blocks: chunk,
                src: src_chunks
                    .as_mut()
                    .map(|s| s.next().expect("src as long as dst")),
                starts: &start_tweaks[..n],
                per_sector,
            };
            if encrypt {
                data.encrypt_with_backend(EncPass(pass));
            } else {
                data.decrypt_with_backend(DecPass(pass));
            }
        }
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

    /// Every kernel this CPU runs: the default one (VAES where the CPU has it) and the
    /// portable one.
    fn kernels(key: &VolumeKey, sector: usize) -> [SectorCipher; 2] {
        [
            SectorCipher::new(key, sector).unwrap(),
            SectorCipher::new_portable(key, sector).unwrap(),
        ]
    }

    fn v10_ciphers() -> [SectorCipher; 2] {
        let key = VolumeKey::from_bytes(&hex(&format!("{K1}{K2}"))).unwrap();
        kernels(&key, 512)
    }

    fn v10_plaintext() -> Vec<u8> {
        (0..512).map(|i| (i % 256) as u8).collect()
    }

    #[test]
    fn ieee1619_vector_10_encrypts() {
        for c in v10_ciphers() {
            let mut buf = v10_plaintext();
            c.encrypt(&mut buf, 0xff).unwrap();
            assert_eq!(buf, hex(V10_CT), "{c:?}");
            let mut out = vec![0u8; 512];
            c.encrypt_to(&v10_plaintext(), &mut out, 0xff).unwrap();
            assert_eq!(out, hex(V10_CT), "{c:?} encrypt_to");
        }
    }

    #[test]
    fn ieee1619_vector_10_decrypts() {
        for c in v10_ciphers() {
            let mut buf = hex(V10_CT);
            c.decrypt(&mut buf, 0xff).unwrap();
            assert_eq!(buf, v10_plaintext(), "{c:?}");
        }
    }

    /// Vector 11 (data unit 0xffff): first 32 bytes of the ciphertext.
    #[test]
    fn ieee1619_vector_11_prefix() {
        for c in v10_ciphers() {
            let mut buf = v10_plaintext();
            c.encrypt(&mut buf, 0xffff).unwrap();
            assert_eq!(
                buf[..32],
                hex("77a31251618a15e6b92d1d66dffe7b50b50bad552305ba0217a610688eff7e11")[..],
                "{c:?}"
            );
        }
    }

    #[test]
    fn refuses_partial_sectors_and_odd_sizes() {
        for c in v10_ciphers() {
            let mut buf = vec![0u8; 700];
            assert!(matches!(
                c.encrypt(&mut buf, 0),
                Err(XtsError::Misaligned { .. })
            ));
            assert!(matches!(
                c.decrypt(&mut buf, 0),
                Err(XtsError::Misaligned { .. })
            ));
        }
        let key = VolumeKey::generate();
        assert_eq!(
            SectorCipher::new(&key, 1024).unwrap_err(),
            XtsError::SectorSize(1024)
        );
        assert_eq!(
            SectorCipher::new_portable(&key, 1024).unwrap_err(),
            XtsError::SectorSize(1024)
        );
    }

    #[test]
    fn encrypt_to_equals_in_place_at_every_length() {
        let key = VolumeKey::generate();
        for sector in [512, 4096] {
            for c in kernels(&key, sector) {
                // Past TWEAK_BATCH sectors, and lengths whose last group is short.
                for sectors in [1, 2, 3, 7, 15, 16, 17, 63, 64, 65, 130] {
                    let plain: Vec<u8> = (0..sector * sectors)
                        .map(|i| (i * 13 % 241) as u8)
                        .collect();
                    let mut in_place = plain.clone();
                    c.encrypt(&mut in_place, 9).unwrap();
                    let mut out = vec![0xAAu8; plain.len()];
                    c.encrypt_to(&plain, &mut out, 9).unwrap();
                    assert_eq!(out, in_place, "{c:?}, {sectors} sectors");
                }
            }
        }
        let mut odd = vec![0u8; 700];
        assert!(c_err(&key, &mut odd));
    }

    fn c_err(key: &VolumeKey, dst: &mut [u8]) -> bool {
        kernels(key, 512).iter().all(|c| {
            matches!(
                c.encrypt_to(&vec![0u8; dst.len()], dst, 0),
                Err(XtsError::Misaligned { .. })
            )
        })
    }

    #[test]
    fn multi_sector_buffer_equals_sector_by_sector() {
        let key = VolumeKey::generate();
        for c in kernels(&key, 4096) {
            let plain: Vec<u8> = (0..4096 * 3).map(|i| (i * 7 % 251) as u8).collect();
            let mut whole = plain.clone();
            c.encrypt(&mut whole, 41).unwrap();
            for s in 0..3 {
                let mut one = plain[s * 4096..(s + 1) * 4096].to_vec();
                c.encrypt(&mut one, 41 + s as u64).unwrap();
                assert_eq!(one, whole[s * 4096..(s + 1) * 4096], "{c:?}");
            }
        }
    }

    /// The VAES kernel and the portable one agree on random keys and data at many
    /// lengths and sector indexes (start-tweak batch boundaries, u64 wrap-around), in
    /// all three operations.
    #[test]
    fn vaes_and_portable_kernels_agree() {
        #[cfg(target_arch = "x86_64")]
        let vaes = super::super::vaes::VaesXts::supported();
        #[cfg(not(target_arch = "x86_64"))]
        let vaes = false;
        if !vaes {
            eprintln!(
                "note: this CPU lacks avx2/vaes/aes/vpclmulqdq; only the portable kernel runs"
            );
            return;
        }
        let mut seed = [0u8; 8];
        super::super::fill_random(&mut seed);
        let mut state = u64::from_le_bytes(seed) | 1;
        let mut next = move || {
            // xorshift64*: reproducible from the printed seed.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let seed = u64::from_le_bytes(seed);
        for sector in [512usize, 4096] {
            for sectors in [1, 2, 3, 5, 15, 16, 17, 31, 33, 65, 100] {
                let key = VolumeKey::generate();
                let [fast, portable] = kernels(&key, sector);
                assert_eq!(fast.kernel_name(), "vaes");
                assert_eq!(portable.kernel_name(), "portable");
                let plain: Vec<u8> = (0..sector * sectors).map(|_| next() as u8).collect();
                for first in [0, next() >> 1, u64::MAX - 3, u64::MAX - 20] {
                    let ctx = format!(
                        "seed {seed:#x}, sector {sector}, {sectors} sectors, first {first:#x}"
                    );
                    let mut a = plain.clone();
                    let mut b = plain.clone();
                    fast.encrypt(&mut a, first).unwrap();
                    portable.encrypt(&mut b, first).unwrap();
                    assert!(a == b, "{ctx}: encrypt differs");
                    let mut to = vec![0u8; plain.len()];
                    fast.encrypt_to(&plain, &mut to, first).unwrap();
                    assert!(to == b, "{ctx}: encrypt_to differs");
                    fast.decrypt(&mut a, first).unwrap();
                    portable.decrypt(&mut b, first).unwrap();
                    assert!(a == plain && b == plain, "{ctx}: decrypt differs");
                    // Decrypting random data (not ciphertext) too.
                    let mut a = plain.clone();
                    let mut b = plain.clone();
                    fast.decrypt(&mut a, first).unwrap();
                    portable.decrypt(&mut b, first).unwrap();
                    assert!(a == b, "{ctx}: decrypt of random data differs");
                }
            }
        }
    }
}
