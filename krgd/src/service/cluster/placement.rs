//! Answering "where does transfer X run?" ([`Placement`]): committed by
//! the Raft leader as a `Place` command ([`placements`](super::placements)
//! decides it where it is applied); a member that does not lead forwards
//! the question there.

use std::sync::Arc;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::cluster::{ClusterPeerReply, ClusterPeerRequest};
use krg_proto::NodeId;
use openraft::ServerState;

use super::network::call;
use super::state::ClusterCommand;
use super::{next_hop, not_in_cluster, owners, ClusterService, FORWARD_TIMEOUT};
use crate::service::placement::{kdfs_of, Decided, Known, Placed, Placement};

impl Placement for Arc<ClusterService> {
    fn place(&self, xfer: u64, node: NodeId) -> Placed<'_> {
        Box::pin(self.route_placement(xfer, node, 0))
    }

    fn decided(&self, xfer: u64) -> Decided<'_> {
        Box::pin(async move {
            let joined = self.joined().await?;
            joined.state().placements.get(&xfer).map(|p| p.node)
        })
    }

    fn served_before(&self, node: NodeId) -> Known<'_> {
        Box::pin(async move {
            let Some(joined) = self.joined().await else {
                return false;
            };
            let state = joined.state();
            let of_node = |key: &u64| kdfs_of(*key).is_some_and(|(n, _)| n == node);
            state.placements.keys().any(of_node)
        })
    }
}

impl ClusterService {
    /// Commit "transfer `xfer` runs on `node`" here if this node leads,
    /// else forward it to the leader; the node decided.
    pub(super) async fn route_placement(
        self: &Arc<Self>,
        xfer: u64,
        node: NodeId,
        hops: u8,
    ) -> Result<NodeId, AdminError> {
        let joined = self.joined().await.ok_or_else(not_in_cluster)?;
        let leader = self.reachable_leader(&joined)?;
        if leader != self.ctx.node_id() {
            let ask = ClusterPeerRequest::Place {
                xfer,
                node,
                hops: next_hop(hops)?,
            };
            return match call(&self.ctx.peers, leader, ask, FORWARD_TIMEOUT).await {
                Ok(ClusterPeerReply::Placed(on)) => Ok(on),
                Ok(other) => Err(AdminError::new(
                    ErrorKind::Internal,
                    format!("node {leader} sent {other:?}"),
                )),
                Err(e) => Err(AdminError::new(
                    ErrorKind::Unavailable,
                    format!("the leader, node {leader}, did not answer: {e}"),
                )),
            };
        }
        if joined.raft.metrics().borrow().state != ServerState::Leader {
            return Err(AdminError::new(
                ErrorKind::Unavailable,
                "leadership moved to another node",
            ));
        }
        let cmd = ClusterCommand::Place {
            xfer,
            node,
            now_ms: owners::now_ms(),
        };
        let (result, _) = self.commit_indexed(&joined, cmd).await?;
        result.placed.ok_or_else(|| {
            AdminError::new(
                ErrorKind::Internal,
                "a placement was applied without its node",
            )
        })
    }
}
