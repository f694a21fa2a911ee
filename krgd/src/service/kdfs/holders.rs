//! Handles nobody will release: the mounts that hold this node's files
//! open, and when they are gone.
//!
//! A mount's open goes as `HeldBy { client }` (its lock client number), and
//! the mount renews a lease (`LockLease`) at every node it holds handles
//! on, as it does where it holds locks. The store records which mount
//! holds each handle ([`Holder`]); a request from another node without a
//! client number is recorded with client 0 (known by its node only).
//! Every second [`Holders::gone`] names the holders whose handles must be
//! closed:
//!
//! - a mount whose lease ran out ([`LEASE`] without an open or a renewal:
//!   it died, or was stopped that long), on a node that is online;
//! - every mount of a node that has been failed, or out of the
//!   membership, for [`LEASE`] (a node back sooner finds its files open).
//!
//! Their handles are then released as the mounts' releases would have
//! been: a file unlinked meanwhile gives its space back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kdfs::lockmgr::LEASE;
use kdfs::store::{Holder, Store};
use krg_proto::NodeId;

use crate::metrics::Metrics;
use crate::sync;

#[derive(Default)]
pub struct Holders {
    /// When each mount last opened something here or renewed its lease.
    seen: Mutex<HashMap<Holder, Instant>>,
    /// Since when each node holding handles has been seen failed or gone.
    offline_since: Mutex<HashMap<NodeId, Instant>>,
}

impl Holders {
    /// Mount `holder` opened a handle here, or renewed its lease.
    pub fn seen(&self, holder: Holder) {
        sync::lock(&self.seen).insert(holder, Instant::now());
    }

    /// The holders of handles in `store` whose handles must be closed now
    /// (see the module's rules); `online` says which nodes are.
    pub fn gone(&self, store: &Store, online: impl Fn(NodeId) -> bool) -> Vec<Holder> {
        let now = Instant::now();
        let holders = store.handle_holders();
        let mut offline = sync::lock(&self.offline_since);
        offline.retain(|n, _| !online(*n) && holders.iter().any(|h| h.0 == *n));
        let mut seen = sync::lock(&self.seen);
        // a mount's renewals are kept while it holds something, or may soon
        seen.retain(|h, t| holders.contains(h) || now.duration_since(*t) < LEASE);
        holders
            .into_iter()
            .filter(|&(node, client)| {
                if !online(node) {
                    let since = *offline.entry(node).or_insert(now);
                    return now.duration_since(since) >= LEASE;
                }
                // (client 0: a mount that does not renew; its node's state
                // is all there is to go by)
                client != 0
                    && seen
                        .get(&(node, client))
                        .is_none_or(|t| now.duration_since(*t) >= LEASE)
            })
            .collect()
    }
}

/// Close the handles `gone` held in `store` (the releases may remove
/// unlinked files: off the runtime's threads), say so and count them.
pub async fn release(store: Arc<Store>, gone: Vec<Holder>, metrics: &Metrics) {
    let done = tokio::task::spawn_blocking(move || {
        gone.into_iter()
            .map(|h| (h, store.release_held_by(h)))
            .collect::<Vec<_>>()
    })
    .await;
    for ((node, client), handles) in done.unwrap_or_default() {
        metrics.kdfs_handles_reaped.inc_by(handles as u64);
        tracing::info!(
            node,
            client,
            handles,
            "kdfs: closed the handles of a mount gone for {} s (it died, or its node failed or left): nothing else would release them",
            LEASE.as_secs()
        );
    }
}
