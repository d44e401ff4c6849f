//! The served-volume lock: an exclusive `flock` on the backing file, held by the process
//! that serves the volume. A second server is refused; `delete` checks it too. The kernel
//! drops it when the process dies, so a crash never leaves a stale lock.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Tries to take the lock without waiting. `Ok(false)`: another process holds it.
pub fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a valid, open descriptor owned by `file`; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Whether some process serves the file at `path` right now.
pub fn is_locked(path: &std::path::Path) -> io::Result<bool> {
    let f = File::open(path)?;
    Ok(!try_lock(&f)?)
    // Dropping `f` closes it, which releases our probe lock.
}
