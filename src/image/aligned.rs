//! A growable byte buffer whose start is aligned for `O_DIRECT` (4096 bytes, enough for
//! any logical block size up to 4 KiB). Owns only memory; knows nothing about files.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Alignment of the buffer's start, and the granule its capacity grows in.
pub const ALIGN: usize = 4096;

pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: the buffer owns its allocation exclusively (like a `Vec<u8>`), so moving it to
// another thread moves that ownership.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub const fn new() -> Self {
        Self {
            ptr: NonNull::dangling(),
            cap: 0,
        }
    }

    /// The first `len` bytes, growing the buffer if needed. Contents are not re-zeroed on
    /// reuse: every caller overwrites the bytes it uses before reading them. A fresh
    /// allocation is zeroed, so no uninitialised memory is ever exposed.
    pub fn get(&mut self, len: usize) -> &mut [u8] {
        if len > self.cap {
            self.grow(len);
        }
        // SAFETY: `ptr` points to `cap >= len` initialised bytes owned by `self` (or is
        // dangling with len 0), and the returned borrow ties them to `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len) }
    }

    fn grow(&mut self, len: usize) {
        let cap = len.next_multiple_of(ALIGN);
        let layout = Layout::from_size_align(cap, ALIGN).expect("buffer layout");
        // SAFETY: `layout` has a non-zero size (len > cap >= 0, rounded up to ALIGN).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout)
        };
        self.release();
        self.ptr = ptr;
        self.cap = cap;
    }

    fn release(&mut self) {
        if self.cap > 0 {
            let layout = Layout::from_size_align(self.cap, ALIGN).expect("buffer layout");
            // SAFETY: `ptr` was allocated by `grow` with exactly this layout and is freed
            // once (cap is reset by the caller or the buffer is being dropped).
            unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
            self.cap = 0;
        }
    }
}

impl Default for AlignedBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        self.release();
    }
}

/// Whether a buffer and file offset suit `O_DIRECT` at `ALIGN`.
pub fn is_aligned(buf: &[u8], offset: u64) -> bool {
    (buf.as_ptr() as usize).is_multiple_of(ALIGN)
        && buf.len().is_multiple_of(ALIGN)
        && offset.is_multiple_of(ALIGN as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_is_aligned_and_contents_survive_reuse() {
        let mut b = AlignedBuf::new();
        assert!(b.get(0).is_empty());
        let s = b.get(100);
        assert_eq!(s.as_ptr() as usize % ALIGN, 0);
        assert!(s.iter().all(|&x| x == 0), "fresh memory is zeroed");
        s[99] = 7;
        assert_eq!(b.get(100)[99], 7, "reuse keeps the allocation");
        let big = b.get(3 * ALIGN + 1);
        assert_eq!(big.len(), 3 * ALIGN + 1);
        assert_eq!(big.as_ptr() as usize % ALIGN, 0);
        assert!(is_aligned(&big[..ALIGN], 8192));
        assert!(!is_aligned(&big[..ALIGN], 512));
        assert!(!is_aligned(&big[1..ALIGN + 1], 0));
    }
}
