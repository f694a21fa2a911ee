//! The root directory's kDFS id, which the kernel knows as inode 1. It
//! changes when the root node leaves the cluster: its hand-over copies the
//! root directory to another node and every store's superblock then names
//! that node (docs/kdfs.md, A node that leaves). A mount watches its own
//! store's superblock and, when the root node there changes, asks the new
//! one for the root directory and makes it the kernel's inode 1.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use krg_proto::kdfs::{InodeId, KdfsRequest, KdfsResponse};
use krg_proto::NodeId;

use super::ops::Ops;

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

    fn set(&self, ino: InodeId) {
        self.0.store(ino, Ordering::Release);
    }
}

/// Follow the root node named by the superblock of store `dir`, which was
/// `root_node` when the mount started, for as long as the mount lives.
pub async fn follow(ops: std::sync::Weak<Ops>, dir: PathBuf, mut root_node: NodeId) {
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        let Some(ops) = ops.upgrade() else { return };
        let now = match crate::format::read_superblock(&dir) {
            Ok(sb) => sb.root_node,
            Err(_) => continue, // being rewritten, or gone with the mount
        };
        if now == root_node {
            continue;
        }
        match ops.cluster.call(now, KdfsRequest::Root).await {
            Ok(KdfsResponse::Root(ino)) => {
                tracing::info!(from = root_node, to = now, root = %format!("{ino:x}"),
                    "kdfs: the root directory moved to another node");
                ops.root.set(ino);
                ops.cache.root_moved();
                root_node = now;
            }
            // not serving it yet: asked again next time
            other => tracing::debug!(
                ?other,
                node = now,
                "kdfs: the new root node has no root yet"
            ),
        }
    }
}
