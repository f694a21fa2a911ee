//! Messages between krgds over authenticated TCP connections.
//!
//! A connection carries [`PeerMessage`]s in both directions; each request has
//! an id chosen by its sender and the answer carries the same id, so many
//! requests may be in flight on one connection.

use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterReply, ClusterRequest, Mac, NodeState};
use crate::kdfs::{KdfsRequest, KdfsResponse};
use crate::sched::{SchedPeerReply, SchedPeerRequest};
use crate::NodeId;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerMessage {
    pub id: u64,
    pub body: PeerBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerBody {
    Request(PeerRequest),
    Response(PeerResponse),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Liveness probe of the failure detector.
    Ping { from: NodeId },
    /// An openraft RPC, postcard-encoded by krgd (kept opaque here so that
    /// this crate does not depend on the Raft library).
    Raft(RaftRpc),
    /// A membership request forwarded to the Raft leader.
    Cluster(ClusterRequest),
    /// A member reports that a node stopped answering its probes.
    Suspect { reporter: NodeId, node: NodeId },
    /// Who are you (used by `cluster start` to learn present nodes' details).
    Describe,
    Sched(SchedPeerRequest),
    Kdfs(KdfsRequest),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftKind {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RaftRpc {
    pub kind: RaftKind,
    pub payload: Vec<u8>,
}

/// What a node says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSelf {
    pub node: NodeId,
    pub mac: Option<Mac>,
    pub listen: std::net::SocketAddr,
    pub state: NodeState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerResponse {
    Pong { epoch: u64 },
    Raft(Vec<u8>),
    Cluster(ClusterReply),
    Ack,
    Describe(NodeSelf),
    Sched(SchedPeerReply),
    Kdfs(KdfsResponse),
    /// The request could not be served; one line saying why.
    Error(crate::admin::AdminError),
}
