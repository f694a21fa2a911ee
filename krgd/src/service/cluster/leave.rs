//! Removing members (`krgadm nodes del`), with the `leaving` state.
//!
//! A live (online) member being removed is first committed as `leaving`, so
//! every member shows it so; the leader waits (bounded) until that node has
//! applied the change (it knows it is going), then asks the registered
//! [`HandOver`] services in turn whether they have moved what the node
//! held elsewhere (its processes, then its kDFS data), again with a bound;
//! only then is the node removed from the table and Raft and told to
//! leave. A leave is never a failure: the failure detector marks
//! only online members failed. A failed member is removed at once (there is
//! nothing to hand over from a node that does not answer). A leader elected
//! while a leave was under way finishes it ([`ClusterService::finish_leaves`]).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::cluster::{
    ClusterPeerReply, ClusterPeerRequest, ClusterStatus, NodeSelector, NodeState,
};
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::NodeId;

use super::network::call;
use super::selection::resolve_for_del;
use super::state::{ClusterCommand, MemberRecord};
use super::{ClusterService, Joined};
use crate::peers::PeerPool;
use crate::sync;

/// How long a service may take to hand a leaving node's work over, unless
/// it says otherwise ([`HandOver::patience`]).
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a leaving node may take to learn that it is leaving.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(2);

/// A service that holds something of a node (data, processes) and moves it
/// to other nodes when that node leaves.
pub trait HandOver: Send + Sync {
    /// Name for the log ("kdfs", ...).
    fn name(&self) -> &'static str;
    /// Has everything this service held on `node` been moved elsewhere?
    /// Asked repeatedly until it says yes or the bound is reached.
    fn handed_over(&self, node: NodeId) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;
    /// How long this service's hand-over may take; the leave waits at most
    /// the sum of its services'.
    fn patience(&self) -> Duration {
        HANDOVER_TIMEOUT
    }
    /// Whether several leaving nodes must hand over one after the other
    /// (kDFS: a node's pass changes names in the others' directories).
    fn one_node_at_a_time(&self) -> bool {
        false
    }
}

/// How long the leader waits for a leaving node's answer to a hand-over
/// question.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Ask another, leaving `node` how its hand-over of `what` ("processes",
/// "kDFS data") goes, with `ask`; `done` reads the answer. A node that does
/// not answer, or answers something else, is not waited for (it cannot
/// hand anything over), which is logged.
pub async fn ask_leaving(
    peers: &PeerPool,
    node: NodeId,
    ask: PeerRequest,
    what: &str,
    done: fn(&PeerResponse) -> Option<bool>,
) -> bool {
    match peers.call(node, ask, ASK_TIMEOUT).await {
        Ok(answer) => done(&answer).unwrap_or_else(|| {
            tracing::warn!(
                node,
                ?answer,
                "unexpected hand-over answer; not waiting for its {what}"
            );
            true
        }),
        Err(e) => {
            tracing::warn!(node, error = %e, "leaving node does not answer; not waiting for its {what}");
            true
        }
    }
}

/// A leaving node's hand-over pass of one service: started by the first
/// question, "done" to the first question after it ended (the next one
/// starts a new pass: a later leave of the same node).
#[derive(Default)]
pub struct Pass(std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>);

impl Pass {
    /// Start a pass with `start` if none runs (`None`: nothing to hand
    /// over); true once it ended.
    pub fn progress(&self, start: impl FnOnce() -> Option<tokio::task::JoinHandle<()>>) -> bool {
        let mut pass = sync::lock(&self.0);
        match pass.as_ref() {
            Some(p) if p.is_finished() => {
                *pass = None;
                true
            }
            Some(_) => false,
            None => {
                *pass = start();
                pass.is_none()
            }
        }
    }
}

impl ClusterService {
    /// Register a service to be asked before a leaving node is removed.
    pub fn register_handover(&self, service: Arc<dyn HandOver>) {
        sync::write(&self.handovers).push(service);
    }

    /// How long a leave may wait for its hand-overs (every service's
    /// patience).
    pub(super) fn handover_patience(&self) -> Duration {
        sync::read(&self.handovers)
            .iter()
            .map(|s| s.patience())
            .sum()
    }

