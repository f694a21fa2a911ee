//! Cluster membership messages: what krgadm asks and what krgd answers, and
//! what the membership services of two krgds say to each other (presence,
//! liveness, Raft, forwarded changes).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{NodeId, SessionId};

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mac(
    /// The six bytes in transmission order (`00:04:61:…` is `[0x00, 0x04, 0x61, …]`).
    pub [u8; 6],
);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(format!(
                "'{s}' is not a MAC address (expected six hex bytes like 00:04:61:aa:6e:6e)"
            ));
        }
        let mut out = [0u8; 6];
        for (slot, part) in out.iter_mut().zip(parts) {
            if part.is_empty() || part.len() > 2 {
                return Err(format!("'{s}' is not a MAC address (bad byte '{part}')"));
            }
            *slot = u8::from_str_radix(part, 16)
                .map_err(|_| format!("'{s}' is not a MAC address (bad byte '{part}')"))?;
        }
        Ok(Mac(out))
    }
}

/// Where a node stands, as LinuxSSI's `krgadm nodes status` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Running krgd of this session, seen on the network, not a member.
    Present,
    /// A member of the cluster, answering.
    Online,
    /// A member that stopped answering.
    Failed,
    /// A member being removed.
    Leaving,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Present => "present",
            NodeState::Online => "online",
            NodeState::Failed => "failed",
            NodeState::Leaving => "leaving",
        })
    }
}

/// One row of `krgadm nodes status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id (1..=65535).
    pub id: NodeId,
    /// MAC address of the interface carrying its krgd's address; `None` on
    /// loopback, which has none.
    pub mac: Option<Mac>,
    /// Where its krgd accepts peer connections.
    pub addr: SocketAddr,
    /// Member or not, and whether it answers.
    pub state: NodeState,
    /// Whether this node votes in the cluster's Raft group.
    pub voter: bool,
    /// Who has the node checked out (`krgadm nodes checkout`), if anyone
    /// and not expired when the answer was made.
    pub owner: Option<NodeOwner>,
}

/// A checkout of a node: only its owner (and root) may place jobs there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOwner {
    /// The owner's uid (what requests are checked against).
    pub uid: u32,
    /// The owner's user name, as the user database named it at checkout.
    pub user: String,
    /// When the checkout ends: milliseconds since the Unix epoch (UTC).
    pub until_ms: u64,
    /// When it was committed: milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// Why (free text given at checkout, may be empty).
    pub reason: String,
}

/// How long a checkout lasts, as `--until` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Until {
    /// This many milliseconds from when the receiving krgd takes the request.
    After {
        /// Milliseconds (more than 0).
        ms: u64,
    },
    /// Up to this time: milliseconds since the Unix epoch (UTC).
    At {
        /// The deadline (in the future).
        unix_ms: u64,
    },
}

/// `krgadm nodes checkout`: take nodes for a user, all or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutRequest {
    /// The nodes (each a member of the cluster).
    pub nodes: Vec<NodeId>,
    /// For whom: a user name or a numeric uid; `None` for the caller. Only
    /// root may name another user.
    pub user: Option<String>,
    /// When the checkout ends.
    pub until: Until,
    /// Why (at most [`MAX_REASON_LEN`] bytes, no control characters).
    pub reason: String,
}

/// Longest reason a checkout may carry, in bytes.
pub const MAX_REASON_LEN: usize = 200;

/// `krgadm nodes release`: give nodes back, all or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    /// The nodes.
    pub nodes: Vec<NodeId>,
    /// Root only: release nodes other users have checked out.
    pub force: bool,
}

/// An ownership change as the krgd that took it from its caller resolved
/// and authorised it, on its way to the Raft leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnershipChange {
    /// Check `nodes` out for `owner` (uid and name from the user database).
    Checkout {
        /// The nodes, all or none.
        nodes: Vec<NodeId>,
        /// The new owner's uid.
        uid: u32,
        /// The new owner's user name.
        user: String,
        /// Absolute deadline, milliseconds since the Unix epoch.
        until_ms: u64,
        /// Why.
        reason: String,
    },
    /// Release `nodes` for the caller `by` (root may `force`).
    Release {
        /// The nodes, all or none.
        nodes: Vec<NodeId>,
        /// The caller's uid.
        by: u32,
        /// Release other users' checkouts too (root only; checked by the
        /// krgd that took the request).
        force: bool,
    },
}

