//! The AES-256-XTS kernel on VAES over 256-bit registers (AVX2 + VAES + VPCLMULQDQ, no
//! AVX-512), for CPUs such as AMD Zen 3 that run `vaesenc ymm` (two blocks) as fast as
//! `aesenc xmm`, about twice the blocks per cycle of the `aes` crate's AES-NI backend.
//!
//! Owns its own AES-256 round keys: the encryption schedules of the data and the tweak
//! halves of the volume key and the inverse-mix-columns (equivalent inverse cipher)
//! schedule of the data half for decryption, each round key stored broadcast into both
//! 128-bit lanes, zeroized on drop and never printed. Owns the XTS arithmetic of this path:
//! start tweaks of up to [`START_BATCH`] sectors encrypted together, then each sector's
//! data in groups of 16 blocks held in 8 ymm registers (2 blocks each), the rounds kept
//! in lockstep across the 8 registers (see [`lockstep`]), the tweaks of the next group
//! computed directly in ymm by multiplying each register by alpha^16 (a byte shift and one
//! carry-less multiply: 8 independent chains, no serial doubling). The input is read once
//! (with a separate source, the copy is fused into the first tweak XOR) and the last AES
//! round XORs the tweak in with its round key.
//!
//! Does not own the public API, argument checks or the choice of kernel: `xts`
//! ([`super::xts::SectorCipher`]) builds this kernel only when [`VaesXts::new`] finds
//! avx2, vaes, aes and vpclmulqdq on the CPU (every CPU with VAES so far has VPCLMULQDQ)
//! and otherwise keeps the portable `aes`-crate path.
//! Sector sizes are multiples of 256 bytes (512 or 4096, checked by `xts`).

use core::arch::x86_64::{
    __m128i, __m256i, _mm_aesimc_si128, _mm_aeskeygenassist_si128, _mm_loadu_si128,
    _mm_setzero_si128, _mm_shuffle_epi32, _mm_slli_si128, _mm_storeu_si128, _mm_xor_si128,
    _mm256_aesdec_epi128, _mm256_aesdeclast_epi128, _mm256_aesenc_epi128, _mm256_aesenclast_epi128,
    _mm256_bslli_epi128, _mm256_bsrli_epi128, _mm256_castsi256_si128, _mm256_clmulepi64_epi128,
    _mm256_extracti128_si256, _mm256_loadu_si256, _mm256_set_epi64x, _mm256_set_m128i,
    _mm256_setzero_si256, _mm256_storeu_si256, _mm256_xor_si256,
};

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::xts::lane::mul_alpha;

/// AES-256 rounds; a schedule has `ROUNDS + 1` round keys.
const ROUNDS: usize = 14;
/// ymm registers of data per iteration.
const REGS: usize = 8;
/// Bytes per iteration: 16 blocks.
const GROUP: usize = REGS * 32;
/// Sectors whose start tweaks are encrypted together (2 per ymm register).
const START_BATCH: usize = 2 * REGS;

/// One AES-256 key schedule, each round key repeated in both 128-bit lanes.
#[derive(Zeroize)]
#[repr(C, align(32))]
struct Schedule([[u8; 32]; ROUNDS + 1]);

impl Schedule {
    const ZERO: Self = Self([[0; 32]; ROUNDS + 1]);

    fn set(&mut self, round: usize, key: __m128i) {
        let [lo, hi] = self.0[round].as_chunks_mut::<16>().0 else {
            unreachable!("32 bytes are two 16-byte halves")
        };
        for half in [lo, hi] {
            // SAFETY: `half` is 16 writable bytes borrowed exclusively; the unaligned
            // store has no alignment requirement; SSE2 is part of the x86_64 baseline.
            unsafe { _mm_storeu_si128(half.as_mut_ptr().cast(), key) }
        }
    }
}

/// XTS-AES-256 key material for the VAES kernel. Exists only on a CPU with avx2, vaes, aes
/// and vpclmulqdq (see [`VaesXts::new`]), which is what makes its methods sound to call.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(super) struct VaesXts {
    /// Data half, encryption schedule.
    enc: Schedule,
    /// Data half, equivalent inverse cipher schedule (aesimc of the middle round keys).
    dec: Schedule,
    /// Tweak half, encryption schedule.
    tweak: Schedule,
}

impl std::fmt::Debug for VaesXts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaesXts(..)")
    }
}

