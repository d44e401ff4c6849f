//! storageos-fuse: encrypted block volumes for Kubernetes nodes, exposed through FUSE.
//!
//! Modules, one concern each: `crypt` (XTS, key hierarchy), `keys` (Secrets and key
//! sources), `volume` (names, metadata, backing files), `image` (sector I/O), `fuse`
//! (the exposed view), `manager` (the logic of every command), `daemon` (mount and
//! serve), `cli` (flags and output).

pub mod cli;
pub mod crypt;
pub mod daemon;
pub mod error;
pub mod fsutil;
pub mod fuse;
pub mod image;
pub mod keys;
pub mod manager;
pub mod volume;
