//! One watcher per node this mount caches from: a `Watch` always waiting
//! there, whose answers say what to forget; the next `Watch` acknowledges.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use krg_proto::kdfs::{Inval, KdfsRequest, KdfsResponse};
use krg_proto::NodeId;

use super::Cache;
use crate::client::conn::Cluster;

/// Pause before asking a node that did not answer again, doubled at each
/// failure up to [`RETRY_MAX`].
const RETRY: Duration = Duration::from_millis(300);
const RETRY_MAX: Duration = Duration::from_secs(3);
/// Longer than the node's poll, so that an idle node answers first.
const WATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Keep a `Watch` waiting at `node` for as long as the mount lives.
pub(super) async fn run(
    cache: Arc<Cache>,
    cluster: Arc<Cluster>,
    node: NodeId,
    registered: Arc<AtomicBool>,
) {
    let mut acked = 0;
    let mut pause = RETRY;
    while !cache.leaving.load(Ordering::SeqCst) {
        let q = KdfsRequest::Watch {
            client: cache.client,
            acked,
            ttl_ms: cache.ttl_ms(),
        };
        match cluster.call_within(node, q, WATCH_TIMEOUT).await {
            Ok(KdfsResponse::Invalidate { seq, items }) => {
                if node == cache.local {
                    cache.loans.krgd_answered(true);
                    // Given back before the acknowledgement below.
                    cache.loans.recall(&items).await;
                }
                let c = cache.clone();
                // The notifications are system calls (one may wait for a
                // directory's lock): off the runtime's threads.
                let _ = tokio::task::spawn_blocking(move || c.forget(&items)).await;
                acked = seq;
                pause = RETRY;
                if !registered.swap(true, Ordering::SeqCst) {
                    tracing::debug!(node, "kdfs: caching what node {node} serves");
                }
            }
            other => {
                if node == cache.local {
                    cache.loans.krgd_answered(false);
                }
                if registered.swap(false, Ordering::SeqCst) {
                    tracing::info!(node, answer = ?other.err(),
                        "kdfs: node {node} stopped answering callbacks: forgetting what it gave");
                    let c = cache.clone();
                    let _ = tokio::task::spawn_blocking(move || c.forget_node(node)).await;
                }
                acked = 0;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

impl Cache {
    /// The mount is gone (unmounted): stop watching, and tell every node
    /// watched to forget this mount now. Otherwise a change there would
    /// wait for its acknowledgement until the node takes it for gone.
    pub async fn leave(&self, cluster: &Cluster) {
        self.leaving.store(true, Ordering::SeqCst);
        let nodes: Vec<NodeId> = super::lock(&self.nodes).keys().copied().collect();
        for node in nodes {
            let q = KdfsRequest::Unwatch {
                client: self.client,
            };
            if let Err(e) = cluster.call(node, q).await {
                tracing::debug!(node, errno = e, "kdfs: node not told of the unmount");
            }
        }
    }

    /// Carry out what a node said to forget.
    fn forget(&self, items: &[Inval]) {
        let Some(k) = self.kernel.get() else { return };
        let mut entries = Vec::new();
        for i in items {
            match i {
                Inval::Entry { dir, name } => entries.push((*dir, name.clone())),
                Inval::Attr(ino) => k.forget_attr(*ino),
                Inval::Volatile(ino) => {
                    self.set_volatile(*ino, true);
                    k.forget_attr(*ino);
                }
                Inval::Stable(ino) => self.set_volatile(*ino, false),
                // (given back by the watcher already)
                Inval::Recall(_) => {}
                Inval::NotSole => {
                    tracing::info!("kdfs: another mount of this node is up: this one keeps no regular file's attributes in the kernel from now on");
                    self.no_longer_sole();
                    for ino in self.take_given(self.local) {
                        k.forget_attr(ino);
                    }
                }
            }
        }
        k.forget_entries(&entries);
    }

    /// The node lost track of this mount (its krgd restarted, or the link
    /// broke): forget every name and the attributes it gave.
    fn forget_node(&self, node: NodeId) {
        let Some(k) = self.kernel.get() else { return };
        k.forget_all_entries();
        for ino in self.take_given(node) {
            k.forget_attr(ino);
        }
    }
}
