//! The membership service's messages over krgd's authenticated peer
//! connections: [`call`] for every request it sends, and the Raft transport.
//! openraft's request and response types are postcard-encoded into
//! [`RaftRpc`] payloads so that krg-proto does not depend on openraft; a
//! request's payload starts with the uid of the cluster it belongs to, and a
//! node serves only requests of its own cluster (a member left behind by a
//! dissolved cluster cannot disturb the next one, whose node ids overlap).

use std::sync::Arc;
use std::time::Duration;

use krg_proto::cluster::{ClusterPeerReply, ClusterPeerRequest, RaftKind, RaftRpc};
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::{NodeId, ProtoError};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{de::DeserializeOwned, Serialize};

use super::raft_types::{Raft, RaftNodeId, TypeConfig};
use crate::context::NodeContext;
use crate::peers::{PeerCallError, PeerPool};

/// Send `req` to the membership service of `node` and wait at most `timeout`
/// for its answer.
pub(super) async fn call(
    peers: &PeerPool,
    node: NodeId,
    req: ClusterPeerRequest,
    timeout: Duration,
) -> Result<ClusterPeerReply, PeerCallError> {
    match peers.call(node, PeerRequest::Cluster(req), timeout).await? {
        PeerResponse::Cluster(reply) => Ok(reply),
        other => Err(PeerCallError::Unexpected {
            node,
            answer: format!("{other:?}"),
        }),
    }
}

#[derive(Clone)]
pub struct Network {
    ctx: Arc<NodeContext>,
    cluster: u64,
}

impl Network {
    pub fn new(ctx: Arc<NodeContext>, cluster: u64) -> Self {
        Self { ctx, cluster }
    }
}

pub struct Connection {
    ctx: Arc<NodeContext>,
    cluster: u64,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: RaftNodeId, node: &BasicNode) -> Connection {
        let target = target as NodeId;
        if let Ok(addr) = node.addr.parse() {
            self.ctx.peers.set_address(target, addr);
        }
        Connection {
            ctx: self.ctx.clone(),
            cluster: self.cluster,
            target,
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId, E>>>;

impl Connection {
    async fn send<Req, Resp, E>(
        &self,
        kind: RaftKind,
        req: &Req,
        ttl: Duration,
        timeouts: Timeouts,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = postcard::to_stdvec(&(self.cluster, req))
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let rpc = ClusterPeerRequest::Raft(RaftRpc { kind, payload });
        let resp = call(&self.ctx.peers, self.target, rpc, ttl)
            .await
            .map_err(|e| rpc_error(e, timeouts, self.target))?;
        let ClusterPeerReply::Raft(bytes) = resp else {
            let e = std::io::Error::other(format!("node {} sent a non-Raft answer", self.target));
            return Err(RPCError::Network(NetworkError::new(&e)));
        };
        let result: Result<Resp, RaftError<RaftNodeId, E>> =
            postcard::from_bytes(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target as RaftNodeId, e)))
    }
}

/// How openraft should take a failed call. `Unreachable` makes its
/// replication stream back off (see [`Connection::backoff`]); a call that
/// timed out or was answered oddly is a `Network` error, retried at the next
/// heartbeat. A follower slow to answer (an fsync on a busy disk outlasting
/// the heartbeat, which openraft uses as the AppendEntries timeout) is not
/// unreachable: backing off from it would hold back a whole formation.
fn rpc_error<E: std::error::Error>(
    e: PeerCallError,
    timeouts: Timeouts,
    target: NodeId,
) -> RPCError<RaftNodeId, BasicNode, E> {
    match e {
        PeerCallError::Proto {
            source: ProtoError::Timeout(ttl),
            ..
        } if timeouts == Timeouts::RetryNow => {
            tracing::debug!(
                target,
                ?ttl,
                "AppendEntries outlasted the heartbeat; sent again at once"
            );
            retry_now()
        }
        PeerCallError::Unexpected { .. }
        | PeerCallError::Proto {
            source: ProtoError::Timeout(_),
            ..
        } => RPCError::Network(NetworkError::new(&e)),
        _ => RPCError::Unreachable(Unreachable::new(&e)),
    }
}

/// What a call that was not answered in time becomes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Timeouts {
    /// A network error: openraft tries again at the next heartbeat.
    Network,
    /// An immediate retry (AppendEntries, see [`retry_now`]).
    RetryNow,
}

/// Part of openraft's AppendEntries timeout (the Raft heartbeat) after
/// which krgd gives up the call itself.
const RETRY_BEFORE: f64 = 0.9;

/// Entries hint of [`retry_now`]: far above openraft's batch size
/// (`max_payload_entries`, 300), so that it limits nothing.
const NO_LIMIT: u64 = 1 << 20;

/// The error that makes openraft send a timed-out AppendEntries again at
/// once. openraft 0.9 times an AppendEntries out after one Raft heartbeat
/// (100 ms by default here) and, on a timeout or network error, sends
/// nothing more until the next heartbeat. A follower answers once the
/// entries are fsynced, and with 65 daemons fsyncing on one disk (or a busy
/// disk) that took longer than a heartbeat now and then: every
/// follower's answer was lost together and a commit waited a second
/// heartbeat (a 64-node join 0.25 s instead of 0.07 s). Asked again, the
/// follower (whose Raft core is still waiting for that fsync) answers as soon
/// as it is done: the entries are already in its log. `PayloadTooLarge` is
/// the one error openraft retries at once; its hint caps nothing.
fn retry_now<E: std::error::Error>() -> RPCError<RaftNodeId, BasicNode, E> {
    RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(NO_LIMIT))
}

