//! The plaintext image of a volume over its backing file: byte-addressed reads and writes,
//! aligned read-modify-write for partial sectors, discard, sync.
//!
//! Encrypted volumes go through `crypt::SectorCipher` sector by sector; a sector whose
//! stored bytes are all zero is a hole and reads as zeros, and a sector written with zero
//! plaintext is stored as zeros. Unencrypted volumes pass straight through. Owns the open
//! backing file and its served-volume lock; knows nothing about FUSE.

mod aligned;
mod backing;
mod rangelock;
mod readahead;

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

pub use aligned::AlignedBuf;
use backing::Backing;
pub use backing::BackingIo;
use rangelock::RangeLocks;

use crate::crypt::SectorCipher;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot open backing file {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("backing file {path} is served by another process (it is locked)")]
    Locked { path: String },
    #[error(
        "backing file {path} is {actual} bytes, the volume is {expected}: refusing to serve it"
    )]
    SizeMismatch {
        path: String,
        actual: u64,
        expected: u64,
    },
}

pub struct VolumeImage {
    backing: Backing,
    size: u64,
    sector: u64,
    cipher: Option<SectorCipher>,
    locks: RangeLocks,
}

thread_local! {
    /// Per-thread bounce buffer for ciphertext (aligned for `O_DIRECT`), reused across
    /// requests.
    static BOUNCE: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
}

