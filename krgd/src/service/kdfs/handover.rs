//! Handing a leaving node's kDFS data over: `krgadm nodes del` of a live
//! node waits (bounded, `service/cluster/leave.rs`) until every registered
//! hand-over service is done with it, processes first, then this one.
//!
//! The leader asks the leaving node (`KdfsRequest::HandOver`) every 100 ms.
//! The first ask starts one pass there ([`super::drain`]): from then on the
//! node's store refuses every change with EROFS (read-only, so that what is
//! copied is what stays), its inodes are copied to another member and
//! every name of them is pointed at the copy; then the store is detached.
//! The answer is "done" once the pass is over, whatever its outcome (a
//! pass that could not move everything logs why, and the store stays
//! attached, read-only, for as long as this krgd runs).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::auth::Identity;
use krg_proto::cluster::NodeState;
use krg_proto::identity::Role;
use krg_proto::kdfs::{KdfsRequest, KdfsResponse};
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::NodeId;

use super::KdfsService;
use crate::service::cluster::{ask_leaving, HandOver};

/// How long the leave waits for the copy (about 100 GB on a gigabit link).
const COPY_PATIENCE: Duration = Duration::from_secs(15 * 60);

/// Requests that change a store: refused while it is handed over.
pub(super) fn changes_store(req: &KdfsRequest) -> bool {
    use KdfsRequest as Q;
    matches!(
        req,
        Q::Create { .. }
            | Q::MakeInode { .. }
            | Q::AddEntry { .. }
            | Q::RemoveEntry { .. }
            | Q::ReplaceEntry { .. }
            | Q::Rename { .. }
            | Q::IncLink { .. }
            | Q::DecLink { .. }
            | Q::Touch { .. }
            | Q::RemoveDir { .. }
            | Q::SetAttr { .. }
            | Q::Write { .. }
            | Q::Fallocate { .. }
            | Q::SetXattr { .. }
            | Q::RemoveXattr { .. }
            | Q::Unlink { .. }
            | Q::SetStripePolicy { .. }
            | Q::SetInodeReplicas { .. }
            | Q::SetLayout { .. }
            | Q::StripeWrite { .. }
            | Q::StripeTruncate { .. }
            | Q::StripeDrop { .. }
            | Q::Extend { .. }
            | Q::ReplaceLayout { .. }
            | Q::StripeRename { .. }
            | Q::SetRoot { .. }
            | Q::StripeAdopt { .. }
            | Q::Open { write: true, .. }
    )
}

impl KdfsService {
    /// Whether this node's store is being handed over (read-only).
    pub(super) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// `KdfsRequest::HandOver`, asked by the leader: only a member may
    /// ask, and only a node that is leaving hands anything over.
    pub(super) fn asked_to_hand_over(
        self: &Arc<Self>,
        from: &Identity,
    ) -> Result<KdfsResponse, AdminError> {
        if from.role != Role::Node {
            return Err(AdminError::new(
                ErrorKind::PermissionDenied,
                "only a member krgd may ask for a hand-over",
            ));
        }
        Ok(KdfsResponse::HandedOver {
            done: self.hand_over_if_leaving(),
        })
    }

    /// Start or follow this node's pass, if it is leaving; true when there
    /// is nothing (more) to wait for.
    fn hand_over_if_leaving(self: &Arc<Self>) -> bool {
        let me = self.ctx.node_id();
        let leaving = self
            .ctx
            .view()
            .node(me)
            .is_some_and(|n| n.state == NodeState::Leaving);
        !leaving || self.progress()
    }

    /// On the leaving node: start a pass if none runs; true once it ended
    /// (or when there is no store to hand over).
    fn progress(self: &Arc<Self>) -> bool {
        self.pass.progress(|| {
            let store = self.current()?;
            let svc = self.clone();
            Some(tokio::spawn(async move {
                super::drain::hand_over(&svc, store).await
            }))
        })
    }
}

/// The kDFS hand-over, as the leader's [`HandOver`] service.
pub struct KdfsHandOver {
    svc: Arc<KdfsService>,
}

impl KdfsHandOver {
    /// For this node's kDFS service.
    pub fn new(svc: Arc<KdfsService>) -> Arc<Self> {
        Arc::new(Self { svc })
    }
}

impl HandOver for KdfsHandOver {
    fn name(&self) -> &'static str {
        "kdfs"
    }

    /// Copying a store takes as long as its data does.
    fn patience(&self) -> Duration {
        COPY_PATIENCE
    }

    /// A pass points names in other nodes' directories at copies: a node
    /// that left at the same time would refuse (EROFS) while it hands
    /// over itself.
    fn one_node_at_a_time(&self) -> bool {
        true
    }

    fn handed_over(&self, node: NodeId) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            if node == self.svc.ctx.node_id() {
                return self.svc.hand_over_if_leaving();
            }
            let ask = PeerRequest::Kdfs(KdfsRequest::HandOver);
            ask_leaving(&self.svc.ctx.peers, node, ask, "kDFS data", |a| match a {
                PeerResponse::Kdfs(KdfsResponse::HandedOver { done }) => Some(*done),
                _ => None,
            })
            .await
        })
    }
}
