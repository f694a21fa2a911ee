//! Outgoing connections to other krgds, one authenticated multiplexed TCP
//! connection per peer, opened on first use and reopened when it breaks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use krg_proto::auth::{ClusterKey, Identity};
use krg_proto::client::PeerClient;
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::{NodeId, ProtoError};
use thiserror::Error;
use tokio::sync::Mutex;

use crate::metrics::{Metrics, ServiceLabel};
use crate::sync;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Error)]
pub enum PeerCallError {
    #[error("node {0} is unknown (no address)")]
    UnknownNode(NodeId),
    #[error("node {node}: {source}")]
    Proto { node: NodeId, source: ProtoError },
    #[error("node {node}: {error}")]
    Remote {
        node: NodeId,
        error: krg_proto::admin::AdminError,
    },
    /// The answer came from another service than the one asked.
    #[error("node {node} answered {answer}")]
    Unexpected { node: NodeId, answer: String },
}

type Slot = Arc<Mutex<Option<Arc<PeerClient>>>>;

/// Where a node's address is looked up when the pool has none yet.
pub type Resolver = Arc<dyn Fn(NodeId) -> Option<SocketAddr> + Send + Sync>;

pub struct PeerPool {
    key: ClusterKey,
    me: Identity,
    addrs: RwLock<HashMap<NodeId, SocketAddr>>,
    /// The replicated membership while this node is in a cluster: the
    /// addresses presence datagrams and the published view give can lag
    /// behind it (a service asked right after a change found "no address").
    resolver: RwLock<Option<Resolver>>,
    slots: std::sync::Mutex<HashMap<NodeId, Slot>>,
    metrics: Arc<Metrics>,
}

impl PeerPool {
    pub fn new(key: ClusterKey, me: Identity, metrics: Arc<Metrics>) -> Self {
        Self {
            key,
            me,
            metrics,
            addrs: RwLock::default(),
            resolver: RwLock::default(),
            slots: std::sync::Mutex::default(),
        }
    }

    /// Record where `node` listens. A changed address drops the old connection.
    pub fn set_address(&self, node: NodeId, addr: SocketAddr) {
        let mut addrs = sync::write(&self.addrs);
        if addrs.insert(node, addr) != Some(addr) {
            self.forget(node);
        }
    }

    /// Where `node` listens: as last recorded, else as the resolver says
    /// (then recorded).
    pub fn address(&self, node: NodeId) -> Option<SocketAddr> {
        if let Some(addr) = sync::read(&self.addrs).get(&node).copied() {
            return Some(addr);
        }
        let resolve = sync::read(&self.resolver).clone()?;
        let addr = resolve(node)?;
        self.set_address(node, addr);
        Some(addr)
    }

    /// Set (or, with None, remove) the fallback lookup of addresses.
    pub fn set_resolver(&self, resolver: Option<Resolver>) {
        *sync::write(&self.resolver) = resolver;
    }

    /// Drop the cached connection to `node` (it will be reopened on next use).
    pub fn forget(&self, node: NodeId) {
        sync::lock(&self.slots).remove(&node);
    }

    fn slot(&self, node: NodeId) -> Slot {
        sync::lock(&self.slots).entry(node).or_default().clone()
    }

    /// A live connection to `node`, opening one if needed. Concurrent callers
    /// share one connection attempt.
    pub async fn client(&self, node: NodeId) -> Result<Arc<PeerClient>, PeerCallError> {
        let addr = self.address(node).ok_or(PeerCallError::UnknownNode(node))?;
        let slot = self.slot(node);
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| c.is_alive()) {
            return Ok(c.clone());
        }
        let client = PeerClient::connect(addr, &self.key, self.me, CONNECT_TIMEOUT)
            .await
            .map_err(|source| PeerCallError::Proto { node, source })?;
        if client.peer().node != node {
            let message = format!("{addr} answered as node {}", client.peer().node);
            return Err(PeerCallError::Remote {
                node,
                error: krg_proto::admin::AdminError::new(
                    krg_proto::admin::ErrorKind::Conflict,
                    message,
                ),
            });
        }
        let client = Arc::new(client);
        *guard = Some(client.clone());
        Ok(client)
    }

    /// Send `req` to `node` and wait at most `timeout` for the answer. A
    /// connection found broken is reopened once.
    pub async fn call(
        &self,
        node: NodeId,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerCallError> {
        let service = service_of(&req);
        let start = std::time::Instant::now();
        let result = self.call_once_or_twice(node, req, timeout).await;
        self.metrics
            .peer_rpc_seconds
            .get_or_create(&ServiceLabel { service })
            .observe(start.elapsed().as_secs_f64());
        result
    }

    async fn call_once_or_twice(
        &self,
        node: NodeId,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerCallError> {
        let answer = |r: Result<PeerResponse, ProtoError>| match r {
            Ok(PeerResponse::Error(error)) => Err(PeerCallError::Remote { node, error }),
            Ok(resp) => Ok(resp),
            Err(source) => Err(PeerCallError::Proto { node, source }),
        };
        let first = self.client(node).await?.call(req.clone(), timeout).await;
        if !matches!(first, Err(ProtoError::Closed)) {
            return answer(first);
        }
        // A pooled connection the peer closed (it restarted) is reopened
        // once. The request may have reached the peer before the close, so
        // if the peer cannot be reached again, say so: a connection refused
        // now must not read as "never delivered".
        self.forget(node);
        let again = self.client(node).await.map_err(|_| PeerCallError::Proto {
            node,
            source: ProtoError::Closed,
        })?;
        answer(again.call(req, timeout).await)
    }
}

/// The `service` label of a peer request.
pub fn service_of(req: &PeerRequest) -> &'static str {
    match req {
        PeerRequest::Cluster(_) => "cluster",
        PeerRequest::Sched(_) => "sched",
        PeerRequest::Kdfs(_) => "kdfs",
        PeerRequest::Proc(_) => "proc",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> PeerPool {
        let key = ClusterKey::new(vec![7u8; 32]).unwrap();
        let me = Identity {
            session: 1,
            node: 1,
            role: krg_proto::auth::Role::Node,
        };
        PeerPool::new(key, me, Arc::new(Metrics::new()))
    }

    #[test]
    fn an_unknown_address_comes_from_the_resolver_and_is_kept() {
        let pool = pool();
        assert_eq!(pool.address(2), None);
        let at: SocketAddr = "10.0.0.2:7611".parse().unwrap();
        pool.set_resolver(Some(Arc::new(move |n| (n == 2).then_some(at))));
        assert_eq!(pool.address(2), Some(at));
        assert_eq!(pool.address(3), None);
        // Recorded: still known once the cluster is left.
        pool.set_resolver(None);
        assert_eq!(pool.address(2), Some(at));
        // A recorded address wins over the resolver.
        let other: SocketAddr = "10.0.0.9:7611".parse().unwrap();
        pool.set_resolver(Some(Arc::new(move |_| Some(other))));
        assert_eq!(pool.address(2), Some(at));
    }
}
