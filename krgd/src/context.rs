//! What every service of a node shares: its configuration, identity, the pool
//! of connections to other nodes, and the current view of the cluster.

use krg_proto::auth::{ClusterKey, Identity};
use krg_proto::cluster::{Mac, NodeInfo, NodeOwner, NodeState};
use krg_proto::NodeId;
use tokio::sync::watch;

use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::peers::PeerPool;

/// The cluster as this node currently sees it. Published by the membership
/// service; every other service reads it (or waits for changes) through
/// [`NodeContext::view`] and [`NodeContext::watch_view`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Incremented by each committed membership change; 0 before a cluster exists.
    pub epoch: u64,
    pub leader: Option<NodeId>,
    /// Members (online, failed, leaving) and present non-members, by id.
    pub nodes: Vec<NodeInfo>,
    /// This node has reached no majority of the cluster's voters for
    /// longer than the failure timeout (a partition left it in the
    /// minority): nothing it asks can be committed.
    pub cut_off: bool,
}

impl ClusterView {
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Members of the cluster, whatever their health.
    pub fn members(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter().filter(|n| n.state != NodeState::Present)
    }

    /// Members that currently answer.
    pub fn online_members(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter().filter(|n| n.state == NodeState::Online)
    }

    pub fn is_member(&self, id: NodeId) -> bool {
        self.members().any(|n| n.id == id)
    }

    /// Who has `id` checked out at `now_ms` (ms since the Unix epoch, this
    /// host's clock): an expired checkout holds nothing.
    pub fn owner_of(&self, id: NodeId, now_ms: u64) -> Option<&NodeOwner> {
        self.node(id)?
            .owner
            .as_ref()
            .filter(|o| o.until_ms > now_ms)
    }
}

/// Whether node `id` is (or within `within` becomes) a member in the views
/// `views` carries.
pub async fn member_within(
    mut views: watch::Receiver<ClusterView>,
    id: NodeId,
    within: std::time::Duration,
) -> bool {
    tokio::time::timeout(within, views.wait_for(|v| v.is_member(id)))
        .await
        .is_ok_and(|seen| seen.is_ok())
}

pub struct NodeContext {
    pub config: Config,
    pub key: ClusterKey,
    /// This node's identity in handshakes.
    pub me: Identity,
    /// MAC address of the interface that carries the listen address, if any.
    pub mac: Option<Mac>,
    pub peers: PeerPool,
    /// What `/metrics` reports; every service bumps its own figures.
    pub metrics: Arc<Metrics>,
    view_tx: watch::Sender<ClusterView>,
}

impl NodeContext {
    pub fn new(config: Config, key: ClusterKey, mac: Option<Mac>) -> Self {
        let me = Identity {
            session: config.session_id,
            node: config.node_id,
            role: krg_proto::auth::Role::Node,
        };
        let metrics = Arc::new(Metrics::new());
        let peers = PeerPool::new(key.clone(), me, metrics.clone());
        let (view_tx, _) = watch::channel(ClusterView::default());
        Self {
            config,
            key,
            me,
            mac,
            peers,
            metrics,
            view_tx,
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// A snapshot of the current cluster view.
    pub fn view(&self) -> ClusterView {
        self.view_tx.borrow().clone()
    }

    /// The epoch of the current view (no copy of it: asked at every ping).
    pub fn view_epoch(&self) -> u64 {
        self.view_tx.borrow().epoch
    }

    /// A receiver that wakes on every view change.
    pub fn watch_view(&self) -> watch::Receiver<ClusterView> {
        self.view_tx.subscribe()
    }

    /// Publish a new view (membership service only). Peer addresses are
    /// refreshed so that other services can call any known node.
    pub fn publish_view(&self, view: ClusterView) {
        for n in &view.nodes {
            self.peers.set_address(n.id, n.addr);
        }
        self.view_tx.send_if_modified(|old| {
            if *old == view {
                false
            } else {
                *old = view;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn view_with(id: NodeId, state: NodeState) -> ClusterView {
        ClusterView {
            epoch: 1,
            leader: Some(id),
            nodes: vec![NodeInfo {
                id,
                mac: None,
                addr: "127.0.0.1:1".parse().unwrap(),
                state,
                voter: true,
                owner: None,
            }],
            cut_off: false,
        }
    }

    #[tokio::test]
    async fn a_member_the_view_has_not_shown_yet_is_waited_for_a_moment() {
        let (tx, rx) = watch::channel(view_with(1, NodeState::Present));
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send_replace(view_with(1, NodeState::Online));
            tx
        });
        assert!(member_within(rx.clone(), 1, Duration::from_secs(5)).await);
        let _tx = later.await.unwrap();
        assert!(!member_within(rx, 2, Duration::from_millis(100)).await);
    }
}
