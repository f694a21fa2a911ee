//! A mount follows its store's superblock: when the root node named there
//! changes (the old one left the cluster, see [`super::root`]), it asks
//! the new one for the root directory and makes it the kernel's inode 1.

use std::path::PathBuf;

use krg_proto::kdfs::{KdfsRequest, KdfsResponse};
use krg_proto::NodeId;

use super::ops::Ops;
use super::root::FOLLOW_EVERY;

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
