//! Readahead of the backing file, done by the daemon instead of the kernel.
//!
//! The kernel's own readahead is turned off on the backing file (`POSIX_FADV_RANDOM`, see
//! `backing`): it fills the page cache with large folios, and a 4 KiB buffered write into
//! a large folio costs several times one into a small folio on ext4. With no readahead at
//! all, a cold sequential read through the file system above the loop device waits for
//! the disk on every request (1.1 instead of 1.4 GB/s, measured). So a read that continues
//! where the previous one ended asks for the next [`WINDOW`] with `POSIX_FADV_WILLNEED`,
//! which starts the disk reads without waiting for them and, on a file advised random,
//! fills the cache with small folios.
//!
//! Owns the detection of sequential reads and the advice; knows nothing about sectors or
//! encryption. One stream at a time is followed: interleaved sequential streams look
//! random and simply go without readahead.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// `posix_fadvise(2)` on `len` bytes of `file` from `offset` (`len` 0: to the end).
pub fn fadvise(file: &File, offset: u64, len: u64, advice: libc::c_int) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open and
    // owned by `file` for the duration of the call.
    match unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, advice) } {
        0 => Ok(()),
        rc => Err(io::Error::from_raw_os_error(rc)),
    }
}

/// How far ahead of a sequential read the cache is filled (8 MiB: 2 MiB was measurably
/// short of the kernel's own readahead on a cold read through ext4).
pub const WINDOW: u64 = 8 << 20;

#[derive(Default)]
pub struct Readahead {
    /// End of the last read seen: a read starting here continues a sequential stream.
    last_end: AtomicU64,
    /// End of the range already advised. The next advice starts there once the reads come
    /// within half a window of it, so hot sequential reads cost one call per 4 MiB.
    advised_end: AtomicU64,
}

impl Readahead {
    /// Notes a read of `[offset, offset + len)` of `file`; after a sequential one, starts
    /// reading the window beyond it into the page cache.
    pub fn on_read(&self, file: &File, offset: u64, len: u64) {
        if let Some(ahead) = self.plan(offset, len) {
            // Advice past the end of the file is ignored by the kernel; a failure only
            // means no readahead.
            let _ = fadvise(
                file,
                ahead.start,
                ahead.end - ahead.start,
                libc::POSIX_FADV_WILLNEED,
            );
        }
    }

    /// The range to read ahead after a read of `[offset, offset + len)`, if any.
    fn plan(&self, offset: u64, len: u64) -> Option<Range<u64>> {
        let end = offset.checked_add(len)?;
        if len == 0 || self.last_end.swap(end, Ordering::Relaxed) != offset {
            return None;
        }
        let advised = self.advised_end.load(Ordering::Relaxed);
        // Advice that ends within the window ahead is continued; advice behind this read,
        // or left far ahead by an earlier stream, starts over from here.
        let from = match advised.checked_sub(end) {
            Some(a) if (WINDOW / 2..=WINDOW).contains(&a) => return None,
            Some(a) if a < WINDOW / 2 => advised,
            _ => end,
        };
        let to = end.checked_add(WINDOW)?;
        // One worker advises a stretch; another that raced it here leaves it.
        self.advised_end
            .compare_exchange(advised, to, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(from..to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, Instant};

    const MIB: u64 = 1 << 20;

    #[test]
    fn sequential_reads_advise_contiguous_windows_random_ones_none() {
        let ra = Readahead::default();
        // A stream of 1 MiB reads from 64 MiB on: the second read starts it, then one
        // advice per half window, each continuing the last.
        assert_eq!(ra.plan(64 * MIB, MIB), None, "first read of a stream");
        let mut advised = Vec::new();
        for i in 1..20 {
            if let Some(r) = ra.plan((64 + i) * MIB, MIB) {
                advised.push(r);
            }
        }
        assert_eq!(advised[0], 66 * MIB..66 * MIB + WINDOW);
        for w in advised.windows(2) {
            assert_eq!(w[0].end, w[1].start, "windows are contiguous: {advised:?}");
        }
        // Reads ended at 84 MiB: the advice stays at least half a window ahead, with one
        // call per half window or more of reads.
        assert!(
            advised.last().unwrap().end >= 84 * MIB + WINDOW / 2,
            "{advised:?}"
        );
        assert!(
            advised.len() <= (19 * MIB / (WINDOW / 2)) as usize + 1,
            "{advised:?}"
        );
        // Random reads: no advice.
        for off in [3, 900, 17, 40, 5] {
            assert_eq!(ra.plan(off * MIB, 4096), None);
        }
        // A new stream behind the old advice starts from its own position.
        assert_eq!(ra.plan(MIB, MIB), None);
        assert_eq!(ra.plan(2 * MIB, MIB), Some(3 * MIB..3 * MIB + WINDOW));
        assert_eq!(ra.plan(u64::MAX - 10, 20), None, "no overflow");
    }

    /// Bytes of `path` in the page cache, by `fincore` (mincore(2): it looks without
    /// reading anything in, unlike a probing read, which would itself fill the cache).
    fn resident(path: &std::path::Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(path)
            .output()
            .expect("fincore (util-linux) runs");
        assert!(out.status.success(), "fincore: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    fn evict(file: &File) {
        file.sync_all().unwrap();
        fadvise(file, 0, 0, libc::POSIX_FADV_DONTNEED).unwrap();
    }

    #[test]
    fn a_sequential_stream_pulls_the_window_ahead_into_the_page_cache() {
        // On disk (not tmpfs, whose pages cannot be evicted).
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("backing");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.write_all_at(&vec![7u8; 24 * MIB as usize], 0).unwrap();
        evict(&file);
        assert!(
            resident(&path) < MIB,
            "evicted pages still cached: this file system keeps them (the test needs a disk)"
        );
        let ra = Readahead::default();
        // Random reads bring in nothing.
        ra.on_read(&file, 20 * MIB, 4096);
        ra.on_read(&file, MIB, 4096);
        std::thread::sleep(Duration::from_millis(200));
        assert!(resident(&path) < MIB, "random reads read ahead");
        // A sequential stream: the window after it arrives without being read, and no more.
        ra.on_read(&file, 0, MIB);
        ra.on_read(&file, MIB, MIB);
        let deadline = Instant::now() + Duration::from_secs(5);
        while resident(&path) < WINDOW {
            assert!(
                Instant::now() < deadline,
                "window not read ahead within 5 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert!(resident(&path) < WINDOW + MIB, "read beyond the window");
    }
}
