//! A mirrored file system (`--replicas 2` or `3`): a request to a node
//! that does not answer goes to its mirrors, first to last
//! (`crate::mirror`), one of which serves it from its copy (reads) or as
//! the store's server once it took it over.
//!
//! A node does not answer when its connection is refused or reset, or when
//! the cluster marks it failed while a request waits on it (the mount asks
//! its krgd which members failed every [`FAILURES_EVERY`]: a node whose
//! network vanished sends no reset). A file the mount opened on the failed
//! node is opened again on the mirror at its next read or write, and the
//! handle goes on there ([`Reopened`]). While this node's own krgd does
//! not answer (or the cluster counts this node failed), the mount stops
//! reading its node's files in place: they go to the mirror too.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use krg_proto::kdfs::{KdfsRequest, KdfsResponse, MIRROR_HANDLE};
use krg_proto::NodeId;

use super::{local_info, Cluster};
use crate::mirror;

/// How often a mirrored mount asks its krgd which members failed.
const FAILURES_EVERY: Duration = Duration::from_millis(200);

/// Something kept per handle a node (or its mirror) gave: (node, handle)
/// to `T`.
pub(super) struct HandleMap<T>(Mutex<HashMap<(NodeId, u64), T>>);

impl<T> Default for HandleMap<T> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<T: Copy> HandleMap<T> {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(NodeId, u64), T>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, node: NodeId, fh: u64) -> Option<T> {
        self.map().get(&(node, fh)).copied()
    }

    fn put(&self, node: NodeId, fh: u64, value: T) {
        self.map().insert((node, fh), value);
    }

    fn forget(&self, node: NodeId, fh: u64) {
        self.map().remove(&(node, fh));
    }
}

/// Handles a failed node gave, opened again on its mirror: to the
/// mirror's handle.
pub(super) type Reopened = HandleMap<u64>;

/// Which mirror gave each handle a mirror gave (`--replicas 3`: the
/// requests using it go back there), by the handle as marked.
pub(super) type MirrorHandles = HandleMap<NodeId>;

/// The handle a request uses, as a mirror marked it, and whether the
/// request closes it.
fn mirror_handle(req: &KdfsRequest) -> Option<(u64, bool)> {
    let closes = matches!(
        mirror::unwrapped_ref(req),
        KdfsRequest::Release { .. } | KdfsRequest::ReleaseDir { .. }
    );
    mirror::handle_of(req)
        .filter(|fh| fh & MIRROR_HANDLE != 0)
        .map(|fh| (fh, closes))
}

/// The handle an answer gives, if any.
fn given_handle(resp: &KdfsResponse) -> Option<u64> {
    match resp {
        KdfsResponse::Handle(fh) | KdfsResponse::StripedHandle { fh, .. } => Some(*fh),
        KdfsResponse::Created { fh, .. } => *fh,
        _ => None,
    }
}

impl Cluster {
    /// For a mirrored file system: keep asking the local krgd which
    /// members the cluster marks failed, so that a request waiting on a
    /// node that vanished (no reset, no answer) goes to its mirror as soon
    /// as the cluster knows, not at its timeout. Ends with the mount.
    pub async fn follow_failures(self: Arc<Self>) {
        if self.mirrors() == 0 {
            return;
        }
        let weak = Arc::downgrade(&self);
        drop(self);
        loop {
            tokio::time::sleep(FAILURES_EVERY).await;
            let Some(me) = weak.upgrade() else { return };
            // This node's own store: read in place only while its krgd
            // answers and the cluster counts it in (else its mirror may
            // serve newer data).
            let info = local_info(&me.socket).await;
            let here = me.me.node;
            let down = info.as_ref().map_or(true, |i| i.failed.contains(&here));
            me.local_down.store(down, Ordering::Release);
            let Ok(info) = info else { continue };
            let mut failed = me.failed.lock().unwrap_or_else(|p| p.into_inner());
            if *failed != info.failed {
                *failed = info.failed;
                me.failures.notify_waiters();
            }
        }
    }

    /// Returns when the members the cluster marks failed change (never,
    /// but for a mirrored file system).
    pub async fn failures_changed(&self) {
        self.failures.notified().await;
    }

