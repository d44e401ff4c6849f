//! `serve`'s view: one FUSE mount holding a directory tree of volume images,
//! `<namespace>/<name>` and `by-id/<id>`, both names of the same inode (a hard link: same
//! inode number, `nlink` 2, same bytes).
//!
//! The tree is drawn from a `VolumeTable` the daemon changes while the mount is live.
//! Inode numbers are never reused, so a stale handle or dentry can never reach another
//! volume. Directory entries and attributes carry a short TTL, and the daemon also
//! invalidates the kernel's dentries when it removes a volume, so `ls` shows changes at
//! once. An open file handle pins its volume: a volume with open handles (an open file, an
//! attached loop device) is never dropped by `remove_if_idle`.
//!
//! Owns inode numbering, directory listings and per-handle bookkeeping; image I/O is
//! `io`'s, and what to serve (keys, locks, rescans) is the daemon's.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::io;
use super::metrics::{IoMetrics, Op, VolumeStats};
use crate::image::VolumeImage;

/// The directory of id-named entries.
pub const BY_ID: &str = "by-id";
const ROOT_INO: u64 = 1;
const BY_ID_INO: u64 = 2;
const FIRST_DYNAMIC_INO: u64 = 16;
/// Entries and directory attributes may change at any time: the kernel asks again soon.
pub const ENTRY_TTL: Duration = Duration::from_secs(1);

/// One volume image in the tree.
pub struct ServedVolume {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub image: Arc<VolumeImage>,
    /// I/O counters of this volume (`/metrics`).
    pub stats: VolumeStats,
    ino: u64,
    opens: AtomicUsize,
    since: SystemTime,
}

impl ServedVolume {
    /// Open handles on the image (files opened, loop devices attached).
    pub fn open_count(&self) -> usize {
        self.opens.load(Ordering::Acquire)
    }

    fn attr(&self) -> FileAttr {
        let mut a = io::file_attr(INodeNo(self.ino), self.image.size(), self.since);
        a.nlink = 2;
        a
    }
}

#[derive(Default)]
struct Tables {
    by_id: BTreeMap<String, Arc<ServedVolume>>,
    by_ino: HashMap<u64, Arc<ServedVolume>>,
    /// Namespace directory inodes, allocated once per namespace name and kept.
    ns_ino: BTreeMap<String, u64>,
    ns_by_ino: HashMap<u64, String>,
    next_ino: u64,
}

impl Tables {
    fn alloc(&mut self) -> u64 {
        let ino = self.next_ino.max(FIRST_DYNAMIC_INO);
        self.next_ino = ino + 1;
        ino
    }

    fn ns_has_volumes(&self, ns: &str) -> bool {
        self.by_id.values().any(|v| v.namespace == ns)
    }
}

/// Kernel cache entries to drop after a change: (parent inode, name).
pub type Invalidations = Vec<(INodeNo, OsString)>;

/// Why a volume could not be removed.
#[derive(Debug, PartialEq, Eq)]
pub enum RemoveError {
    NotServed,
    /// It has open handles; the count.
    InUse(usize),
}

/// The served volumes, shared by the filesystem and the daemon that changes them.
pub struct VolumeTable {
    inner: RwLock<Tables>,
    since: SystemTime,
    /// Request latencies of the whole tree (`/metrics`).
    pub metrics: IoMetrics,
}

