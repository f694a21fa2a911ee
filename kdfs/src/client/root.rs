//! The root directory's kDFS id, which the kernel knows as inode 1. It
//! changes when the root node leaves the cluster: its hand-over copies the
//! root directory to another node and every store's superblock then names
//! that node (docs/kdfs.md, A node that leaves). A mount watches its own
//! store's superblock and, when the root node there changes, asks the new
//! one for the root directory and makes it the kernel's inode 1
//! ([`super::follow`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use krg_proto::kdfs::InodeId;

/// How often the mount reads its store's superblock for the root node
/// (the hand-over waits longer than this before the old root goes).
pub const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// The root directory's id, shared by the mount's parts.
#[derive(Debug)]
pub struct Root(AtomicU64);

impl Root {
    pub fn new(ino: InodeId) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(ino)))
    }

    pub fn get(&self) -> InodeId {
        self.0.load(Ordering::Acquire)
    }

    /// The root directory is `ino` now (see [`super::follow`]).
    pub fn set(&self, ino: InodeId) {
        self.0.store(ino, Ordering::Release);
    }
}
