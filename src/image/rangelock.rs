//! Range locks over the image: requests that touch the same region serialize (a partial
//! sector write's read-modify-write cannot interleave with another write of that sector),
//! requests on different regions run in parallel. Regions hash onto a fixed set of
//! reader-writer stripes, always taken in ascending order so two requests never deadlock.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Bytes per lock region: a 1 MiB request takes at most five locks, and random 4 KiB
/// requests rarely share a region.
const REGION: u64 = 256 << 10;
/// Stripes the regions hash onto. Many, so unrelated requests rarely share one: with 64,
/// random 4 KiB writes at qd32 waited on each other's stripes (measured, bench/RESULTS.md).
const STRIPES: usize = 4096;

pub struct RangeLocks {
    stripes: Vec<RwLock<()>>,
}

pub enum Guard<'a> {
    Read(#[allow(dead_code)] Vec<RwLockReadGuard<'a, ()>>),
    Write(#[allow(dead_code)] Vec<RwLockWriteGuard<'a, ()>>),
}

impl Default for RangeLocks {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }
}

impl RangeLocks {
    fn stripes_for(&self, offset: u64, len: u64) -> Vec<usize> {
        let first = offset / REGION;
        let last = (offset + len.max(1) - 1) / REGION;
        let mut v: Vec<usize> = if last - first + 1 >= STRIPES as u64 {
            (0..STRIPES).collect()
        } else {
            (first..=last)
                .map(|r| (r % STRIPES as u64) as usize)
                .collect()
        };
        v.sort_unstable();
        v.dedup();
        v
    }

    pub fn read(&self, offset: u64, len: u64) -> Guard<'_> {
        Guard::Read(
            self.stripes_for(offset, len)
                .into_iter()
                .map(|i| self.stripes[i].read().unwrap_or_else(|p| p.into_inner()))
                .collect(),
        )
    }

    pub fn write(&self, offset: u64, len: u64) -> Guard<'_> {
        Guard::Write(
            self.stripes_for(offset, len)
                .into_iter()
                .map(|i| self.stripes[i].write().unwrap_or_else(|p| p.into_inner()))
                .collect(),
        )
    }
}