impl VolumeTable {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: RwLock::new(Tables::default()),
            since: SystemTime::now(),
            metrics: IoMetrics::default(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a volume (replacing nothing: an id already served is left as it is and
    /// `false` is returned, and the given image is dropped).
    pub fn insert(&self, id: &str, namespace: &str, name: &str, image: VolumeImage) -> bool {
        let mut t = self.write();
        if t.by_id.contains_key(id) {
            return false;
        }
        let ino = t.alloc();
        if !t.ns_ino.contains_key(namespace) {
            let ns_ino = t.alloc();
            t.ns_ino.insert(namespace.to_string(), ns_ino);
            t.ns_by_ino.insert(ns_ino, namespace.to_string());
        }
        let vol = Arc::new(ServedVolume {
            id: id.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            image: Arc::new(image),
            stats: VolumeStats::default(),
            ino,
            opens: AtomicUsize::new(0),
            since: SystemTime::now(),
        });
        t.by_id.insert(id.to_string(), vol.clone());
        t.by_ino.insert(ino, vol);
        true
    }

    /// Removes a volume that has no open handle. Returns the kernel entries to
    /// invalidate (call the notifier without holding any lock of the table).
    pub fn remove_if_idle(&self, id: &str) -> Result<Invalidations, RemoveError> {
        self.remove(id, false)
    }

    /// Removes a volume even while open (its backing file is gone); open handles keep
    /// their image until closed.
    pub fn remove_anyway(&self, id: &str) -> Result<Invalidations, RemoveError> {
        self.remove(id, true)
    }

    fn remove(&self, id: &str, force: bool) -> Result<Invalidations, RemoveError> {
        let mut t = self.write();
        let vol = t.by_id.get(id).cloned().ok_or(RemoveError::NotServed)?;
        // `open` counts under the read lock, so under the write lock the count is exact.
        let opens = vol.open_count();
        if opens > 0 && !force {
            return Err(RemoveError::InUse(opens));
        }
        t.by_id.remove(id);
        t.by_ino.remove(&vol.ino);
        let ns_ino = t.ns_ino[&vol.namespace];
        let mut inval = vec![
            (INodeNo(ns_ino), OsString::from(&vol.name)),
            (INodeNo(BY_ID_INO), OsString::from(&vol.id)),
        ];
        if !t.ns_has_volumes(&vol.namespace) {
            inval.push((INodeNo(ROOT_INO), OsString::from(&vol.namespace)));
        }
        Ok(inval)
    }

    pub fn get(&self, id: &str) -> Option<Arc<ServedVolume>> {
        self.read().by_id.get(id).cloned()
    }

    pub fn ids(&self) -> Vec<String> {
        self.read().by_id.keys().cloned().collect()
    }

    /// Every served volume.
    pub fn volumes(&self) -> Vec<Arc<ServedVolume>> {
        self.read().by_id.values().cloned().collect()
    }

    fn dir_attr(&self, ino: u64) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: self.since,
            mtime: self.since,
            ctime: self.since,
            crtime: self.since,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

enum Node {
    Root,
    ById,
    Namespace(String),
    Volume(Arc<ServedVolume>),
}

/// The FUSE filesystem over a `VolumeTable`.
pub struct VolumeTree {
    table: Arc<VolumeTable>,
    handles: Mutex<HashMap<u64, Arc<ServedVolume>>>,
    next_fh: AtomicU64,
}

impl VolumeTree {
    pub fn new(table: Arc<VolumeTable>) -> Self {
        Self {
            table,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    fn node(&self, ino: INodeNo) -> Option<Node> {
        match ino.0 {
            ROOT_INO => Some(Node::Root),
            BY_ID_INO => Some(Node::ById),
            n => {
                let t = self.table.read();
                if let Some(v) = t.by_ino.get(&n) {
                    return Some(Node::Volume(v.clone()));
                }
                t.ns_by_ino
                    .get(&n)
                    .filter(|ns| t.ns_has_volumes(ns))
                    .map(|ns| Node::Namespace(ns.clone()))
            }
        }
    }

    fn attr(&self, node: &Node) -> FileAttr {
        match node {
            Node::Root => self.table.dir_attr(ROOT_INO),
            Node::ById => self.table.dir_attr(BY_ID_INO),
            Node::Namespace(ns) => {
                let ino = self.table.read().ns_ino.get(ns).copied().unwrap_or(0);
                self.table.dir_attr(ino)
            }
            Node::Volume(v) => v.attr(),
        }
    }

    /// The entries of a directory, "." and ".." first.
    fn entries(&self, ino: INodeNo) -> Option<Vec<(u64, FileType, OsString)>> {
        let node = self.node(ino)?;
        let dot = |i: u64, n: &str| (i, FileType::Directory, OsString::from(n));
        let mut out = vec![dot(ino.0, "."), dot(ROOT_INO, "..")];
        let t = self.table.read();
        match node {
            Node::Root => {
                out.push(dot(BY_ID_INO, BY_ID));
                for (ns, i) in &t.ns_ino {
                    if t.ns_has_volumes(ns) {
                        out.push(dot(*i, ns));
                    }
                }
            }
            Node::ById => {
                for v in t.by_id.values() {
                    out.push((v.ino, FileType::RegularFile, OsString::from(&v.id)));
                }
            }
            Node::Namespace(ns) => {
                let mut vols: Vec<_> = t.by_id.values().filter(|v| v.namespace == ns).collect();
                vols.sort_by(|a, b| a.name.cmp(&b.name));
                for v in vols {
                    out.push((v.ino, FileType::RegularFile, OsString::from(&v.name)));
                }
            }
            Node::Volume(_) => return None,
        }
        Some(out)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Option<Node> {
        let name = name.to_str()?;
        let t = self.table.read();
        match parent.0 {
            ROOT_INO if name == BY_ID => Some(Node::ById),
            ROOT_INO => t
                .ns_ino
                .contains_key(name)
                .then(|| t.ns_has_volumes(name))
                .filter(|has| *has)
                .map(|_| Node::Namespace(name.to_string())),
            BY_ID_INO => t.by_id.get(name).cloned().map(Node::Volume),
            n => {
                let ns = t.ns_by_ino.get(&n)?;
                t.by_id
                    .values()
                    .find(|v| &v.namespace == ns && v.name == name)
                    .cloned()
                    .map(Node::Volume)
            }
        }
    }

    fn handle(&self, fh: FileHandle) -> Option<Arc<ServedVolume>> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned()
    }
}

impl Filesystem for VolumeTree {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        io::tune_kernel(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name) {
            Some(node) => {
                let attr = self.attr(&node);
                let attr_ttl = match node {
                    Node::Volume(_) => io::TTL,
                    _ => ENTRY_TTL,
                };
                reply.entry_with_ttls(&attr_ttl, &ENTRY_TTL, &attr, Generation(0))
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Some(node @ Node::Volume(_)) => reply.attr(&io::TTL, &self.attr(&node)),
            Some(node) => reply.attr(&ENTRY_TTL, &self.attr(&node)),
            None => reply.error(Errno::ENOENT),
        }
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
        let Some(node) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        // Sizes, owners and modes are fixed; times are accepted and ignored.
        let size_changes = match &node {
            Node::Volume(v) => size.is_some_and(|s| s != v.image.size()),
            _ => size.is_some(),
        };
        if size_changes || mode.is_some() || uid.is_some() || gid.is_some() {
            return reply.error(Errno::EPERM);
        }
        reply.attr(&ENTRY_TTL, &self.attr(&node))
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Count the handle under the table's read lock, so `remove_if_idle` (write lock)
        // never drops a volume between our lookup and the count.
        let t = self.table.read();
        let Some(vol) = t.by_ino.get(&ino.0).cloned() else {
            drop(t);
            return reply.error(if self.node(ino).is_some() {
                Errno::EISDIR
            } else {
                Errno::ENOENT
            });
        };
        vol.opens.fetch_add(1, Ordering::AcqRel);
        drop(t);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, vol);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let vol = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        if let Some(v) = vol {
            v.opens.fetch_sub(1, Ordering::AcqRel);
        }
        reply.ok()
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.handle(fh) {
            Some(v) => {
                let start = Instant::now();
                match io::read(&v.image, offset, size, reply) {
                    Some(n) => v.stats.read(n),
                    None => v.stats.error(),
                }
                self.table
                    .metrics
                    .latency(Op::Read)
                    .observe(start.elapsed());
            }
            None => reply.error(Errno::EBADF),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.handle(fh) {
            Some(v) => {
                let start = Instant::now();
                match io::write(&v.image, offset, data, reply) {
                    Some(n) => v.stats.write(n),
                    None => v.stats.error(),
                }
                self.table
                    .metrics
                    .latency(Op::Write)
                    .observe(start.elapsed());
            }
            None => reply.error(Errno::EBADF),
        }
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
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.handle(fh) {
            Some(v) => {
                let start = Instant::now();
                if !io::fsync(&v.image, datasync, reply) {
                    v.stats.error();
                }
                self.table
                    .metrics
                    .latency(Op::Fsync)
                    .observe(start.elapsed());
            }
            None => reply.error(Errno::EBADF),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.handle(fh) {
            Some(v) => {
                let start = Instant::now();
                if !io::fallocate(&v.image, offset, length, mode, reply) {
                    v.stats.error();
                }
                self.table
                    .metrics
                    .latency(Op::Fallocate)
                    .observe(start.elapsed());
            }
            None => reply.error(Errno::EBADF),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = self.entries(ino) else {
            return reply.error(if self.node(ino).is_some() {
                Errno::ENOTDIR
            } else {
                Errno::ENOENT
            });
        };
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok()
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks: u64 = self
            .table
            .volumes()
            .iter()
            .map(|v| v.image.size() / 4096)
            .sum();
        let files = self.table.read().by_id.len() as u64;
        reply.statfs(blocks, 0, 0, files, 0, 4096, 255, 4096);
    }
}
