//! Lock stripes: the store serialises the changes of one directory (and of
//! one inode's link count) with a mutex chosen by inode number out of a
//! fixed set, so that concurrent requests on unrelated inodes rarely wait
//! on each other and no per-inode lock table has to be kept.
//!
//! Lock poisoning: a panic while holding a store lock leaves the on-disk
//! state as consistent as the syscalls made it, so the lock is taken anyway.

use std::sync::{Mutex, MutexGuard};

use krg_proto::kdfs::{inode_local, InodeId};

const LOCK_STRIPES: usize = 64;

/// Take `m`, whether or not a panicking holder poisoned it.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) struct Stripes(Vec<Mutex<()>>);

impl Stripes {
    pub fn new() -> Self {
        Self((0..LOCK_STRIPES).map(|_| Mutex::new(())).collect())
    }

    fn index(ino: InodeId) -> usize {
        (inode_local(ino) as usize) % LOCK_STRIPES
    }

    /// Lock the stripe of `ino`.
    pub fn lock(&self, ino: InodeId) -> MutexGuard<'_, ()> {
        lock(&self.0[Self::index(ino)])
    }

    /// Lock the stripes of several inodes in a fixed order (no deadlock).
    pub fn lock_many(&self, inos: &[InodeId]) -> Vec<MutexGuard<'_, ()>> {
        let mut idx: Vec<usize> = inos.iter().map(|i| Self::index(*i)).collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().map(|i| lock(&self.0[i])).collect()
    }
}