fn is_zero(buf: &[u8]) -> bool {
    let mut words = buf.chunks_exact(16);
    words
        .by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

impl VolumeImage {
    /// Opens the backing file read-write and takes the served-volume lock.
    pub fn open(
        path: &Path,
        size: u64,
        sector_size: u32,
        cipher: Option<SectorCipher>,
        io: BackingIo,
    ) -> Result<Self, ImageError> {
        let p = path.display().to_string();
        let backing = Backing::open(path, io).map_err(|source| ImageError::Open {
            path: p.clone(),
            source,
        })?;
        let file = backing.file();
        match crate::volume::lock::try_lock(file) {
            Ok(true) => {}
            Ok(false) => return Err(ImageError::Locked { path: p }),
            Err(source) => return Err(ImageError::Open { path: p, source }),
        }
        let actual = file
            .metadata()
            .map_err(|source| ImageError::Open {
                path: p.clone(),
                source,
            })?
            .len();
        if actual != size {
            return Err(ImageError::SizeMismatch {
                path: p,
                actual,
                expected: size,
            });
        }
        Ok(Self {
            backing,
            size,
            sector: sector_size as u64,
            cipher,
            locks: RangeLocks::default(),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    /// Clamps a request to the image; `None` when it starts at or past the end.
    fn clamp(&self, offset: u64, len: usize) -> Option<usize> {
        if offset >= self.size {
            return None;
        }
        Some(len.min((self.size - offset) as usize))
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns the count (0 at end of image).
    /// A sector-aligned read (what the loop device sends) is read and decrypted in place in
    /// `buf`; an unaligned one goes through the per-thread bounce buffer.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let Some(len) = self.clamp(offset, buf.len()) else {
            return Ok(0);
        };
        let buf = &mut buf[..len];
        let Some(cipher) = &self.cipher else {
            self.backing.read_exact_at(buf, offset)?;
            return Ok(len);
        };
        let s = self.sector;
        let start = offset / s * s;
        let end = (offset + len as u64).div_ceil(s) * s;
        let _g = self.locks.read(start, end - start);
        if start == offset && end == offset + len as u64 {
            self.backing.read_exact_at(buf, start)?;
            self.decrypt_sectors(cipher, buf, start);
            return Ok(len);
        }
        BOUNCE.with_borrow_mut(|bounce| {
            let bounce = bounce.get((end - start) as usize);
            self.backing.read_exact_at(bounce, start)?;
            self.decrypt_sectors(cipher, bounce, start);
            let skip = (offset - start) as usize;
            buf.copy_from_slice(&bounce[skip..skip + len]);
            Ok(len)
        })
    }

    /// Calls `f` on each maximal run of sectors of `buf` that are not all zero (holes and
    /// zero plaintext are left alone), with the index of the run's first sector. One call
    /// per run keeps the cipher's parallel batches full across sector boundaries.
    fn nonzero_runs(&self, buf: &mut [u8], start: u64, mut f: impl FnMut(&mut [u8], u64)) {
        let s = self.sector as usize;
        let first = start / self.sector;
        let n = buf.len() / s;
        let mut i = 0;
        while i < n {
            if is_zero(&buf[i * s..(i + 1) * s]) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < n && !is_zero(&buf[j * s..(j + 1) * s]) {
                j += 1;
            }
            f(&mut buf[i * s..j * s], first + i as u64);
            i = j;
        }
    }

    fn decrypt_sectors(&self, cipher: &SectorCipher, buf: &mut [u8], start: u64) {
        self.nonzero_runs(buf, start, |run, first| {
            cipher.decrypt(run, first).expect("whole sectors")
        });
    }

    fn encrypt_sectors(&self, cipher: &SectorCipher, buf: &mut [u8], start: u64) {
        // Zero plaintext stays zero on disk: it reads back as a hole.
        self.nonzero_runs(buf, start, |run, first| {
            cipher.encrypt(run, first).expect("whole sectors")
        });
    }

    /// `encrypt_sectors` from `src` into `dst`: zero sectors of `src` become zero sectors
    /// of `dst`, runs of the others are encrypted across in one call each.
    fn encrypt_sectors_to(&self, cipher: &SectorCipher, src: &[u8], dst: &mut [u8], start: u64) {
        let s = self.sector as usize;
        let first = start / self.sector;
        let n = src.len() / s;
        let mut i = 0;
        while i < n {
            let zero = is_zero(&src[i * s..(i + 1) * s]);
            let mut j = i + 1;
            while j < n && is_zero(&src[j * s..(j + 1) * s]) == zero {
                j += 1;
            }
            let (from, to) = (&src[i * s..j * s], &mut dst[i * s..j * s]);
            if zero {
                to.fill(0);
            } else {
                cipher
                    .encrypt_to(from, to, first + i as u64)
                    .expect("whole sectors");
            }
            i = j;
        }
    }

    /// Writes `data` at `offset`. Writes past the end of the image fail with ENOSPC, as on
    /// a block device; a write that crosses the end is cut at the end.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<usize> {
        let Some(len) = self.clamp(offset, data.len()) else {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        };
        let data = &data[..len];
        let Some(cipher) = &self.cipher else {
            return self.write_plain(data, offset).map(|()| len);
        };
        let s = self.sector;
        let start = offset / s * s;
        let end = (offset + len as u64).div_ceil(s) * s;
        let _g = self.locks.write(start, end - start);
        BOUNCE.with_borrow_mut(|bounce| {
            let bounce = bounce.get((end - start) as usize);
            let head_partial = offset != start;
            let tail_partial = offset + len as u64 != end;
            if !head_partial && !tail_partial {
                // Whole sectors (what the loop device sends): encrypt straight from the
                // request into the bounce buffer, no copy first.
                self.encrypt_sectors_to(cipher, data, bounce, start);
                self.backing.write_all_at(bounce, start)?;
                return Ok(len);
            }
            // Read-modify-write: only the partial edge sectors need their old contents.
            if head_partial {
                self.read_plain_sector(cipher, &mut bounce[..s as usize], start)?;
            }
            if tail_partial && (end - s > start || !head_partial) {
                let at = (end - s - start) as usize;
                self.read_plain_sector(cipher, &mut bounce[at..], end - s)?;
            }
            let skip = (offset - start) as usize;
            bounce[skip..skip + len].copy_from_slice(data);
            self.encrypt_sectors(cipher, bounce, start);
            self.backing.write_all_at(bounce, start)?;
            Ok(len)
        })
    }

    /// Unencrypted write. FUSE hands us the data at an unaligned address, so direct mode
    /// copies an aligned request into the aligned bounce buffer first.
    fn write_plain(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let aligned = offset.is_multiple_of(aligned::ALIGN as u64)
            && data.len().is_multiple_of(aligned::ALIGN);
        if !self.backing.is_direct() || !aligned {
            return self.backing.write_all_at(data, offset);
        }
        BOUNCE.with_borrow_mut(|bounce| {
            let bounce = bounce.get(data.len());
            bounce.copy_from_slice(data);
            self.backing.write_all_at(bounce, offset)
        })
    }

    fn read_plain_sector(&self, cipher: &SectorCipher, out: &mut [u8], at: u64) -> io::Result<()> {
        let out = &mut out[..self.sector as usize];
        self.backing.read_exact_at(out, at)?;
        if !is_zero(out) {
            cipher.decrypt(out, at / self.sector).expect("whole sector");
        }
        Ok(())
    }

    /// Makes `[offset, offset+len)` read as zeros and frees the backing blocks of the whole
    /// sectors in it (what the loop device sends for discard and write-zeroes).
    pub fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
        if offset >= self.size || len == 0 {
            return Ok(());
        }
        let len = len.min(self.size - offset);
        let end = offset + len;
        if self.cipher.is_none() {
            return fallocate(
                self.backing.file(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            );
        }
        let s = self.sector;
        let first_whole = offset.div_ceil(s) * s;
        let last_whole = end / s * s;
        if first_whole >= last_whole {
            // Inside one or two sectors: zero the bytes through the normal write path.
            return self.write_at(offset, &vec![0u8; len as usize]).map(|_| ());
        }
        if offset < first_whole {
            self.write_at(offset, &vec![0u8; (first_whole - offset) as usize])?;
        }
        if last_whole < end {
            self.write_at(last_whole, &vec![0u8; (end - last_whole) as usize])?;
        }
        let _g = self.locks.write(first_whole, last_whole - first_whole);
        fallocate(
            self.backing.file(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            first_whole,
            last_whole - first_whole,
        )
    }

    /// Preallocates backing blocks (they read as zeros, so the plaintext is unchanged).
    pub fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        if offset >= self.size || len == 0 {
            return Ok(());
        }
        fallocate(
            self.backing.file(),
            libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len.min(self.size - offset),
        )
    }

    /// Flushes written data (and, unless `datasync`, metadata) of the backing file to
    /// stable storage.
    pub fn sync(&self, datasync: bool) -> io::Result<()> {
        if datasync {
            self.backing.file().sync_data()
        } else {
            self.backing.file().sync_all()
        }
    }

    /// Validates a request offset from a signed kernel value.
    pub fn check_offset(offset: i64) -> io::Result<u64> {
        u64::try_from(offset).map_err(|_| einval())
    }
}

fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on a valid open descriptor; offsets are checked to fit in off_t
    // by the image size bound (at most i64::MAX).
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