impl VaesXts {
    /// Whether this CPU can run the kernel.
    pub(super) fn supported() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("vaes")
            && is_x86_feature_detected!("aes")
            && is_x86_feature_detected!("vpclmulqdq")
    }

    /// Expands both halves of an XTS-AES-256 key, or `None` when the CPU lacks one of
    /// avx2, vaes, aes, vpclmulqdq. Boxed and expanded in place, so no copy of the schedules is left in
    /// a moved-from stack slot.
    pub(super) fn new(data_key: &[u8; 32], tweak_key: &[u8; 32]) -> Option<Box<Self>> {
        if !Self::supported() {
            return None;
        }
        let mut this = Box::new(Self {
            enc: Schedule::ZERO,
            dec: Schedule::ZERO,
            tweak: Schedule::ZERO,
        });
        let Self { enc, dec, tweak } = &mut *this;
        // SAFETY: the CPU supports aes, checked just above.
        unsafe {
            expand(data_key, enc, Some(dec));
            expand(tweak_key, tweak, None);
        }
        Some(this)
    }

    /// Encrypts whole sectors in place, the first being sector `first`.
    pub(super) fn encrypt(&self, buf: &mut [u8], first: u64, sector_size: usize) {
        // SAFETY: the CPU supports avx2, vaes, aes and vpclmulqdq: a VaesXts exists only
        // after `new` detected them.
        unsafe { self.crypt::<true>(None, buf, first, sector_size) }
    }

    /// Encrypts whole sectors of `src` into `dst` (same length), reading `src` once.
    pub(super) fn encrypt_to(&self, src: &[u8], dst: &mut [u8], first: u64, sector_size: usize) {
        assert_eq!(src.len(), dst.len(), "src and dst lengths differ");
        // SAFETY: the CPU supports avx2, vaes, aes and vpclmulqdq: a VaesXts exists only
        // after `new` detected them.
        unsafe { self.crypt::<true>(Some(src), dst, first, sector_size) }
    }

    /// Decrypts whole sectors in place, the first being sector `first`.
    pub(super) fn decrypt(&self, buf: &mut [u8], first: u64, sector_size: usize) {
        // SAFETY: the CPU supports avx2, vaes, aes and vpclmulqdq: a VaesXts exists only
        // after `new` detected them.
        unsafe { self.crypt::<false>(None, buf, first, sector_size) }
    }

    /// The XTS pass: `dst` holds whole sectors of `sector_size` (a multiple of
    /// [`GROUP`]); the input is `src` when given (same length), else `dst` itself.
    #[target_feature(enable = "avx2,vaes,aes,vpclmulqdq")]
    fn crypt<const ENC: bool>(
        &self,
        src: Option<&[u8]>,
        dst: &mut [u8],
        first: u64,
        sector_size: usize,
    ) {
        assert!(sector_size > 0 && sector_size.is_multiple_of(GROUP));
        assert!(dst.len().is_multiple_of(sector_size));
        let mut keys = load_schedule(if ENC { &self.enc } else { &self.dec });
        let mut tweak_keys = load_schedule(&self.tweak);
        let batch = START_BATCH * sector_size;
        let mut index = first;
        for (b, dst_batch) in dst.chunks_mut(batch).enumerate() {
            let src_batch = src.map(|s| &s[b * batch..][..dst_batch.len()]);
            let starts = start_tweaks(&tweak_keys, index);
            index = index.wrapping_add(START_BATCH as u64);
            for (i, dst_sector) in dst_batch.chunks_exact_mut(sector_size).enumerate() {
                let src_sector = src_batch.map(|s| &s[i * sector_size..][..sector_size]);
                sector::<ENC>(&keys, starts[i], src_sector, dst_sector);
            }
        }
        // The round keys were copied to this stack frame (ymm spill slots aside).
        keys.zeroize();
        tweak_keys.zeroize();
    }
}

/// Loads a schedule's round keys into ymm registers (the compiler keeps what does not fit
/// in the stack frame and reloads it per round).
#[target_feature(enable = "avx2,vaes,aes,vpclmulqdq")]
#[inline]
fn load_schedule(s: &Schedule) -> [__m256i; ROUNDS + 1] {
    core::array::from_fn(|r| {
        // SAFETY: `s.0[r]` is 32 readable bytes; the unaligned load has no alignment
        // requirement; the CPU supports avx2 (this function's target feature).
        unsafe { _mm256_loadu_si256(s.0[r].as_ptr().cast()) }
    })
}

