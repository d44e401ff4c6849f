//! One volume image mounted on a regular file: the FUSE root inode *is* the image.

use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileHandle, Filesystem, INodeNo, KernelConfig, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyEmpty, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};

use super::io::{self, TTL};
use crate::image::VolumeImage;

pub struct ImageFile {
    image: Arc<VolumeImage>,
    created: SystemTime,
}

impl ImageFile {
    pub fn new(image: Arc<VolumeImage>) -> Self {
        Self {
            image,
            created: SystemTime::now(),
        }
    }

    fn is_root(ino: INodeNo) -> bool {
        ino == INodeNo::ROOT
    }
}

impl Filesystem for ImageFile {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        io::tune_kernel(config);
        Ok(())
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if !Self::is_root(ino) {
            return reply.error(Errno::ENOENT);
        }
        reply.attr(&TTL, &io::file_attr(ino, self.image.size(), self.created));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if !Self::is_root(ino) {
            return reply.error(Errno::ENOENT);
        }
        // The image's size, owner and mode are fixed; times are accepted and ignored.
        if size.is_some_and(|s| s != self.image.size())
            || mode.is_some()
            || uid.is_some()
            || gid.is_some()
        {
            return reply.error(Errno::EPERM);
        }
        reply.attr(&TTL, &io::file_attr(ino, self.image.size(), self.created));
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if !Self::is_root(ino) {
            return reply.error(Errno::ENOENT);
        }
        reply.opened(FileHandle(0), io::open_flags());
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        io::read(&self.image, offset, size, reply);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        io::write(&self.image, offset, data, reply);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        io::fsync(&self.image, datasync, reply);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        io::fallocate(&self.image, offset, length, mode, reply);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.image.size() / 4096;
        reply.statfs(blocks, 0, 0, 1, 0, 4096, 255, 4096);
    }
}