/// Overall health of the cluster as seen by the answering node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    /// No cluster has been started in this session (or it was stopped).
    NotStarted,
    /// Every member online.
    Healthy,
    /// Some members failed, but a quorum of voters answers.
    Degraded,
    /// A quorum of voters is not reachable: membership cannot change.
    NoQuorum,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::NotStarted => "not started",
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::NoQuorum => "no quorum",
        })
    }
}

/// Answer to `krgadm cluster status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Session of the answering krgd.
    pub session: SessionId,
    /// The node that answered.
    pub this_node: NodeId,
    /// Incremented by every committed membership change.
    pub epoch: u64,
    /// The Raft term this node is in (0 outside a cluster): with `leader`,
    /// lets a test check that no term ever has two leaders.
    pub term: u64,
    /// The current Raft leader, as the answering node knows it (`None` when
    /// no cluster is started or an election is under way).
    pub leader: Option<NodeId>,
    /// Every member, whatever its state, by id.
    pub members: Vec<NodeId>,
    /// How many of `members` are online.
    pub online: usize,
    /// Overall health as the answering node sees it.
    pub health: Health,
}

/// How an administrator names nodes on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeSelector {
    /// Nodes by id (`-n 3:5-7`, ranges expanded by krgadm).
    Ids(Vec<NodeId>),
    /// Nodes by the MAC address they announce (`-m`).
    Macs(Vec<Mac>),
    /// Every node that is present and not yet a member (add) / every member
    /// but the answering node (del).
    AllPresent,
}

/// Membership requests krgadm sends its node's krgd (changes need root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterRequest {
    /// Form the cluster from every present node of this session.
    Start,
    /// Dissolve the cluster: every member leaves.
    Stop,
    /// `cluster status`: answered with [`ClusterReply::Status`].
    Status,
    /// `nodes status`: answered with [`ClusterReply::Nodes`].
    NodesStatus,
    /// Hot-add the selected present nodes; answered once committed everywhere.
    Add(NodeSelector),
    /// Remove the selected members; answered once committed everywhere.
    Del(NodeSelector),
    /// Check nodes out (any user for themselves, root for anyone);
    /// answered with [`ClusterReply::Owned`].
    Checkout(CheckoutRequest),
    /// Release checked-out nodes (their owner, or root); answered with
    /// [`ClusterReply::Owned`] (the released nodes, now without owner).
    Release(ReleaseRequest),
}

/// krgd's answers to [`ClusterRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterReply {
    /// To `Status`: the cluster as the answering node sees it.
    Status(ClusterStatus),
    /// To `NodesStatus`: members and present nodes, by id.
    Nodes(Vec<NodeInfo>),
    /// A membership change committed cluster-wide; the new status.
    Changed(ClusterStatus),
    /// An ownership change committed (and applied by every online member):
    /// the rows of the nodes it named.
    Owned(Vec<NodeInfo>),
}

