//! The exposed view: FUSE filesystems that present volume images as regular files.
//! `ImageFile` is one image mounted on a file (`mount --at`); `VolumeTree` is every
//! served volume under one directory mount (`serve`), which counts its I/O in `metrics`. Request handlers for image
//! I/O live in `io` so every view serves bytes the same way.
//!
//! Owns the kernel-facing attributes and error codes; does not open volumes or keys.

mod image_file;
mod io;
pub mod metrics;
mod tree;

pub use image_file::ImageFile;
pub use io::{FsOptions, fuse_config, tune_kernel};
pub use tree::{BY_ID, Invalidations, RemoveError, ServedVolume, VolumeTable, VolumeTree};
