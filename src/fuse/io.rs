//! Image I/O for FUSE requests: read, write, fsync, fallocate, mapped onto `VolumeImage`
//! with errno replies. Shared by every filesystem view.

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileType, FopenFlags, INodeNo, InitFlags, KernelConfig, MountOption,
    ReplyData, ReplyEmpty, ReplyWrite, SessionACL,
};

use crate::image::{AlignedBuf, VolumeImage};

/// Largest request the kernel sends us (with FUSE_MAX_PAGES): 1 MiB.
pub const MAX_REQUEST: u32 = 1 << 20;
/// Attributes and entries never change behind the kernel's back (sizes are fixed).
pub const TTL: Duration = Duration::from_secs(3600);

/// Mount settings common to all views.
#[derive(Debug, Clone)]
pub struct FsOptions {
    pub fsname: String,
    pub threads: usize,
    pub allow_other: bool,
}

pub fn fuse_config(opts: &FsOptions) -> Config {
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("storageos-fuse".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
    ];
    cfg.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(opts.threads.max(1));
    cfg.clone_fd = opts.threads > 1;
    cfg
}

/// Open flags of the image: uncached (`FOPEN_DIRECT_IO`), with parallel direct writes.
/// Every read and write reaches the daemon, so the loop device's direct I/O (aio) keeps
/// many requests in flight, writes included: without `FOPEN_PARALLEL_DIRECT_WRITES` the
/// kernel serializes writes to one file under its inode lock. Plaintext is not cached in
/// the FUSE file's page cache (the file system above the loop device has its own cache).
/// Measured (scripts/bench.sh, loop --direct-io=on): random 4 KiB read/write at qd32
/// about doubles against the cached default; the image cannot be mmap'ed.
pub fn open_flags() -> FopenFlags {
    FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
}

/// Large requests and readahead: fewer, bigger round trips to the daemon.
pub fn tune_kernel(config: &mut KernelConfig) {
    let _ = config.add_capabilities(InitFlags::FUSE_MAX_PAGES | InitFlags::FUSE_ASYNC_DIO);
    let _ = config.set_max_write(MAX_REQUEST);
    let _ = config.set_max_readahead(MAX_REQUEST);
    let _ = config.set_max_background(64);
}

pub fn errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

pub fn file_attr(ino: INodeNo, size: u64, created: SystemTime) -> FileAttr {
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: created,
        mtime: created,
        ctime: created,
        crtime: created,
        kind: FileType::RegularFile,
        perm: 0o600,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

thread_local! {
    /// Per-worker reply buffer for reads, reused across requests (at most `MAX_REQUEST`),
    /// aligned so the image can read into it with `O_DIRECT`. `read_at` overwrites every
    /// byte it reports, so stale contents never reach a reply.
    static READ_BUF: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
}

/// Serves a read; returns the bytes read, or `None` after an error reply.
pub fn read(image: &VolumeImage, offset: u64, size: u32, reply: ReplyData) -> Option<usize> {
    let want = size.min(MAX_REQUEST) as usize;
    READ_BUF.with_borrow_mut(|buf| {
        let buf = buf.get(want);
        match image.read_at(offset, buf) {
            Ok(n) => {
                reply.data(&buf[..n]);
                Some(n)
            }
            Err(e) => {
                tracing::error!("read of {size} bytes at {offset} failed: {e}");
                reply.error(errno(&e));
                None
            }
        }
    })
}

/// Serves a write; returns the bytes written, or `None` after an error reply.
pub fn write(image: &VolumeImage, offset: u64, data: &[u8], reply: ReplyWrite) -> Option<usize> {
    match image.write_at(offset, data) {
        Ok(n) => {
            reply.written(n as u32);
            Some(n)
        }
        Err(e) => {
            tracing::error!("write of {} bytes at {offset} failed: {e}", data.len());
            reply.error(errno(&e));
            None
        }
    }
}

/// Serves an fsync; returns whether it succeeded.
pub fn fsync(image: &VolumeImage, datasync: bool, reply: ReplyEmpty) -> bool {
    match image.sync(datasync) {
        Ok(()) => {
            reply.ok();
            true
        }
        Err(e) => {
            tracing::error!("fsync failed: {e}");
            reply.error(errno(&e));
            false
        }
    }
}

/// Serves a fallocate; returns whether it succeeded.
pub fn fallocate(
    image: &VolumeImage,
    offset: u64,
    length: u64,
    mode: i32,
    reply: ReplyEmpty,
) -> bool {
    let punch = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
    let known = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
    if mode & !known != 0 {
        reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        return false;
    }
    if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && offset.saturating_add(length) > image.size() {
        // The image has a fixed size; growing it is not possible.
        reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        return false;
    }
    let res = if punch {
        image.punch(offset, length)
    } else {
        image.allocate(offset, length)
    };
    match res {
        Ok(()) => {
            reply.ok();
            true
        }
        Err(e) => {
            tracing::error!("fallocate(mode {mode:#x}) of {length} bytes at {offset} failed: {e}");
            reply.error(errno(&e));
            false
        }
    }
}
