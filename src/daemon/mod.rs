//! The serving side: `mount` (one volume on a file), `umount`, `serve` (every volume of
//! the node under one directory mount), and finding our FUSE mounts
//! in the mount table. Wires `manager`, `image` and `fuse` together; the logic of what to
//! serve lives in those modules.

pub mod http;
pub mod mount;
pub mod mounts;
pub mod serve;
pub mod signals;
