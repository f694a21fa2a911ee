//! Connections from the FUSE client to every node's krgd.
//!
//! One authenticated, multiplexed TCP connection per node, opened on first
//! use, and up to [`LANES`] - 1 more for the pieces of large writes. A node
//! that cannot be reached is remembered as down for a short while, so that
//! operations on its inodes fail at once (ENOTCONN) instead of each waiting
//! for a connect timeout; after that the next operation tries again, which
//! is how a returning node's files come back. A mirrored file system's
//! requests to a node that does not answer go to its mirror (`failover`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use krg_proto::admin::{AdminRequest, AdminResponse};
use krg_proto::auth::{ClusterKey, Identity};
use krg_proto::client::{AdminClient, PeerClient};
use krg_proto::kdfs::{KdfsAdminReply, KdfsAdminRequest, KdfsRequest, KdfsResponse};
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::{NodeId, ProtoError};

use crate::KdfsError;

mod failover;

/// How long to wait for a TCP connect + handshake to a krgd.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound on any one request (a 16 MiB read on a slow link included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an unreachable node is reported down without retrying.
const DOWN_HOLD: Duration = Duration::from_millis(500);
/// The mirrors of a mirrored file system's node a mount asks, first to
/// last: as many as a store may have (a directory may keep more copies
/// than the file system: `kdfsctl replicas N DIR`).
const MIRRORS: usize = crate::format::MAX_REPLICAS as usize - 1;

/// Connections to each node that the pieces of one large write share out
/// (lane 0 also carries every other request). Over one connection the
/// pieces were sealed by one task here and opened by one reader there,
/// one after the other, mostly on one core; over four, each piece is
/// sealed, sent, opened and written beside the others.
pub const LANES: u8 = 4;

type Slot = Arc<tokio::sync::Mutex<Option<Arc<PeerClient>>>>;

pub struct Cluster {
    key: ClusterKey,
    me: Identity,
    socket: PathBuf,
    /// Addresses given with `nodes=`: they win over what krgd reports.
    fixed: HashMap<NodeId, SocketAddr>,
    addrs: Mutex<HashMap<NodeId, SocketAddr>>,
    slots: Mutex<HashMap<(NodeId, u8), Slot>>,
    down_until: Mutex<HashMap<NodeId, Instant>>,
    /// How many mirrors a node that does not answer is asked of, first to
    /// last: for a mirrored file system, as many as a store may have (a
    /// directory may keep more copies than the file system:
    /// `kdfsctl replicas N DIR`; a mirror without a copy says so).
    mirrors: std::sync::atomic::AtomicUsize,
    /// Members the cluster marks failed, as the local krgd last said
    /// ([`Cluster::follow_failures`]), and a wake-up when that changes.
    failed: Mutex<Vec<NodeId>>,
    failures: tokio::sync::Notify,
    /// Handles of failed nodes' files opened again on their mirrors.
    reopened: failover::Reopened,
    /// Which mirror gave each handle a mirror gave.
    mirror_handles: failover::MirrorHandles,
    /// This node's krgd does not answer (mirrored file systems): the
    /// mount must not read its node's store in place.
    local_down: Arc<std::sync::atomic::AtomicBool>,
}

/// What the local krgd says about itself and the cluster.
pub struct LocalInfo {
    pub node: NodeId,
    pub session: krg_proto::SessionId,
    pub addr: SocketAddr,
    pub cluster_started: bool,
    pub members: Vec<(NodeId, SocketAddr)>,
    /// Members the cluster marks failed.
    pub failed: Vec<NodeId>,
}

/// Ask the local krgd one kDFS admin request.
pub async fn admin_call(
    socket: &std::path::Path,
    req: KdfsAdminRequest,
) -> Result<KdfsAdminReply, KdfsError> {
    let unreachable = |e: ProtoError| {
        KdfsError::Unreachable(format!(
            "cannot talk to the local krgd at {} ({e}); is krgd running?",
            socket.display()
        ))
    };
    let mut c = AdminClient::connect(socket).await.map_err(unreachable)?;
    match c
        .call(&AdminRequest::Kdfs(req))
        .await
        .map_err(unreachable)?
    {
        AdminResponse::Kdfs(r) => Ok(r),
        AdminResponse::Error(e) => Err(KdfsError::Invalid(format!("krgd: {}", e.message))),
        other => Err(KdfsError::Invalid(format!(
            "krgd answered out of turn: {other:?}"
        ))),
    }
}

pub async fn local_info(socket: &std::path::Path) -> Result<LocalInfo, KdfsError> {
    match admin_call(socket, KdfsAdminRequest::Info).await? {
        KdfsAdminReply::Info {
            node,
            session,
            addr,
            cluster_started,
            members,
            ..
        } => Ok(LocalInfo {
            node,
            session,
            addr,
            cluster_started,
            failed: members.iter().filter(|m| m.failed).map(|m| m.id).collect(),
            members: members.into_iter().map(|m| (m.id, m.addr)).collect(),
        }),
        other => Err(KdfsError::Invalid(format!(
            "krgd answered out of turn: {other:?}"
        ))),
    }
}

impl Cluster {
    pub fn new(
        key: ClusterKey,
        me: Identity,
        socket: PathBuf,
        fixed: HashMap<NodeId, SocketAddr>,
        info: &LocalInfo,
        copies: u8,
    ) -> Self {
        let mut addrs: HashMap<NodeId, SocketAddr> = info.members.iter().copied().collect();
        addrs.insert(info.node, info.addr);
        addrs.extend(fixed.iter().map(|(k, v)| (*k, *v)));
        Self {
            key,
            me,
            socket,
            fixed,
            addrs: Mutex::new(addrs),
            slots: Mutex::new(HashMap::new()),
            down_until: Mutex::new(HashMap::new()),
            mirrors: std::sync::atomic::AtomicUsize::new(if copies > 1 { MIRRORS } else { 0 }),
            failed: Mutex::new(info.failed.clone()),
            failures: tokio::sync::Notify::new(),
            reopened: failover::Reopened::default(),
            mirror_handles: failover::MirrorHandles::default(),
            local_down: Arc::default(),
        }
    }