/// E_K2(index + k) for k in 0..START_BATCH, as 128-bit little-endian sector numbers
/// (the index wraps like the u64 it is).
#[target_feature(enable = "avx2,vaes,aes,vpclmulqdq")]
#[inline]
fn start_tweaks(k: &[__m256i; ROUNDS + 1], index: u64) -> [__m128i; START_BATCH] {
    let mut t: [__m256i; REGS] = core::array::from_fn(|j| {
        let lo = index.wrapping_add(2 * j as u64);
        let hi = index.wrapping_add(2 * j as u64 + 1);
        _mm256_xor_si256(_mm256_set_epi64x(0, hi as i64, 0, lo as i64), k[0])
    });
    for key in &k[1..ROUNDS] {
        lockstep(&mut t);
        for x in &mut t {
            *x = _mm256_aesenc_epi128(*x, *key);
        }
    }
    lockstep(&mut t);
    for x in &mut t {
        *x = _mm256_aesenclast_epi128(*x, k[ROUNDS]);
    }
    core::array::from_fn(|i| {
        let x = t[i / 2];
        if i % 2 == 0 {
            _mm256_castsi256_si128(x)
        } else {
            _mm256_extracti128_si256::<1>(x)
        }
    })
}

/// Multiplies both 128-bit lanes by alpha^(8 * BYTES) in GF(2^128) (IEEE 1619
/// little-endian convention): shift each lane left by BYTES bytes and fold the bits
/// shifted out (the top BYTES bytes, moved down by `SHR` = 16 - BYTES bytes; at most 16
/// bits) back in times x^128 = x^7 + x^2 + x + 1 with one carry-less multiply (at most 23
/// bits, so no second reduction).
#[target_feature(enable = "avx2,vaes,aes,vpclmulqdq")]
#[inline]
fn mul_alpha_bytes<const BYTES: i32, const SHR: i32>(t: __m256i) -> __m256i {
    debug_assert!(BYTES + SHR == 16 && BYTES <= 2);
    let c = _mm256_bsrli_epi128::<SHR>(t);
    let m = _mm256_clmulepi64_epi128::<0x00>(c, _mm256_set_epi64x(0, 0x87, 0, 0x87));
    _mm256_xor_si256(_mm256_bslli_epi128::<BYTES>(t), m)
}

/// One sector: tweaks T0..T15 from the start tweak by doubling, then per group of 16
/// blocks XOR, 14 rounds (the last one XORing the tweak in with its round key), and the
/// tweaks of the next group by alpha^16.
#[target_feature(enable = "avx2,vaes,aes,vpclmulqdq")]
#[inline]
fn sector<const ENC: bool>(
    k: &[__m256i; ROUNDS + 1],
    start: __m128i,
    src: Option<&[u8]>,
    dst: &mut [u8],
) {
    // T0..T7 by serial doubling, T8..T15 from them by alpha^8 (two short chains).
    let mut t = start;
    let mut tw = [_mm256_setzero_si256(); REGS];
    let (low, high) = tw.split_at_mut(REGS / 2);
    for (l, h) in low.iter_mut().zip(high) {
        let a = t;
        let b = mul_alpha(a);
        t = mul_alpha(b);
        *l = _mm256_set_m128i(b, a);
        *h = mul_alpha_bytes::<1, 15>(*l);
    }
    let src_groups = src.map(|s| s.as_chunks::<GROUP>().0);
    let (dst_groups, rest) = dst.as_chunks_mut::<GROUP>();
    debug_assert!(rest.is_empty());
    for (g, d) in dst_groups.iter_mut().enumerate() {
        if g > 0 {
            for x in &mut tw {
                *x = mul_alpha_bytes::<2, 14>(*x);
            }
        }
        let input: &[u8; GROUP] = match src_groups {
            Some(s) => &s[g],
            None => d,
        };
        let mut x: [__m256i; REGS] = core::array::from_fn(|j| {
            // SAFETY: `input` is GROUP = 32 * REGS readable bytes and j < REGS, so the 32
            // bytes at 32 * j are in bounds; the unaligned load has no alignment
            // requirement; the CPU supports avx2 (this function's target feature).
            let v = unsafe { _mm256_loadu_si256(input.as_ptr().add(32 * j).cast()) };
            _mm256_xor_si256(v, _mm256_xor_si256(tw[j], k[0]))
        });
        for key in &k[1..ROUNDS] {
            lockstep(&mut x);
            for v in &mut x {
                *v = if ENC {
                    _mm256_aesenc_epi128(*v, *key)
                } else {
                    _mm256_aesdec_epi128(*v, *key)
                };
            }
        }
        lockstep(&mut x);
        for (j, v) in x.iter().enumerate() {
            let last = _mm256_xor_si256(k[ROUNDS], tw[j]);
            let out = if ENC {
                _mm256_aesenclast_epi128(*v, last)
            } else {
                _mm256_aesdeclast_epi128(*v, last)
            };
            // SAFETY: `d` is GROUP = 32 * REGS writable bytes borrowed exclusively and
            // j < REGS, so the 32 bytes at 32 * j are in bounds; the unaligned store has
            // no alignment requirement; the CPU supports avx2.
            unsafe { _mm256_storeu_si256(d.as_mut_ptr().add(32 * j).cast(), out) }
        }
    }
}