/// How a timed-out AppendEntries of `entries` entries is reported. Only
/// one that carries entries is retried at once: openraft does not count a
/// heartbeat (no entries) as in flight, so a heartbeat turned into a retry
/// would sit where the next entries go, and openraft's replication task
/// then panics ("there can not be two actions with payload in flight",
/// a debug assertion: the fault campaign's seed 920771936 lost its
/// leader's replication that way) or, in a release build, drops the
/// retry. A slow heartbeat waits for the next one, as before.
fn append_timeouts(entries: usize) -> Timeouts {
    if entries == 0 {
        Timeouts::Network
    } else {
        Timeouts::RetryNow
    }
}

/// Pauses of a replication stream after an unreachable node, growing from
/// one heartbeat-sized step to openraft's default of 500 ms: a node still
/// starting (or a connection refused once under load) is retried soon, a
/// dead one is not hammered.
fn unreachable_backoff() -> Backoff {
    let steps = [50, 100, 200, 400]
        .into_iter()
        .chain(std::iter::repeat(500));
    Backoff::new(steps.map(Duration::from_millis))
}

impl RaftNetwork<TypeConfig> for Connection {
    fn backoff(&self) -> Backoff {
        unreachable_backoff()
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<RaftNodeId>, openraft::error::Infallible> {
        let timeouts = append_timeouts(rpc.entries.len());
        let ttl = match timeouts {
            // Give up a little before openraft's own timeout does, so that
            // a slow follower is asked again at once (see `retry_now`).
            Timeouts::RetryNow => option.hard_ttl().mul_f64(RETRY_BEFORE),
            Timeouts::Network => option.hard_ttl(),
        };
        self.send(RaftKind::AppendEntries, &rpc, ttl, timeouts)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<RaftNodeId>, InstallSnapshotError> {
        self.send(
            RaftKind::InstallSnapshot,
            &rpc,
            option.hard_ttl(),
            Timeouts::Network,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftNodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<RaftNodeId>, openraft::error::Infallible> {
        self.send(RaftKind::Vote, &rpc, option.hard_ttl(), Timeouts::Network)
            .await
    }
}

/// Serve one incoming Raft RPC against the local Raft instance of cluster
/// `cluster`.
pub async fn serve(raft: &Raft, cluster: u64, rpc: RaftRpc) -> Result<Vec<u8>, String> {
    fn decode<T: DeserializeOwned>(cluster: u64, bytes: &[u8]) -> Result<T, String> {
        let (uid, req): (u64, T) =
            postcard::from_bytes(bytes).map_err(|e| format!("malformed Raft message: {e}"))?;
        if uid != cluster {
            return Err(format!(
                "Raft message for cluster {uid:016x}; this node is in cluster {cluster:016x}"
            ));
        }
        Ok(req)
    }
    fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
        postcard::to_stdvec(v).map_err(|e| format!("cannot encode Raft answer: {e}"))
    }
    let p = &rpc.payload;
    match rpc.kind {
        RaftKind::AppendEntries => encode(&raft.append_entries(decode(cluster, p)?).await),
        RaftKind::Vote => encode(&raft.vote(decode(cluster, p)?).await),
        RaftKind::InstallSnapshot => encode(&raft.install_snapshot(decode(cluster, p)?).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type E = openraft::error::Infallible;

    fn timed_out() -> PeerCallError {
        PeerCallError::Proto {
            node: 2,
            source: ProtoError::Timeout(Duration::from_millis(90)),
        }
    }

    /// A slow AppendEntries is sent again at once, with no cap on its
    /// entries; other calls that time out wait for the next heartbeat.
    #[test]
    fn only_append_entries_timeouts_retry_at_once() {
        match rpc_error::<E>(timed_out(), Timeouts::RetryNow, 2) {
            RPCError::PayloadTooLarge(p) => assert!(p.entries_hint() >= NO_LIMIT),
            other => panic!("expected an immediate retry, got {other}"),
        }
        assert!(matches!(
            rpc_error::<E>(timed_out(), Timeouts::Network, 2),
            RPCError::Network(_)
        ));
    }

    /// A heartbeat that times out is not retried at once (openraft would
    /// take it for entries in flight); entries are.
    #[test]
    fn only_append_entries_with_entries_retry_at_once() {
        assert!(append_timeouts(0) == Timeouts::Network);
        assert!(append_timeouts(1) == Timeouts::RetryNow);
        assert!(append_timeouts(300) == Timeouts::RetryNow);
    }

    /// A refused connection still backs off, AppendEntries or not.
    #[test]
    fn refused_is_unreachable() {
        let refused = || PeerCallError::Proto {
            node: 2,
            source: ProtoError::Closed,
        };
        for t in [Timeouts::RetryNow, Timeouts::Network] {
            assert!(matches!(
                rpc_error::<E>(refused(), t, 2),
                RPCError::Unreachable(_)
            ));
        }
    }
}
