//! Releases of file handles, batched. The kernel sends a release after
//! `close(2)` has returned and waits for nothing; each costs the owner a
//! request. Gathered for a millisecond and sent as one `ReleaseMany` per
//! node, they cost a create-and-close loop one request less per file.
//!
//! What a delayed release can change: an unlinked file's space is freed
//! that much later, and a file written through another node stays volatile
//! for its node's mounts that much longer (its attributes not cached).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use krg_proto::kdfs::{inode_node, InodeId, KdfsRequest as Q};
use krg_proto::NodeId;
use tokio::sync::Notify;

use super::cache::Cache;
use super::conn::Cluster;

/// How long releases are gathered before they are sent.
const WINDOW: Duration = Duration::from_millis(1);
/// Most handles in one request.
const MAX_BATCH: usize = 1024;

#[derive(Default)]
pub struct Releases {
    pending: Mutex<HashMap<NodeId, Vec<(InodeId, u64)>>>,
    wake: Notify,
}

impl Releases {
    /// Release handle `fh` of `ino` soon.
    pub fn push(&self, ino: InodeId, fh: u64) {
        self.lock()
            .entry(inode_node(ino))
            .or_default()
            .push((ino, fh));
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Vec<(InodeId, u64)>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send every release queued so far.
    pub async fn flush(&self, cluster: &Cluster, cache: &Cache) {
        let batches = std::mem::take(&mut *self.lock());
        for (node, handles) in batches {
            for chunk in handles.chunks(MAX_BATCH) {
                let q = Q::ReleaseMany {
                    handles: chunk.to_vec(),
                };
                if let Err(e) = cluster.call(node, cache.wrap(node, q)).await {
                    tracing::debug!(node, errno = e, "kdfs: releases not delivered (the node forgot its handles if it restarted)");
                }
            }
        }
    }

    /// Send what is queued, a moment after it was queued, for as long as the
    /// mount lives.
    pub async fn run(self: Arc<Self>, cluster: Arc<Cluster>, cache: Arc<Cache>) {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(WINDOW).await;
            self.flush(&cluster, &cache).await;
        }
    }
}