    pub(super) fn is_failed(&self, node: NodeId) -> bool {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&node)
    }

    /// Returns once the cluster marks `node` failed.
    pub(super) async fn until_failed(&self, node: NodeId) {
        loop {
            let changed = self.failures.notified();
            if self.is_failed(node) {
                return;
            }
            changed.await;
        }
    }

    /// [`Cluster::call_on`] of a mirrored file system.
    pub(super) async fn call_mirrored(
        &self,
        node: NodeId,
        lane: u8,
        req: KdfsRequest,
        timeout: Duration,
    ) -> Result<KdfsResponse, i32> {
        if mirror::uses_mirror_handle(&req) {
            return self.via_mirror(node, req, timeout).await;
        }
        let handle = mirror::file_handle(&req);
        if let Some((_, fh)) = handle {
            if let Some(on_mirror) = self.reopened.get(node, fh) {
                return self.on_reopened(node, fh, on_mirror, req, timeout).await;
            }
        }
        let again = mirror::may_ask_mirror(&req).then(|| req.clone());
        match (self.direct(node, lane, req, timeout).await, again, handle) {
            (Err(libc::ENOTCONN), Some(req), Some((ino, fh))) => {
                self.reopen(node, ino, fh, req, timeout).await
            }
            (Err(libc::ENOTCONN), Some(req), None) => self.via_mirror(node, req, timeout).await,
            (r, _, _) => r,
        }
    }

    /// `req` uses handle `fh` of `node`, which does not answer: open the
    /// file again on the mirror and go on there.
    async fn reopen(
        &self,
        node: NodeId,
        ino: u64,
        fh: u64,
        req: KdfsRequest,
        timeout: Duration,
    ) -> Result<KdfsResponse, i32> {
        if matches!(mirror::unwrapped_ref(&req), KdfsRequest::Release { .. }) {
            // Gone with the node: nothing to close.
            return Ok(KdfsResponse::Done);
        }
        let open = KdfsRequest::Open { ino, write: true };
        let on_mirror = match self.via_mirror(node, open, timeout).await? {
            KdfsResponse::Handle(h) => h,
            _ => return Err(libc::EIO),
        };
        self.reopened.put(node, fh, on_mirror);
        self.on_reopened(node, fh, on_mirror, req, timeout).await
    }

    async fn on_reopened(
        &self,
        node: NodeId,
        fh: u64,
        on_mirror: u64,
        req: KdfsRequest,
        timeout: Duration,
    ) -> Result<KdfsResponse, i32> {
        let release = matches!(mirror::unwrapped_ref(&req), KdfsRequest::Release { .. });
        let r = self
            .via_mirror(
                node,
                mirror::map_handle(mirror::unwrapped(req), |_| on_mirror | MIRROR_HANDLE),
                timeout,
            )
            .await;
        if release {
            self.reopened.forget(node, fh);
        }
        r
    }

    /// Ask `node`'s mirrors for `req`, about `node`'s files: the one that
    /// gave the handle it uses, or each, first to last, until one does
    /// not answer ENOTCONN (down, no full copy, or fed by another mirror
    /// that serves the store).
    async fn via_mirror(
        &self,
        node: NodeId,
        req: KdfsRequest,
        timeout: Duration,
    ) -> Result<KdfsResponse, i32> {
        let handle = mirror_handle(&req);
        let gave = handle.and_then(|(fh, _)| self.mirror_handles.get(node, fh));
        let candidates = match gave {
            Some(m) => vec![m],
            None => mirror::mirrors_of(node, &self.nodes(), self.mirrors()),
        };
        let req = mirror::unwrapped(req);
        let mut answer = Err(libc::ENOTCONN);
        for m in candidates {
            let q = KdfsRequest::FromMirror {
                node,
                req: Box::new(req.clone()),
            };
            answer = self.direct(m, 0, q, timeout).await;
            if matches!(answer, Err(libc::ENOTCONN)) {
                continue;
            }
            match (&answer, handle) {
                (_, Some((fh, true))) => self.mirror_handles.forget(node, fh),
                (Ok(resp), _) => {
                    if let Some(fh) = given_handle(resp) {
                        self.mirror_handles.put(node, fh, m);
                    }
                }
                _ => {}
            }
            break;
        }
        answer
    }
}
