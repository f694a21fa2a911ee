//! What the status page and `/status.json` show, gathered from the node's
//! services at each request: the cluster (leader, epoch, term, health), every
//! node (state, address, load, memory, kDFS space), the placement policy's
//! decision now, and the global process list. The page itself is rendered
//! here as plain HTML tables (readable without JavaScript); `status.js`
//! refreshes them from `/status.json`.

use std::time::Duration;

use krg_proto::cluster::NodeState;
use krg_proto::kdfs::{KdfsRequest, KdfsResponse};
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::proc::{ProcReply, ProcRequest};
use krg_proto::sched::{SchedReply, SchedRequest};
use serde::Serialize;

use crate::caller::Caller;
use crate::metrics::ClusterFigures;
use crate::node::Node;

/// How long the page waits for another node's figures.
const ASK: Duration = Duration::from_millis(700);

/// One row of the node table.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    pub id: u32,
    pub state: &'static str,
    pub address: String,
    pub mac: String,
    pub load: Option<String>,
    pub mem_free_bytes: Option<u64>,
    pub jobs: Option<u32>,
    pub kdfs_size_bytes: Option<u64>,
    pub kdfs_free_bytes: Option<u64>,
    /// Who has the node checked out, if anyone.
    pub owner: Option<OwnerCell>,
}

/// A node's checkout, as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OwnerCell {
    pub user: String,
    /// RFC 3339 UTC.
    pub until: String,
    pub reason: String,
}

impl OwnerCell {
    fn of(o: &krg_proto::cluster::NodeOwner) -> Self {
        Self {
            user: o.user.clone(),
            until: crate::service::cluster::owners::rfc3339(o.until_ms),
            reason: o.reason.clone(),
        }
    }

    /// The text of the owner cell: `alice until 2026-12-02T12:00:00Z`.
    pub fn text(&self) -> String {
        format!("{} until {}", self.user, self.until)
    }
}

/// One process of the global list.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessRow {
    pub node: u32,
    pub pid: i32,
    pub user: String,
    pub command: String,
}

/// Everything the page shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub this_node: u32,
    pub session: u32,
    pub epoch: u64,
    pub term: u64,
    pub leader: Option<u32>,
    pub health: String,
    pub nodes: Vec<NodeRow>,
    pub placement: String,
    pub processes: Vec<ProcessRow>,
}

pub fn state_name(s: NodeState) -> &'static str {
    match s {
        NodeState::Present => "present",
        NodeState::Online => "online",
        NodeState::Failed => "failed",
        NodeState::Leaving => "leaving",
    }
}

/// The cluster figures of a `/metrics` scrape.
pub async fn figures(node: &Node) -> ClusterFigures {
    let st = node.cluster.status().await;
    let nodes = node.cluster.nodes().await;
    ClusterFigures {
        members: st.members.len(),
        online: st.online,
        epoch: st.epoch,
        term: st.term,
        leader: st.leader,
        nodes: nodes.iter().map(|n| (n.id, state_name(n.state))).collect(),
        owners: nodes
            .iter()
            .filter(|n| n.state != NodeState::Present)
            .map(|n| (n.id, n.owner.as_ref().map(|o| o.user.clone())))
            .collect(),
        jobs_running: node.proc.state().table.len(),
        standins: node.proc.state().migration.standins.live(),
        probes: node.sched.probe_values(),
    }
}

/// Gather the whole status (asks online nodes for their figures).
pub async fn gather(node: &Node) -> Status {
    let st = node.cluster.status().await;
    let infos = node.cluster.nodes().await;
    let rows = futures::future::join_all(infos.iter().map(|n| async move {
        let online = n.state == NodeState::Online || n.id == node.ctx.node_id();
        let (stat, space) = if online {
            tokio::join!(
                tokio::time::timeout(
                    ASK,
                    crate::service::proc::fanout::stat(node.proc.state(), n.id)
                ),
                kdfs_space(node, n.id)
            )
        } else {
            (Ok(Err(unreachable_error())), None)
        };
        let stat = stat.ok().and_then(Result::ok);
        NodeRow {
            id: n.id,
            state: state_name(n.state),
            address: n.addr.to_string(),
            mac: n.mac.map(|m| m.to_string()).unwrap_or_default(),
            load: stat.as_ref().map(|s| s.load.clone()),
            mem_free_bytes: stat.as_ref().map(|s| s.mem_free),
            jobs: stat.as_ref().map(|s| s.jobs),
            kdfs_size_bytes: space.map(|(size, _)| size),
            kdfs_free_bytes: space.map(|(_, free)| free),
            owner: n.owner.as_ref().map(OwnerCell::of),
        }
    }))
    .await;
    let (placement, processes) = tokio::join!(placement(node), processes(node));
    Status {
        this_node: node.ctx.node_id(),
        session: node.ctx.config.session_id,
        epoch: st.epoch,
        term: st.term,
        leader: st.leader,
        health: format!("{:?}", st.health).to_lowercase(),
        nodes: rows,
        placement,
        processes,
    }
}

fn unreachable_error() -> krg_proto::admin::AdminError {
    krg_proto::admin::AdminError::new(krg_proto::admin::ErrorKind::Unavailable, "not online")
}

/// (size, free) of a node's kDFS store in bytes, if it serves one.
async fn kdfs_space(node: &Node, id: krg_proto::NodeId) -> Option<(u64, u64)> {
    let reply = if id == node.ctx.node_id() {
        node.kdfs
            .handle_peer(&node.ctx.me, KdfsRequest::Statfs)
            .await
            .ok()?
    } else {
        match node
            .ctx
            .peers
            .call(id, PeerRequest::Kdfs(KdfsRequest::Statfs), ASK)
            .await
        {
            Ok(PeerResponse::Kdfs(r)) => r,
            _ => return None,
        }
    };
    match reply {
        KdfsResponse::Statfs { blocks, bavail, .. } => {
            Some((blocks.saturating_mul(4096), bavail.saturating_mul(4096)))
        }
        _ => None,
    }
}

/// Read-only requests are asked as root: the page is the administrator's
/// view (loopback only unless a token protects it).
const OBSERVER: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: None,
};

async fn placement(node: &Node) -> String {
    let req = SchedRequest::Place { scheduler: None };
    match node.sched.handle_admin(&OBSERVER, req).await {
        Ok(SchedReply::Placement { node, reason, .. }) => format!("node {node}: {reason}"),
        Err(e) => format!("none: {}", e.message),
    }
}

async fn processes(node: &Node) -> Vec<ProcessRow> {
    let req = ProcRequest::Ps {
        nodes: None,
        uid: None,
    };
    match node.proc.handle_admin(&OBSERVER, req).await {
        Ok(ProcReply::Ps { rows, .. }) => rows
            .into_iter()
            .map(|r| ProcessRow {
                node: r.node,
                pid: r.pid,
                user: r.user,
                command: r.command,
            })
            .collect(),
        _ => Vec::new(),
    }
}