    /// Set while this node's own store must not be read in place (see
    /// `failover`); shared with the mount's [`LocalStore`](crate::client::local::LocalStore).
    /// How many mirrors of a node that does not answer are asked.
    pub(super) fn mirrors(&self) -> usize {
        self.mirrors.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The file system was converted to more copies while mounted
    /// (`kdfsctl replicas 2`): a node that does not answer is asked of its
    /// mirrors from now on.
    pub fn now_mirrored(self: &Arc<Self>) {
        let was = self
            .mirrors
            .swap(MIRRORS, std::sync::atomic::Ordering::AcqRel);
        if was == 0 {
            tokio::spawn(self.clone().follow_failures());
        }
    }

    pub fn local_down(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.local_down.clone()
    }

    /// Every node with a known address.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    async fn refresh_addrs(&self) {
        if let Ok(info) = local_info(&self.socket).await {
            let mut a = self.addrs.lock().unwrap_or_else(|p| p.into_inner());
            for (id, addr) in info.members {
                a.insert(id, addr);
            }
            a.extend(self.fixed.iter().map(|(k, v)| (*k, *v)));
        }
    }

    fn addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .copied()
    }

    fn slot(&self, node: NodeId, lane: u8) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((node, lane))
            .or_default()
            .clone()
    }

    fn is_held_down(&self, node: NodeId) -> bool {
        let d = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        d.get(&node).is_some_and(|t| Instant::now() < *t)
    }

    fn mark_down(&self, node: NodeId) {
        self.down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, Instant::now() + DOWN_HOLD);
    }

    async fn client(&self, node: NodeId, lane: u8) -> Result<Arc<PeerClient>, i32> {
        let slot = self.slot(node, lane);
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref() {
            if c.is_alive() {
                return Ok(c.clone());
            }
        }
        *guard = None;
        if self.is_held_down(node) {
            return Err(libc::ENOTCONN);
        }
        let addr = match self.addr(node) {
            Some(a) => a,
            None => {
                self.refresh_addrs().await;
                self.addr(node).ok_or(libc::EIO)?
            }
        };
        match PeerClient::connect(addr, &self.key, self.me, CONNECT_TIMEOUT).await {
            Ok(c) => {
                let c = Arc::new(c);
                *guard = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                tracing::warn!(node, %addr, error = %e, "kdfs: node unreachable");
                self.mark_down(node);
                Err(libc::ENOTCONN)
            }
        }
    }

    /// Send `req` to `node`'s krgd; a file-system error comes back as its errno.
    pub async fn call(&self, node: NodeId, req: KdfsRequest) -> Result<KdfsResponse, i32> {
        self.call_within(node, req, CALL_TIMEOUT).await
    }

    /// [`Cluster::call`] with another bound on the wait for the answer.
    pub async fn call_within(
        &self,
        node: NodeId,
        req: KdfsRequest,
        timeout: Duration,
    ) -> Result<KdfsResponse, i32> {
        self.call_on(node, 0, req, timeout).await
    }

    /// [`Cluster::call_within`] on connection `lane` to `node`. A request
    /// to a node that does not answer is asked of its mirrors (see
    /// `crate::mirror`): served by the one that took the store over, a
    /// read answered from a full copy, ENOTCONN when none holds one.
    pub async fn call_on(
        &self,
        node: NodeId,
        lane: u8,
        req: KdfsRequest,
        timeout: Duration,
    ) -> Result<KdfsResponse, i32> {
        if self.mirrors() > 0 {
            return self.call_mirrored(node, lane, req, timeout).await;
        }
        self.direct(node, lane, req, timeout).await
    }

    async fn direct(
        &self,
        node: NodeId,
        lane: u8,
        req: KdfsRequest,
        timeout: Duration,
    ) -> Result<KdfsResponse, i32> {
        if self.mirrors() == 0 {
            return self.connect_and_call(node, lane, req, timeout).await;
        }
        if self.is_failed(node) {
            return Err(libc::ENOTCONN);
        }
        // Connecting too: a stopped node's kernel still accepts the
        // connection, and the handshake would wait its whole timeout.
        tokio::select! {
            a = self.connect_and_call(node, lane, req, timeout) => a,
            () = self.until_failed(node) => {
                self.mark_down(node);
                Err(libc::ENOTCONN)
            }
        }
    }

    async fn connect_and_call(
        &self,
        node: NodeId,
        lane: u8,
        req: KdfsRequest,
        timeout: Duration,
    ) -> Result<KdfsResponse, i32> {
        let c = self.client(node, lane).await?;
        match c.call(PeerRequest::Kdfs(req), timeout).await {
            Ok(PeerResponse::Kdfs(KdfsResponse::Errno(e))) => Err(e),
            Ok(PeerResponse::Kdfs(r)) => Ok(r),
            Ok(PeerResponse::Error(e)) => {
                tracing::warn!(node, error = %e.message, "kdfs: node refused");
                Err(libc::EIO)
            }
            Ok(_) => Err(libc::EIO),
            Err(ProtoError::Timeout(_)) => {
                self.mark_down(node);
                Err(libc::EIO)
            }
            Err(_) => {
                self.mark_down(node);
                Err(libc::ENOTCONN)
            }
        }
    }
}
