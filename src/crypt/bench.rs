//! `storageos-fuse benchmark`: single-thread throughput of the sector cipher, like
//! `cryptsetup benchmark`. Encrypts and decrypts a 1 MiB buffer of sectors (the largest
//! FUSE request, so the same call the image path makes) under a random throwaway key for
//! a fixed time of this thread's CPU (as `openssl speed` counts by default, so a busy
//! machine does not skew the comparison), and reports MiB/s. Owns no key material beyond that throwaway key; does
//! not touch disk.

use std::time::Duration;

use serde::Serialize;

use super::key::VolumeKey;
use super::xts::{SectorCipher, XtsError};

/// Bytes per call: one maximal FUSE request.
const BUF: usize = 1 << 20;

/// One benchmark result; field order is the JSON contract.
#[derive(Debug, Clone, Serialize)]
pub struct XtsBenchmark {
    pub cipher: &'static str,
    pub key_bits: u32,
    pub sector_size: usize,
    pub encrypt_mib_s: f64,
    pub decrypt_mib_s: f64,
}

/// Runs encryption then decryption for about `per_direction` each on one thread.
pub fn benchmark_xts(
    sector_size: usize,
    per_direction: Duration,
) -> Result<XtsBenchmark, XtsError> {
    let key = VolumeKey::generate();
    let cipher = SectorCipher::new(&key, sector_size)?;
    let mut buf: Vec<u8> = (0..BUF).map(|i| (i * 131 % 251) as u8).collect();
    let sectors = (BUF / sector_size) as u64;
    // Warm up (CPU frequency, caches, feature detection), then measure.
    time(&mut buf, sectors, Duration::from_millis(100), |b, s| {
        cipher.encrypt(b, s)
    })?;
    let enc = time(&mut buf, sectors, per_direction, |b, s| {
        cipher.encrypt(b, s)
    })?;
    let dec = time(&mut buf, sectors, per_direction, |b, s| {
        cipher.decrypt(b, s)
    })?;
    Ok(XtsBenchmark {
        cipher: "aes-xts",
        key_bits: 512,
        sector_size,
        encrypt_mib_s: round1(enc),
        decrypt_mib_s: round1(dec),
    })
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// CPU time consumed by the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid, exclusively borrowed location;
    // CLOCK_THREAD_CPUTIME_ID is supported by every Linux we run on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Calls `f` over `buf` (advancing the sector index, as a sequential stream would) until
/// `min` of thread CPU time has passed; returns MiB per CPU second.
fn time(
    buf: &mut [u8],
    sectors: u64,
    min: Duration,
    mut f: impl FnMut(&mut [u8], u64) -> Result<(), XtsError>,
) -> Result<f64, XtsError> {
    let t0 = thread_cpu();
    let mut bytes = 0u64;
    let mut sector = 0u64;
    loop {
        f(buf, sector)?;
        sector += sectors;
        bytes += buf.len() as u64;
        let el = thread_cpu() - t0;
        if el >= min {
            return Ok(bytes as f64 / (1024.0 * 1024.0) / el.as_secs_f64());
        }
    }
}
