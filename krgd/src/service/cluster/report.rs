//! What `cluster status` and `nodes status` answer, and the view published to
//! the other services of this node.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use krg_proto::cluster::{ClusterStatus, Health, NodeInfo, NodeState};

use super::{ClusterService, Joined};
use crate::context::ClusterView;
use crate::sync;

impl ClusterService {
    pub(crate) async fn status(self: &Arc<Self>) -> ClusterStatus {
        let base = ClusterStatus {
            session: self.ctx.config.session_id,
            this_node: self.ctx.node_id(),
            epoch: 0,
            term: 0,
            leader: None,
            members: Vec::new(),
            online: 0,
            health: Health::NotStarted,
        };
        let Some(joined) = self.joined().await else {
            return base;
        };
        let state = joined.state();
        // Term and leader from one metrics snapshot.
        let (term, leader) = {
            let m = joined.raft.metrics().borrow().clone();
            (
                m.current_term,
                m.current_leader.map(|l| l as krg_proto::NodeId),
            )
        };
        let online = state.online().count();
        let health = if self.reachable_leader(&joined).is_err() {
            Health::NoQuorum
        } else if state.members.values().any(|m| m.state == NodeState::Failed) {
            Health::Degraded
        } else {
            Health::Healthy
        };
        ClusterStatus {
            epoch: state.epoch,
            term,
            leader,
            members: state.members.keys().copied().collect(),
            online,
            health,
            ..base
        }
    }

    /// Members from the replicated table, then present non-members.
    pub(crate) async fn nodes(&self) -> Vec<NodeInfo> {
        let joined = self.joined().await;
        let mut rows = joined.as_deref().map(member_rows).unwrap_or_default();
        let listed: BTreeSet<_> = rows.iter().map(|r| r.id).collect();
        let me = self.self_presence();
        let present = self.discovery().map(|d| d.present()).unwrap_or_default();
        for p in std::iter::once(me).chain(present) {
            if !listed.contains(&p.node) && !rows.iter().any(|r| r.id == p.node) {
                rows.push(NodeInfo {
                    id: p.node,
                    mac: p.mac,
                    addr: p.addr,
                    state: NodeState::Present,
                    voter: false,
                    owner: None,
                });
            }
        }
        rows.sort_by_key(|r| r.id);
        rows
    }

    pub(crate) async fn publish_view(&self) {
        let joined = self.joined().await;
        let (epoch, leader) = match &joined {
            Some(j) => (
                j.state.borrow().epoch,
                j.raft.metrics().borrow().current_leader.map(|l| l as u32),
            ),
            None => (0, None),
        };
        let majority = joined
            .as_ref()
            .is_none_or(|j| self.reachable_leader(j).is_ok());
        let nodes = self.nodes().await;
        self.ctx.publish_view(ClusterView {
            epoch,
            leader,
            nodes,
            cut_off: self.cut_off(majority),
        });
    }

    /// Whether this node has been without a majority (`majority` now) for
    /// longer than the failure timeout: an election in progress is not
    /// being cut off.
    fn cut_off(&self, majority: bool) -> bool {
        let mut since = sync::lock(&self.no_majority_since);
        if majority {
            *since = None;
            return false;
        }
        since.get_or_insert_with(Instant::now).elapsed() >= self.ctx.config.failure_timeout
    }
}

fn member_rows(joined: &Joined) -> Vec<NodeInfo> {
    let voters = super::detector::voters(joined);
    let state = joined.state();
    // Expiry by this node's clock: a checkout past its deadline is over.
    let now = super::owners::now_ms();
    state
        .members
        .values()
        .map(|m| NodeInfo {
            id: m.id,
            mac: m.mac,
            addr: m.addr,
            state: m.state,
            voter: voters.contains(&(m.id as u64)),
            owner: state.owner_at(m.id, now).map(|o| o.to_proto()),
        })
        .collect()
}
