//! The exposed view: FUSE filesystems that present volume images as regular files.
//! `ImageFile` is one image mounted on a file (`mount --at`). Request handlers for image
//! I/O live in `io` so every view serves bytes the same way.
//!
//! Owns the kernel-facing attributes and error codes; does not open volumes or keys.

mod image_file;
mod io;

pub use image_file::ImageFile;
pub use io::{FsOptions, fuse_config, tune_kernel};
