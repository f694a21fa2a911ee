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
use krg_proto::kdfs::KdfsRequest;
use krg_proto::NodeId;

use crate::metrics::Metrics;
use crate::sync;

/// `req` unwrapped from its `HeldBy`, and the mount that will hold the
/// handle it opens, if it opens one: the `HeldBy` mount, else (a request
/// of node `from`, not this node `me`) that node's mount 0. A `HeldBy`
/// around anything but an opening request is refused (EINVAL).
pub fn opening(
    req: KdfsRequest,
    from: NodeId,
    me: NodeId,
) -> Result<(KdfsRequest, Option<Holder>), i32> {
    match req {
        KdfsRequest::HeldBy { client, req } if req.opens_handle() => {
            Ok((*req, Some((from, client))))
        }
        KdfsRequest::HeldBy { .. } => Err(libc::EINVAL),
        req => {
            let holder = (from != me && req.opens_handle()).then_some((from, 0));
            Ok((req, holder))
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> KdfsRequest {
        KdfsRequest::Open {
            ino: 1,
            write: false,
        }
    }

    #[test]
    fn an_open_is_held_by_the_mount_that_says_so_else_by_its_node() {
        let held = KdfsRequest::HeldBy {
            client: 7,
            req: Box::new(open()),
        };
        assert!(matches!(
            opening(held, 2, 1),
            Ok((KdfsRequest::Open { .. }, Some((2, 7))))
        ));
        assert_eq!(opening(open(), 2, 1).map(|r| r.1), Ok(Some((2, 0))));
        // this node's own requests without a client: nobody known to hold
        assert_eq!(opening(open(), 1, 1).map(|r| r.1), Ok(None));
        let read = KdfsRequest::GetAttr { ino: 1 };
        assert_eq!(opening(read, 2, 1).map(|r| r.1), Ok(None));
    }

    #[test]
    fn held_by_around_anything_but_an_open_is_refused() {
        let inner = [
            KdfsRequest::GetAttr { ino: 1 },
            KdfsRequest::HeldBy {
                client: 1,
                req: Box::new(open()),
            },
            KdfsRequest::As {
                client: 1,
                req: Box::new(open()),
            },
        ];
        for req in inner {
            let held = KdfsRequest::HeldBy {
                client: 7,
                req: Box::new(req),
            };
            assert_eq!(opening(held, 2, 1).map(|r| r.1), Err(libc::EINVAL));
        }
    }
}
