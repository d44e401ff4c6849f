//! The one source of randomness for keys, IVs and volume ids: the kernel CSPRNG.

/// Fills `buf` from the operating system's CSPRNG (getrandom(2)).
///
/// Panics only if the kernel refuses randomness, which on Linux means the process cannot
/// safely create keys at all.
pub fn fill_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the kernel CSPRNG (getrandom) failed");
}
