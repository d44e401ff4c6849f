//! Our FUSE mounts in `/proc/self/mountinfo` (source `storageos-fuse:<id>`), their
//! unmounting, and recovery of dead mounts (server killed: `ENOTCONN` on every access).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub const FSNAME_PREFIX: &str = "storageos-fuse:";

/// Source of the `serve` mount (one per node).
pub const SERVE_FSNAME: &str = "storageos-fuse:serve";

pub fn fsname_for_volume(id: &str) -> String {
    format!("{FSNAME_PREFIX}{id}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    /// The volume id a `mount --at` of ours serves.
    pub fn volume_id(&self) -> Option<&str> {
        self.source
            .strip_prefix(FSNAME_PREFIX)
            .filter(|_| self.source != SERVE_FSNAME)
    }

    /// The mount of a running `serve`.
    pub fn is_serve(&self) -> bool {
        self.fstype.starts_with("fuse") && self.source == SERVE_FSNAME
    }
}

/// Undoes mountinfo's octal escapes (`\040` for space and friends).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next()?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype: fstype.to_string(),
                source: unescape(source),
            })
        })
        .collect()
}

impl MountEntry {
    /// A FUSE mount made by this product (mounted with mount(2) the type is plain `fuse`,
    /// through fusermount it is `fuse.storageos-fuse`; the source names us either way).
    pub fn is_ours(&self) -> bool {
        self.fstype.starts_with("fuse") && self.source.starts_with(FSNAME_PREFIX)
    }
}

/// Our FUSE mounts.
pub fn our_mounts() -> io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text)
        .into_iter()
        .filter(MountEntry::is_ours)
        .collect())
}

pub fn mounts_of_volume(id: &str) -> io::Result<Vec<MountEntry>> {
    let name = fsname_for_volume(id);
    Ok(our_mounts()?
        .into_iter()
        .filter(|m| m.source == name)
        .collect())
}

/// Mounts of running `serve` processes.
pub fn serve_mounts() -> io::Result<Vec<MountEntry>> {
    Ok(our_mounts()?
        .into_iter()
        .filter(MountEntry::is_serve)
        .collect())
}

pub fn mount_at(path: &Path) -> io::Result<Option<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path))
}

/// A mount whose server is gone: the kernel answers ENOTCONN to every request. `stat`
/// alone is not enough (attributes are cached for a long TTL and answered without the
/// server), so this asks `statfs`, which always reaches the server. A live server that does
/// not answer within a few seconds (hung) is not called dead: the question is asked on a
/// helper thread so the caller never blocks on it.
pub fn is_dead_mount(path: &Path) -> bool {
    if matches!(std::fs::metadata(path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN)) {
        return true;
    }
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
        // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory
        // of the size statfs(2) fills; it is only written by the kernel, never read here.
        let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
        let dead = rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN);
        let _ = tx.send(dead);
    });
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .unwrap_or(false)
}

fn umount2(path: &Path, flags: i32) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unmounts `path`. A busy mount (loop device attached, file open) is left mounted and
/// reported as `EBUSY`; a dead mount is detached.
pub fn unmount(path: &Path) -> io::Result<()> {
    match umount2(path, 0) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) && is_dead_mount(path) => {
            umount2(path, libc::MNT_DETACH)
        }
        other => other,
    }
}

/// Detaches a dead mount so the path can be served again.
pub fn clear_dead_mount(path: &Path) -> io::Result<()> {
    umount2(path, libc::MNT_DETACH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let text = "36 35 98:0 / /mnt1 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    50 30 0:45 / /run/a\\040b.img rw,nosuid,nodev relatime shared:9 - fuse.storageos-fuse storageos-fuse:4276fc07-7d85-70bf-35a0-f0b005e55e0f rw,user_id=0\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mount_point, PathBuf::from("/run/a b.img"));
        assert_eq!(
            m[1].volume_id(),
            Some("4276fc07-7d85-70bf-35a0-f0b005e55e0f")
        );
        assert_eq!(m[0].fstype, "ext3");
    }
}
