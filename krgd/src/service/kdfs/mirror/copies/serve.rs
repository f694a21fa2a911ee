//! Serving a failed node's files from the copy kept here: the whole
//! store once this node took it over (its changes sent on to the store's
//! other mirror, `--replicas 3`), else reads from the complete copy; lock
//! requests by the lock manager of the store taken over. Handles opened
//! here are marked as the mirror's.

use std::sync::Arc;
use std::time::Duration;

use kdfs::lockmgr::is_lock_request;
use kdfs::mirror::{is_mirror_read, map_handle, unwrapped_ref};
use kdfs::store::Store;
use krg_proto::kdfs::{KdfsRequest, KdfsResponse, MIRROR_HANDLE};
use krg_proto::NodeId;

use super::{errno, Copies, Slot, TAKEOVER_WAIT};
use crate::context::NodeContext;

impl Copies {
    /// A request about `owner`'s files, from a mount on node `from`, while
    /// `owner` does not answer: served whole when this node took the store
    /// over, else reads from the complete copy; handles opened here are
    /// marked as the mirror's.
    ///
    /// A copy fed by another mirror (which serves the store: `--replicas
    /// 3`) answers reads only; anything else is `ENOTCONN` at once, and
    /// the mount asks that mirror.
    pub async fn serve(
        &self,
        ctx: &Arc<NodeContext>,
        owner: NodeId,
        from: NodeId,
        req: KdfsRequest,
    ) -> KdfsResponse {
        let Some(c) = self.get(owner) else {
            return errno(libc::ENOTCONN);
        };
        if is_lock_request(unwrapped_ref(&req)) {
            return Self::serve_lock(&c, from, req).await;
        }
        let mut waited = Duration::ZERO;
        let (served, view, onward, by_owner) = loop {
            let (served, view, onward, by_owner) = {
                let c = c.lock().await;
                let by_owner = c.fed_by == owner;
                (c.served.clone(), c.view.clone(), c.onward.clone(), by_owner)
            };
            // A change while the owner is not yet marked failed waits for
            // the takeover a little, rather than failing at once.
            let settled = served.is_some() || view.is_none() || !by_owner;
            if settled || is_mirror_read(&req) || waited >= TAKEOVER_WAIT {
                break (served, view, onward, by_owner);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        };
        let store = match (served, view) {
            (Some(s), _) => s,
            (None, Some(_)) if !is_mirror_read(&req) && !by_owner => return errno(libc::ENOTCONN),
            (None, Some(_)) if !is_mirror_read(&req) => return errno(libc::EROFS),
            (None, Some(v)) => v,
            (None, None) => return errno(libc::ENOTCONN),
        };
        let req = map_handle(kdfs::mirror::unwrapped(req), |fh| fh & !MIRROR_HANDLE);
        let named = kdfs::mirror::inode_named(&req);
        let sent_on = onward
            .filter(|_| !Store::is_read_only(&req))
            .map(|o| (o, req.clone()));
        let s = store.clone();
        let resp = match tokio::task::spawn_blocking(move || s.handle(req)).await {
            Ok(resp) => resp,
            Err(_) => return errno(libc::EIO),
        };
        if lacks(ctx, owner, &store, named, &resp) {
            // An inode of fewer copies than this partial copy keeps: no
            // live node holds it now.
            return errno(libc::EIO);
        }
        if let Some((onward, req)) = sent_on {
            match onward.changed(ctx, &store, &req, &resp).await {
                Ok(()) => {}
                Err(crate::service::kdfs::mirror::NotMirrored::Unreachable) => {
                    return errno(libc::EIO)
                }
                Err(crate::service::kdfs::mirror::NotMirrored::TakenOver) => {
                    return errno(libc::EROFS)
                }
            }
        }
        mark(resp)
    }
}

impl Copies {
    /// A lock request about the files of the store copied in `c`: for the
    /// lock manager of the store taken over (which a complete copy waits
    /// for a little, as a change does).
    async fn serve_lock(c: &Slot, from: NodeId, req: KdfsRequest) -> KdfsResponse {
        let mut waited = Duration::ZERO;
        let locks = loop {
            let (locks, complete) = {
                let c = c.lock().await;
                // (fed by another mirror: that one serves the locks)
                (
                    c.locks.clone(),
                    c.view.is_some() && c.fed_by == c.disk.owner(),
                )
            };
            match locks {
                Some(l) => break l,
                None if !complete || waited >= TAKEOVER_WAIT => return errno(libc::ENOTCONN),
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        };
        locks.handle(from, kdfs::mirror::unwrapped(req)).await
    }

    /// The lock managers' sweep (every second) for the stores served here.
    pub async fn expire_locks(&self, online: impl Fn(NodeId) -> bool) {
        for slot in self.all() {
            let locks = slot.lock().await.locks.clone();
            if let Some(l) = locks {
                l.expire(&online);
            }
        }
    }
}

/// `resp` with the handles it gives marked as the mirror's.
fn mark(resp: KdfsResponse) -> KdfsResponse {
    use KdfsResponse as A;
    match resp {
        A::Handle(fh) => A::Handle(fh | MIRROR_HANDLE),
        A::Created { attr, fh, stripe } => A::Created {
            attr,
            fh: fh.map(|f| f | MIRROR_HANDLE),
            stripe,
        },
        A::StripedHandle { fh, layout } => A::StripedHandle {
            fh: fh | MIRROR_HANDLE,
            layout,
        },
        r => r,
    }
}

/// Whether `resp` (ENOENT) says that this partial copy of `owner`'s
/// store lacks inode `named`, rather than that a name is not there.
fn lacks(
    ctx: &NodeContext,
    owner: NodeId,
    store: &Store,
    named: Option<krg_proto::kdfs::InodeId>,
    resp: &KdfsResponse,
) -> bool {
    let Some(ino) = named else { return false };
    matches!(resp, KdfsResponse::Errno(libc::ENOENT))
        && super::super::standing::is_partial(ctx, owner, store)
        && !store.holds(ino)
}