/// Keeps the registers of one group in lockstep, round by round: an empty asm statement
/// that takes and returns all of them. Without it the compiler regroups the rounds
/// register by register (to free registers for the round keys), which leaves one 4-cycle
/// dependency chain at a time in flight and the AES units mostly idle.
#[target_feature(enable = "avx2,vaes,aes,vpclmulqdq")]
#[inline]
fn lockstep(x: &mut [__m256i; REGS]) {
    let [a, b, c, d, e, f, g, h] = x;
    // SAFETY: the asm template is empty: it executes no instruction and leaves every
    // register unchanged; it touches no memory, stack or flags (as declared), and the
    // ymm registers it names are available since the CPU supports avx2.
    unsafe {
        core::arch::asm!(
            "/* {0} {1} {2} {3} {4} {5} {6} {7} */",
            inout(ymm_reg) * a,
            inout(ymm_reg) * b,
            inout(ymm_reg) * c,
            inout(ymm_reg) * d,
            inout(ymm_reg) * e,
            inout(ymm_reg) * f,
            inout(ymm_reg) * g,
            inout(ymm_reg) * h,
            options(nomem, nostack, preserves_flags),
        )
    }
}

/// `a` with each 32-bit word XORed with all words below it, then XORed with `t`: one
/// step of the AES key schedule.
#[inline(always)]
fn mix(a: __m128i, t: __m128i) -> __m128i {
    // SAFETY: SSE2 is part of the x86_64 baseline target; registers only.
    unsafe {
        let a = _mm_xor_si128(a, _mm_slli_si128::<4>(a));
        let a = _mm_xor_si128(a, _mm_slli_si128::<4>(a));
        let a = _mm_xor_si128(a, _mm_slli_si128::<4>(a));
        _mm_xor_si128(a, t)
    }
}

/// Expands an AES-256 key (FIPS 197) into `enc`, and when given, the equivalent inverse
/// cipher schedule into `dec`: the encryption keys reversed, the middle ones through
/// InvMixColumns.
#[target_feature(enable = "aes")]
fn expand(key: &[u8; 32], enc: &mut Schedule, dec: Option<&mut Schedule>) {
    let mut k = [_mm_setzero_si128(); ROUNDS + 1];
    // SAFETY: `key` is 32 readable bytes, so both 16-byte halves are in bounds; the
    // unaligned loads have no alignment requirement; SSE2 is part of the x86_64 baseline.
    unsafe {
        k[0] = _mm_loadu_si128(key.as_ptr().cast());
        k[1] = _mm_loadu_si128(key.as_ptr().add(16).cast());
    }
    // Round keys 2i (RotWord + SubWord + rcon of the previous key's last word) and 2i+1
    // (SubWord only); round key 14 has no odd partner.
    macro_rules! even {
        ($i:literal, $rcon:literal) => {
            k[$i] = mix(
                k[$i - 2],
                _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(k[$i - 1])),
            );
        };
    }
    macro_rules! pair {
        ($i:literal, $rcon:literal) => {
            even!($i, $rcon);
            k[$i + 1] = mix(
                k[$i - 1],
                _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(k[$i])),
            );
        };
    }
    pair!(2, 0x01);
    pair!(4, 0x02);
    pair!(6, 0x04);
    pair!(8, 0x08);
    pair!(10, 0x10);
    pair!(12, 0x20);
    even!(14, 0x40);
    for (r, key) in k.iter().enumerate() {
        enc.set(r, *key);
    }
    if let Some(dec) = dec {
        dec.set(0, k[ROUNDS]);
        for r in 1..ROUNDS {
            dec.set(r, _mm_aesimc_si128(k[ROUNDS - r]));
        }
        dec.set(ROUNDS, k[0]);
    }
    k.zeroize();
}
