//! Stopping a server: SIGTERM/SIGINT unmount its FUSE mount, after which the session ends
//! and the process exits cleanly. Shared by `mount` and `serve`.
//!
//! Owns the signal thread only; what runs after the unmount is the caller's.

use std::path::PathBuf;

use super::mounts;

/// SIGTERM/SIGINT unmount `at`. While a loop device or an open file holds the mount the
/// unmount is refused (EBUSY) and serving goes on: stopping would fail every I/O of the
/// filesystem on top. The error says what to detach; a further signal tries again.
pub fn unmount_on_signal(at: PathBuf) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) else {
        tracing::warn!("cannot install signal handlers; stop with `storageos-fuse umount`");
        return;
    };
    std::thread::spawn(move || {
        for sig in signals.forever() {
            tracing::info!(signal = sig, "stopping: unmounting {}", at.display());
            match mounts::unmount(&at) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => tracing::error!(
                    "cannot unmount {}: it is in use (a loop device or open file); detach it (losetup -d) and signal again",
                    at.display()
                ),
                Err(e) => tracing::error!("cannot unmount {}: {e}", at.display()),
            }
        }
    });
}
