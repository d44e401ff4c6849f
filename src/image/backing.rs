//! The backing file's descriptors: a buffered one for everything, and, in direct mode, an
//! `O_DIRECT` one for transfers whose buffer, length and offset are 4 KiB aligned (what the
//! loop device sends). Owns opening, the lock descriptor and positioned transfers; knows
//! nothing about encryption or sectors.
//!
//! Buffered is the default: the backing file's page cache absorbs writes and serves
//! re-reads, and measured faster on every job (bench/RESULTS.md). Direct is for nodes
//! short of memory: the file system above the loop device caches plaintext already, and
//! direct mode keeps no second, ciphertext copy. The kernel keeps the two descriptors
//! coherent: a direct read writes back dirty cached pages of its range first, a direct
//! write drops them.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

use super::aligned::is_aligned;
use super::readahead::{Readahead, fadvise};

/// Turns off the kernel's readahead on the backing file (`POSIX_FADV_RANDOM`); the
/// daemon reads ahead of sequential streams itself (`super::readahead`).
///
/// Why: the kernel's readahead fills the page cache with large folios, and a 4 KiB
/// buffered write into a large folio costs several times one into a small folio on ext4
/// (`ext4_block_write_begin`, which sets up and walks the buffer heads of the whole folio,
/// was 34% of the daemon's CPU). After a sequential read had pulled a volume in, random
/// 4 KiB read/write at qd32 ran at 29-31k IOPS instead of 69-81k (bench/RESULTS.md).
/// Advice only: a kernel that ignores it keeps its default.
fn no_readahead(file: &File) {
    if let Err(e) = fadvise(file, 0, 0, libc::POSIX_FADV_RANDOM) {
        tracing::debug!("posix_fadvise(POSIX_FADV_RANDOM) on the backing file: {e}");
    }
}

/// How the daemon transfers data to and from the backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackingIo {
    /// Everything through the page cache of the backing file (the default).
    #[default]
    Buffered,
    /// `O_DIRECT` for aligned transfers: no second cache of the volume.
    Direct,
}

pub struct Backing {
    buffered: File,
    direct: Option<File>,
    /// Buffered writes to one file serialize on its inode lock in the kernel anyway (ext4,
    /// xfs); waiting here instead parks the thread rather than letting it spin on the lock
    /// (`rwsem_spin_on_owner` was 15% of the daemon's profile), leaving the CPU to the
    /// workers that encrypt and read.
    write_gate: Mutex<()>,
    readahead: Readahead,
}

impl Backing {
    /// Opens `path` read-write. In direct mode a file system without `O_DIRECT` support
    /// (EINVAL) falls back to buffered transfers, with a warning.
    pub fn open(path: &Path, mode: BackingIo) -> io::Result<Self> {
        let buffered = OpenOptions::new().read(true).write(true).open(path)?;
        no_readahead(&buffered);
        let direct = match mode {
            BackingIo::Buffered => None,
            BackingIo::Direct => match OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
            {
                Ok(f) => Some(f),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(
                        "{}: the file system refuses O_DIRECT, using buffered I/O",
                        path.display()
                    );
                    None
                }
                Err(e) => return Err(e),
            },
        };
        Ok(Self {
            buffered,
            direct,
            write_gate: Mutex::new(()),
            readahead: Readahead::default(),
        })
    }

    /// The buffered descriptor: for locks, metadata, fallocate and sync.
    pub fn file(&self) -> &File {
        &self.buffered
    }

    /// Whether aligned transfers bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    fn pick(&self, buf: &[u8], offset: u64) -> &File {
        match &self.direct {
            Some(d) if is_aligned(buf, offset) => d,
            _ => &self.buffered,
        }
    }

    /// Reads exactly `buf.len()` bytes; a short read means the backing file shrank behind
    /// our back, which is an I/O error, never silently zeros.
    pub fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        if self.direct.is_none() {
            self.readahead
                .on_read(&self.buffered, offset, buf.len() as u64);
        }
        while !buf.is_empty() {
            match self.pick(buf, offset).read_at(buf, offset) {
                Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        let direct = self.direct.is_some() && is_aligned(buf, offset);
        let _gate = (!direct).then(|| self.write_gate.lock().unwrap_or_else(|p| p.into_inner()));
        while !buf.is_empty() {
            match self.pick(buf, offset).write_at(buf, offset) {
                Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
