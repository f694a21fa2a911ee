//! Messages between krgds over authenticated TCP connections.
//!
//! A connection carries [`PeerMessage`]s in both directions; each request has
//! an id chosen by its sender and the answer carries the same id, so many
//! requests may be in flight on one connection. A request names the service
//! it is for, and that service's answer comes back in the variant of the
//! same name (or as [`PeerResponse::Error`]).
//!
//! The nesting of the membership messages under `Cluster` changed the
//! encoding of every variant: [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) 2
//! marks it, and the handshake refuses a krgd or tool of version 1.

use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterPeerReply, ClusterPeerRequest};
use crate::kdfs::{KdfsRequest, KdfsResponse};
use crate::proc::{ProcPeerReply, ProcPeerRequest};
use crate::sched::{SchedPeerReply, SchedPeerRequest};

/// What one sealed frame of a peer connection carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerMessage {
    /// Chosen by the sender of a request, unique among its requests in
    /// flight on this connection; the answer carries the same id.
    pub id: u64,
    /// The request or the answer.
    pub body: PeerBody,
}

/// A request, or the answer to one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerBody {
    /// A request from the end that opened the connection.
    Request(PeerRequest),
    /// The answer to the request of the same id.
    Response(PeerResponse),
}

/// A request for one service of the receiving krgd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Membership: presence, liveness, Raft, forwarded changes.
    Cluster(ClusterPeerRequest),
    /// The global scheduler: probe values.
    Sched(SchedPeerRequest),
    /// kDFS storage, from other krgds and from mount.kdfs.
    Kdfs(KdfsRequest),
    /// The process service: process table, signals, node figures, and
    /// session connections (`krg run` on another node).
    Proc(ProcPeerRequest),
}

/// The answer of the service a [`PeerRequest`] named.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Answer of the membership service.
    Cluster(ClusterPeerReply),
    /// Answer of the scheduler service.
    Sched(SchedPeerReply),
    /// Answer of the kDFS service.
    Kdfs(KdfsResponse),
    /// The process service's answer.
    Proc(ProcPeerReply),
    /// The request could not be served; one line saying why.
    Error(crate::admin::AdminError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ClusterRequest, NodeSelector};
    use crate::frame::{decode, encode};

    #[test]
    fn nested_cluster_messages_roundtrip() {
        let msg = PeerMessage {
            id: 9,
            body: PeerBody::Request(PeerRequest::Cluster(ClusterPeerRequest::Forward {
                req: ClusterRequest::Add(NodeSelector::Ids(vec![3, 4])),
                hops: 1,
            })),
        };
        let bytes = encode(&msg).unwrap();
        let (back, _): (PeerMessage, usize) = decode(&bytes).unwrap().unwrap();
        assert_eq!(back.id, 9);
        assert!(matches!(
            back.body,
            PeerBody::Request(PeerRequest::Cluster(ClusterPeerRequest::Forward { req, hops: 1 }))
                if req == ClusterRequest::Add(NodeSelector::Ids(vec![3, 4]))
        ));
        let pong = PeerMessage {
            id: 9,
            body: PeerBody::Response(PeerResponse::Cluster(ClusterPeerReply::Pong {
                epoch: 4,
                cluster: Some(7),
                applied: 12,
            })),
        };
        let (back, _): (PeerMessage, usize) = decode(&encode(&pong).unwrap()).unwrap().unwrap();
        assert!(matches!(
            back.body,
            PeerBody::Response(PeerResponse::Cluster(ClusterPeerReply::Pong {
                epoch: 4,
                cluster: Some(7),
                applied: 12,
            }))
        ));
    }
}