    pub(super) async fn del(
        self: &Arc<Self>,
        joined: &Joined,
        sel: NodeSelector,
    ) -> Result<ClusterStatus, AdminError> {
        let state = joined.state();
        let ids = resolve_for_del(&sel, &state, self.ctx.node_id())?;
        let remaining: Vec<&MemberRecord> = state
            .members
            .values()
            .filter(|m| !ids.contains(&m.id))
            .collect();
        if remaining.is_empty() {
            return Err(AdminError::new(
                ErrorKind::Conflict,
                "cannot remove every member of the cluster; use `krgadm cluster stop`",
            ));
        }
        if !remaining.iter().any(|m| m.state == NodeState::Online) {
            return Err(AdminError::new(
                ErrorKind::Conflict,
                "this change would leave no online member",
            ));
        }
        let live: Vec<NodeId> = ids
            .iter()
            .copied()
            .filter(|id| {
                state
                    .members
                    .get(id)
                    .is_some_and(|m| m.state == NodeState::Online)
            })
            .collect();
        if !live.is_empty() {
            let marked = self
                .commit(joined, ClusterCommand::Leave(live.clone()))
                .await?;
            self.hand_over(joined, &live, marked.epoch).await;
        }
        self.remove(joined, &ids).await
    }

    /// Wait (bounded) until the leaving nodes know they are leaving and
    /// every hand-over service is done with them.
    async fn hand_over(&self, joined: &Joined, nodes: &[NodeId], epoch: u64) {
        let notice = nodes.iter().map(|id| self.wait_applied(joined, *id, epoch));
        futures::future::join_all(notice).await;
        let services = sync::read(&self.handovers).clone();
        let patience = self.handover_patience() * nodes.len().max(1) as u32;
        let deadline = tokio::time::Instant::now() + patience;
        let mut pending: BTreeSet<(usize, NodeId)> = (0..services.len())
            .flat_map(|s| nodes.iter().map(move |n| (s, *n)))
            .collect();
        while !pending.is_empty() {
            // In registration order for each node: a service is asked
            // only once the ones before it are done with that node (and,
            // for a service that wants it, once it is done with the nodes
            // before).
            let mut still = BTreeSet::new();
            let mut waiting = BTreeSet::new();
            let mut busy = BTreeSet::new();
            for (s, n) in pending {
                let wait = waiting.contains(&n) || busy.contains(&s);
                if wait || !services[s].handed_over(n).await {
                    still.insert((s, n));
                    waiting.insert(n);
                    if services[s].one_node_at_a_time() {
                        busy.insert(s);
                    }
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                for (s, n) in &pending {
                    tracing::warn!(
                        node = n,
                        service = services[*s].name(),
                        "hand-over not finished in time; removing the node anyway"
                    );
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait (bounded) until `node` reports `epoch` (or stops answering).
    async fn wait_applied(&self, joined: &Joined, node: NodeId, epoch: u64) {
        if node == self.ctx.node_id() {
            return;
        }
        let deadline = tokio::time::Instant::now() + NOTICE_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            let ping = ClusterPeerRequest::Ping {
                from: self.ctx.node_id(),
                cluster: joined.uid,
            };
            match call(&self.ctx.peers, node, ping, Duration::from_millis(500)).await {
                Ok(ClusterPeerReply::Pong { epoch: e, .. }) if e >= epoch => return,
                Ok(_) => {}
                Err(_) => return,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Commit the removal of `ids`, rebalance the voters, tell the removed
    /// nodes to leave, and wait until every online member applied it.
    async fn remove(
        self: &Arc<Self>,
        joined: &Joined,
        ids: &[NodeId],
    ) -> Result<ClusterStatus, AdminError> {
        // Read before the commit: the removal is committed in this term or
        // a later one, and an eviction may claim less than it knows, never more.
        let term = joined.applied_term();
        let result = self
            .commit(joined, ClusterCommand::Remove(ids.to_vec()))
            .await?;
        self.rebalance_voters(joined).await?;
        let me = self.ctx.node_id();
        for id in ids.iter().filter(|id| **id != me) {
            let evict = ClusterPeerRequest::Evict {
                cluster: joined.uid,
                epoch: result.epoch,
                term,
            };
            let _ = call(&self.ctx.peers, *id, evict, Duration::from_secs(1)).await;
        }
        self.wait_everywhere(joined, result.epoch).await;
        let status = self.status().await;
        if ids.contains(&me) {
            self.leave_instance(joined).await;
        }
        Ok(status)
    }

    /// A new leader finishes the leaves its predecessor left half done.
    pub(super) async fn finish_leaves(self: &Arc<Self>, joined: &Joined) {
        let state = joined.state();
        let leaving: Vec<NodeId> = state
            .members
            .values()
            .filter(|m| m.state == NodeState::Leaving)
            .map(|m| m.id)
            .collect();
        if leaving.is_empty() || !state.online().any(|m| !leaving.contains(&m.id)) {
            return;
        }
        tracing::info!(nodes = ?leaving, "finishing the removal of leaving members");
        self.hand_over(joined, &leaving, state.epoch).await;
        if let Err(e) = self.remove(joined, &leaving).await {
            tracing::warn!(error = %e.message, "cannot finish the removal of leaving members");
        }
    }
}