/// Requests the membership service of one krgd sends another's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClusterPeerRequest {
    /// Liveness probe of the failure detector, sent by the Raft leader of
    /// cluster `cluster` (its random id) to every member.
    Ping {
        /// The leader's node id.
        from: NodeId,
        /// The id of the leader's cluster.
        cluster: u64,
    },
    /// An openraft RPC, postcard-encoded by krgd (kept opaque here so that
    /// this crate does not depend on the Raft library).
    Raft(RaftRpc),
    /// A membership request forwarded towards the Raft leader; `hops` counts
    /// forwards so a request never circles while leadership moves.
    Forward {
        /// The administrator's request, as krgadm sent it.
        req: ClusterRequest,
        /// Forwards so far; a request is refused past a small bound.
        hops: u8,
    },
    /// Join cluster `cluster`: start a Raft instance so the leader can
    /// replicate to this node (sent before the node is added).
    Welcome {
        /// The id of the cluster to join.
        cluster: u64,
        /// The leader's epoch when it decided to add the node: the node
        /// will be a member after it.
        epoch: u64,
        /// The leader's Raft term then: an add it could not commit is lost
        /// when a later term's leader takes over.
        term: u64,
    },
    /// Leave cluster `cluster`: drop the Raft instance, become present.
    Evict {
        /// The id of the cluster to leave (ignored if the node is in another).
        cluster: u64,
        /// The sender's epoch when it decided the node is out; a node that
        /// knows of a later epoch (it was re-added since, or welcomed after
        /// it) ignores the eviction, which may have been delayed.
        epoch: u64,
        /// The sender's Raft term then, once it has applied an entry of
        /// that term (so it knows every committed add): an eviction of a
        /// later term than the welcome is obeyed whatever the welcome's
        /// epoch, as that welcome's add was never committed. `u64::MAX`:
        /// the cluster is over.
        term: u64,
    },
    /// Who are you, and whom do you know (presence discovery over TCP).
    Describe {
        /// The asking node, so that the answering one learns of it.
        from: Presence,
    },
    /// An ownership change forwarded towards the Raft leader (`hops` as in
    /// `Forward`); answered with `Forwarded`.
    ForwardOwnership {
        /// The change, resolved and authorised by the first krgd.
        change: OwnershipChange,
        /// Forwards so far.
        hops: u8,
    },
    /// A migration's handover: record that transfer `xfer` runs on
    /// `node` unless a node was decided already (forwarded towards the
    /// Raft leader, `hops` as in `Forward`); answered with `Placed`.
    Place {
        /// The transfer (the migration's random id).
        xfer: u64,
        /// The node asking to run it.
        node: NodeId,
        /// Forwards so far.
        hops: u8,
    },
}

/// Answers to [`ClusterPeerRequest`]s, one variant per request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClusterPeerReply {
    /// To `Ping`: `cluster` is the id of the cluster the pinged node is in,
    /// if any, and `epoch` the last epoch it applied.
    Pong {
        /// The last epoch the pinged node applied.
        epoch: u64,
        /// The cluster it is in, if any.
        cluster: Option<u64>,
        /// Index of the last Raft log entry it applied (0: none).
        applied: u64,
    },
    /// To `Raft`: openraft's answer, postcard-encoded.
    Raft(Vec<u8>),
    /// To `Forward`: the leader's answer to the change.
    Forwarded(ClusterReply),
    /// To `Welcome` and `Evict`.
    Ack,
    /// To `Describe`.
    Describe(NodeSelf),
    /// To `Place`: the node the transfer's process runs on, as committed.
    Placed(NodeId),
}

/// Which openraft RPC a [`RaftRpc`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftKind {
    /// Log replication and heartbeats from the leader.
    AppendEntries,
    /// A candidate asking for a vote.
    Vote,
    /// A snapshot sent to a follower too far behind the log.
    InstallSnapshot,
}

/// One openraft RPC between the membership services of two members.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RaftRpc {
    /// Which RPC `payload` encodes.
    pub kind: RaftKind,
    /// openraft's request, postcard-encoded by krgd.
    pub payload: Vec<u8>,
}

/// A node as seen by presence discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The node's id.
    pub node: NodeId,
    /// MAC address of its krgd's interface, if it has one.
    pub mac: Option<Mac>,
    /// Where its krgd accepts peer connections.
    pub addr: SocketAddr,
    /// The cluster it belongs to (random id), if any.
    pub cluster: Option<u64>,
}

/// Answer to [`ClusterPeerRequest::Describe`]: the node itself and the nodes
/// it has recently seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSelf {
    /// The answering node.
    pub me: Presence,
    /// Other nodes seen, each with how many milliseconds ago it was last heard
    /// of (so that relayed sightings age and a dead node is forgotten).
    pub known: Vec<(Presence, u32)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_roundtrip_and_errors() {
        let m: Mac = "00:04:61:aa:6e:6E".parse().unwrap();
        assert_eq!(m.to_string(), "00:04:61:aa:6e:6e");
        assert!("00:04:61:aa:6e".parse::<Mac>().is_err());
        assert!("00:04:61:aa:6e:zz".parse::<Mac>().is_err());
        assert!("00:04:61:aa:6e:123".parse::<Mac>().is_err());
    }
}
