//! Messages between krgds over authenticated TCP connections.
//!
//! A connection carries [`PeerMessage`]s in both directions; each request has
//! an id chosen by its sender and the answer carries the same id, so many
//! requests may be in flight on one connection.

use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterReply, ClusterRequest, Mac};
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
    /// Liveness probe of the failure detector, sent by the Raft leader of
    /// cluster `cluster` (its random id) to every member.
    Ping {
        from: NodeId,
        cluster: u64,
    },
    /// An openraft RPC, postcard-encoded by krgd (kept opaque here so that
    /// this crate does not depend on the Raft library).
    Raft(RaftRpc),
    /// A membership request forwarded towards the Raft leader; `hops` counts
    /// forwards so a request never circles while leadership moves.
    Cluster {
        req: ClusterRequest,
        hops: u8,
    },
    /// Join cluster `cluster`: start a Raft instance so the leader can
    /// replicate to this node (sent before the node is added).
    Welcome {
        cluster: u64,
    },
    /// Leave cluster `cluster`: drop the Raft instance, become present.
    Evict {
        cluster: u64,
    },
    /// Who are you, and whom do you know (presence discovery over TCP).
    Describe {
        from: Presence,
    },
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

/// A node as seen by presence discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub node: NodeId,
    pub mac: Option<Mac>,
    /// Where its krgd accepts peer connections.
    pub addr: std::net::SocketAddr,
    /// The cluster it belongs to (random id), if any.
    pub cluster: Option<u64>,
}

/// Answer to [`PeerRequest::Describe`]: the node itself and the nodes it has
/// recently seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSelf {
    pub me: Presence,
    /// Other nodes seen, each with how many milliseconds ago it was last heard
    /// of (so that relayed sightings age and a dead node is forgotten).
    pub known: Vec<(Presence, u32)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerResponse {
    /// `cluster` is the id of the cluster the pinged node is in, if any.
    Pong {
        epoch: u64,
        cluster: Option<u64>,
    },
    Raft(Vec<u8>),
    Cluster(ClusterReply),
    Ack,
    Describe(NodeSelf),
    Sched(SchedPeerReply),
    Kdfs(KdfsResponse),
    /// The request could not be served; one line saying why.
    Error(crate::admin::AdminError),
}
