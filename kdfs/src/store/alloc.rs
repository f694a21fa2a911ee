//! Local inode numbers: handed out from a counter reserved on disk
//! (`ino.next`) a block at a time, durably before use, and never reused, so
//! that a stale kernel inode can never be confused with a newer file.

use std::sync::Mutex;

use krg_proto::kdfs::{inode_id, InodeId};
use krg_proto::NodeId;

use super::error::Res;
use super::locks::lock;
use crate::format::StoreDir;

/// Local inode numbers are reserved on disk this many at a time.
const INO_BLOCK: u64 = 4096;

pub(super) struct InoAllocator {
    node: NodeId,
    /// (next free local inode number, end of the reserved block, the
    /// number `ino.next` holds: where the next block, or loan, starts).
    range: Mutex<(u64, u64, u64)>,
}

impl InoAllocator {
    /// An allocator for `node` that has nothing reserved yet: the first
    /// number it hands out is `next` (read from `ino.next`).
    pub fn new(node: NodeId, next: u64) -> Self {
        Self {
            node,
            range: Mutex::new((next, next, next)),
        }
    }

    /// A fresh inode id; `top` holds `ino.next`.
    pub fn next(&self, top: &StoreDir) -> Res<InodeId> {
        let mut a = lock(&self.range);
        if a.0 >= a.1 {
            let end = a.2 + INO_BLOCK;
            top.write_ino_next(end)?;
            (a.0, a.1, a.2) = (a.2, end, end);
        }
        let local = a.0;
        a.0 += 1;
        Ok(inode_id(self.node, local))
    }

    /// Reserve `count` local numbers for a directory's loan (see
    /// `store::lending`): the first one. Never handed out here.
    pub fn lend(&self, top: &StoreDir, count: u64) -> Res<u64> {
        let mut a = lock(&self.range);
        let first = a.2;
        top.write_ino_next(first + count)?;
        a.2 = first + count;
        Ok(first)
    }
}
