//! Cluster membership: presence discovery, the Raft-replicated member table,
//! failure detection, and the `krgadm cluster …` / `krgadm nodes …` requests.
//!
//! * [`discovery`]: which krgds of the session are running (present).
//! * [`state`]: the replicated member table and its epoch.
//! * [`store`] / [`network`]: openraft storage and transport.
//! * [`membership`]: changes run by the Raft leader (start, add, del, stop).
//! * [`selection`]: which nodes a change names, and which members vote.
//! * [`detector`]: the leader's liveness probes, marking members failed.
//! * [`report`]: status rows and the published [`ClusterView`](crate::context::ClusterView).

mod detector;
mod discovery;
mod membership;
mod network;
mod report;
mod selection;
mod state;
mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::auth::Identity;
use krg_proto::cluster::{
    ClusterPeerReply, ClusterPeerRequest, ClusterReply, ClusterRequest, NodeSelf, Presence,
};
use tokio::sync::{watch, RwLock};
use tokio::task::JoinHandle;

use self::discovery::Discovery;
use self::state::ClusterState;
use self::store::{LogStore, Raft, StateMachine};
use crate::caller::Caller;
use crate::context::NodeContext;
use crate::peers::PeerCallError;
use crate::sync;
use crate::DaemonError;

/// How long a forwarded membership request may take end to end.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a change may be forwarded before giving up.
const MAX_HOPS: u8 = 3;

/// This node's membership in one cluster: a Raft instance and its tasks.
pub(crate) struct Joined {
    pub uid: u64,
    pub raft: Raft,
    pub state: watch::Receiver<ClusterState>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Joined {
    fn state(&self) -> ClusterState {
        self.state.borrow().clone()
    }
}

pub struct ClusterService {
    ctx: Arc<NodeContext>,
    discovery: OnceLock<Arc<Discovery>>,
    joined: RwLock<Option<Arc<Joined>>>,
    /// uid of the cluster this node is in (0: none); readable without awaiting.
    joined_uid: AtomicU64,
    /// When the Raft leader last pinged this node.
    leader_contact: Mutex<Option<Instant>>,
    /// Serialises membership changes on the leader.
    change_lock: tokio::sync::Mutex<()>,
    view_task: Mutex<Option<JoinHandle<()>>>,
}

impl ClusterService {
    pub async fn start(ctx: Arc<NodeContext>) -> Result<Arc<Self>, DaemonError> {
        let svc = Arc::new(Self {
            ctx: ctx.clone(),
            discovery: OnceLock::new(),
            joined: RwLock::new(None),
            joined_uid: AtomicU64::new(0),
            leader_contact: Mutex::new(None),
            change_lock: tokio::sync::Mutex::new(()),
            view_task: Mutex::new(None),
        });
        let weak = Arc::downgrade(&svc);
        let me = {
            let ctx = ctx.clone();
            Arc::new(move || Presence {
                node: ctx.node_id(),
                mac: ctx.mac,
                addr: ctx.config.advertise,
                cluster: weak.upgrade().and_then(|s| s.cluster_uid()),
            })
        };
        let _ = svc.discovery.set(Discovery::start(ctx, me).await);
        let task = tokio::spawn(svc.clone().refresh_view_forever());
        *sync::lock(&svc.view_task) = Some(task);
        Ok(svc)
    }

    pub async fn shutdown(&self) {
        if let Some(t) = sync::lock(&self.view_task).take() {
            t.abort();
        }
        if let Some(d) = self.discovery.get() {
            d.stop();
        }
        self.leave(None).await;
    }

    fn discovery(&self) -> Option<&Arc<Discovery>> {
        self.discovery.get()
    }

    /// Resolves if another krgd with this node's id shows up while this one
    /// is starting (see [`Discovery::identity_conflict`]).
    pub async fn identity_conflict(&self) -> std::net::SocketAddr {
        match self.discovery() {
            Some(d) => d.identity_conflict().await,
            None => std::future::pending().await,
        }
    }

    /// The cluster this node is in, if any.
    pub fn cluster_uid(&self) -> Option<u64> {
        Some(self.joined_uid.load(Ordering::SeqCst)).filter(|u| *u != 0)
    }

    pub(crate) async fn joined(&self) -> Option<Arc<Joined>> {
        self.joined.read().await.clone()
    }

    pub async fn handle_admin(
        self: &Arc<Self>,
        caller: &Caller,
        req: ClusterRequest,
    ) -> Result<ClusterReply, AdminError> {
        match req {
            ClusterRequest::Status => Ok(ClusterReply::Status(self.status().await)),
            ClusterRequest::NodesStatus => Ok(ClusterReply::Nodes(self.nodes().await)),
            change => {
                // Root, or the user krgd itself runs as (a private test cluster).
                let owner = nix::unistd::geteuid().as_raw();
                if !caller.is_root() && caller.uid != owner {
                    return Err(AdminError::new(
                        ErrorKind::PermissionDenied,
                        format!(
                            "permission denied: changing the cluster needs root (uid {})",
                            caller.uid
                        ),
                    ));
                }
                self.change(change, 0).await
            }
        }
    }

    /// Run a membership change here if this node leads, else forward it to
    /// the leader (or, from a node outside the cluster, to a member).
    async fn change(
        self: &Arc<Self>,
        req: ClusterRequest,
        hops: u8,
    ) -> Result<ClusterReply, AdminError> {
        if req == ClusterRequest::Start {
            return self.start_cluster().await;
        }
        let target = match self.joined().await {
            Some(joined) => {
                let leader = self.reachable_leader(&joined)?;
                if leader == self.ctx.node_id() {
                    return self.lead(&joined, req).await;
                }
                leader
            }
            None => self.member_to_ask()?,
        };
        if hops >= MAX_HOPS {
            return Err(AdminError::new(
                ErrorKind::Unavailable,
                "leadership is moving; run the command again",
            ));
        }
        let forward = ClusterPeerRequest::Forward {
            req,
            hops: hops + 1,
        };
        match network::call(&self.ctx.peers, target, forward, FORWARD_TIMEOUT).await {
            Ok(ClusterPeerReply::Forwarded(reply)) => Ok(reply),
            Ok(other) => Err(AdminError::new(
                ErrorKind::Internal,
                format!("node {target} sent {other:?}"),
            )),
            Err(PeerCallError::Remote { error, .. }) => Err(error),
            Err(e @ PeerCallError::Unexpected { .. }) => {
                Err(AdminError::new(ErrorKind::Internal, e.to_string()))
            }
            Err(e) => Err(AdminError::new(
                ErrorKind::Unavailable,
                format!(
                    "node {target} did not complete the change: {e}; check `krgadm cluster status`"
                ),
            )),
        }
    }

    pub async fn handle_peer(
        self: &Arc<Self>,
        from: &Identity,
        req: ClusterPeerRequest,
    ) -> Result<ClusterPeerReply, AdminError> {
        match req {
            ClusterPeerRequest::Ping {
                from: leader,
                cluster,
            } => Ok(self.pong(leader, cluster).await),
            ClusterPeerRequest::Raft(rpc) => {
                let joined = self.joined().await.ok_or_else(not_in_cluster)?;
                network::serve(&joined.raft, rpc)
                    .await
                    .map(ClusterPeerReply::Raft)
                    .map_err(|e| AdminError::new(ErrorKind::InvalidArgument, e))
            }
            ClusterPeerRequest::Forward { req, hops } => self.forwarded(from, req, hops).await,
            ClusterPeerRequest::Welcome { cluster } => {
                self.join(cluster).await.map(|_| ClusterPeerReply::Ack)
            }
            ClusterPeerRequest::Evict { cluster } => {
                self.leave(Some(cluster)).await;
                Ok(ClusterPeerReply::Ack)
            }
            ClusterPeerRequest::Describe { from: asker } => {
                // The asker is running too: nodes that only poll a seed become
                // known to it, and through its answers to everyone else.
                if let Some(d) = self.discovery() {
                    if from.role == krg_proto::auth::Role::Node && asker.node == from.node {
                        d.record(asker, Duration::ZERO);
                    }
                }
                Ok(ClusterPeerReply::Describe(self.describe()))
            }
        }
    }

    /// Answer the leader's liveness probe; a ping from this node's own
    /// cluster also proves the leader is reachable.
    async fn pong(&self, leader: krg_proto::NodeId, cluster: u64) -> ClusterPeerReply {
        let mine = self.cluster_uid();
        if mine == Some(cluster) {
            *sync::lock(&self.leader_contact) = Some(Instant::now());
        }
        tracing::trace!(leader, "ping");
        let epoch = match self.joined().await {
            Some(j) => j.state.borrow().epoch,
            None => 0,
        };
        ClusterPeerReply::Pong {
            epoch,
            cluster: mine,
        }
    }

    /// A change forwarded by a krgd that authorised its caller already.
    async fn forwarded(
        self: &Arc<Self>,
        from: &Identity,
        req: ClusterRequest,
        hops: u8,
    ) -> Result<ClusterPeerReply, AdminError> {
        if from.role != krg_proto::auth::Role::Node || req == ClusterRequest::Start {
            return Err(AdminError::new(
                ErrorKind::PermissionDenied,
                "only krgd nodes may forward changes",
            ));
        }
        if self.joined().await.is_none() {
            return Err(not_in_cluster());
        }
        self.change(req, hops)
            .await
            .map(ClusterPeerReply::Forwarded)
    }

    /// From outside any cluster: a present member of the one cluster this
    /// node can see, to carry an administrator's change.
    fn member_to_ask(&self) -> Result<krg_proto::NodeId, AdminError> {
        let present = self.discovery().map(|d| d.present()).unwrap_or_default();
        let clusters: std::collections::BTreeSet<u64> =
            present.iter().filter_map(|p| p.cluster).collect();
        match clusters.len() {
            0 => Err(not_in_cluster()),
            1 => Ok(present.iter().find(|p| p.cluster.is_some()).map(|p| p.node).ok_or_else(not_in_cluster)?),
            _ => Err(AdminError::new(
                ErrorKind::Conflict,
                "this node is in no cluster and sees members of several; run the command on a member",
            )),
        }
    }

    fn self_presence(&self) -> Presence {
        Presence {
            node: self.ctx.node_id(),
            mac: self.ctx.mac,
            addr: self.ctx.config.advertise,
            cluster: self.cluster_uid(),
        }
    }

    fn describe(&self) -> NodeSelf {
        let known = self
            .discovery()
            .map(|d| d.present_with_age())
            .unwrap_or_default();
        NodeSelf {
            me: self.self_presence(),
            known,
        }
    }

    /// Start a Raft instance for cluster `uid` (idempotent for the same uid).
    async fn join(self: &Arc<Self>, uid: u64) -> Result<Arc<Joined>, AdminError> {
        let mut slot = self.joined.write().await;
        if let Some(j) = slot.as_ref() {
            return if j.uid == uid {
                Ok(j.clone())
            } else {
                Err(AdminError::new(
                    ErrorKind::Conflict,
                    format!("node {} is already in another cluster", self.ctx.node_id()),
                ))
            };
        }
        let config = raft_config(&self.ctx).map_err(|e| AdminError::new(ErrorKind::Internal, e))?;
        let (machine, state_rx) = StateMachine::new();
        let raft = Raft::new(
            self.ctx.node_id() as u64,
            Arc::new(config),
            network::Network::new(self.ctx.clone()),
            LogStore::default(),
            machine,
        )
        .await
        .map_err(|e| AdminError::new(ErrorKind::Internal, format!("cannot start Raft: {e}")))?;
        let joined = Arc::new(Joined {
            uid,
            raft,
            state: state_rx,
            tasks: Mutex::default(),
        });
        let tasks = vec![
            tokio::spawn(self.clone().follow_state(joined.clone())),
            tokio::spawn(detector::run(self.clone(), joined.clone())),
        ];
        *sync::lock(&joined.tasks) = tasks;
        self.joined_uid.store(uid, Ordering::SeqCst);
        *sync::lock(&self.leader_contact) = Some(Instant::now());
        *slot = Some(joined.clone());
        tracing::info!(
            node = self.ctx.node_id(),
            cluster = format!("{uid:016x}"),
            "joined cluster"
        );
        Ok(joined)
    }

    /// Drop this node's Raft instance (only if it belongs to cluster `uid`,
    /// when given) and become a present node again.
    async fn leave(&self, uid: Option<u64>) {
        self.leave_if(|j| uid.is_none_or(|u| u == j.uid)).await
    }

    /// Leave only if `instance` is still the current Raft instance (a delayed
    /// leave must not end a membership that began after it was scheduled).
    async fn leave_instance(&self, instance: &Arc<Joined>) {
        self.leave_if(|j| Arc::ptr_eq(j, instance)).await
    }

    async fn leave_if(&self, pred: impl FnOnce(&Arc<Joined>) -> bool) {
        let joined = {
            let mut slot = self.joined.write().await;
            match slot.as_ref() {
                Some(j) if pred(j) => slot.take(),
                _ => None,
            }
        };
        let Some(j) = joined else { return };
        self.joined_uid.store(0, Ordering::SeqCst);
        sync::lock(&j.tasks).drain(..).for_each(|t| t.abort());
        if let Err(e) = j.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft shutdown");
        }
        tracing::info!(
            node = self.ctx.node_id(),
            cluster = format!("{:016x}", j.uid),
            "left cluster"
        );
        self.publish_view().await;
    }

    /// React to every applied change: publish the view, and leave when the
    /// cluster is dissolved or this node was removed.
    async fn follow_state(self: Arc<Self>, joined: Arc<Joined>) {
        let mut rx = joined.state.clone();
        while rx.changed().await.is_ok() {
            self.publish_view().await;
            let state = rx.borrow().clone();
            let removed = state.epoch > 0 && !state.is_member(self.ctx.node_id());
            if state.dissolved || removed {
                // Leave from another task (leave aborts this one). A removed
                // node waits for the leader's Evict, so that its vote still
                // counts while the leader commits the new Raft membership;
                // if it was re-added meanwhile, it stays.
                let svc = self.clone();
                let me = self.ctx.node_id();
                let joined = joined.clone();
                let grace = if state.dissolved {
                    Duration::from_millis(300)
                } else {
                    Duration::from_secs(5)
                };
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    let state = joined.state();
                    if state.dissolved || !state.is_member(me) {
                        svc.leave_instance(&joined).await;
                    }
                });
                return;
            }
        }
    }

    /// The leader this node can currently reach, or a no-quorum error.
    fn reachable_leader(&self, joined: &Joined) -> Result<krg_proto::NodeId, AdminError> {
        let metrics = joined.raft.metrics().borrow().clone();
        let Some(leader) = metrics.current_leader else {
            return Err(no_quorum());
        };
        if leader == self.ctx.node_id() as u64 {
            let fresh = metrics
                .millis_since_quorum_ack
                .is_some_and(|ms| Duration::from_millis(ms) < self.ctx.config.failure_timeout);
            return if fresh {
                Ok(leader as krg_proto::NodeId)
            } else {
                Err(no_quorum())
            };
        }
        if self.leader_heard_recently() {
            Ok(leader as krg_proto::NodeId)
        } else {
            Err(no_quorum())
        }
    }

    fn leader_heard_recently(&self) -> bool {
        sync::lock(&self.leader_contact)
            .is_some_and(|at| at.elapsed() < self.ctx.config.failure_timeout)
    }

    async fn refresh_view_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            self.publish_view().await;
        }
    }
}

fn raft_config(ctx: &NodeContext) -> Result<openraft::Config, String> {
    // Raft heartbeats at half the probe interval; elections start after half
    // the failure timeout, so a dead leader is replaced within the bound.
    let heartbeat = (ctx.config.heartbeat.as_millis() as u64 / 2).max(50);
    let election_min = (ctx.config.failure_timeout.as_millis() as u64 / 2).max(heartbeat * 3);
    openraft::Config {
        cluster_name: format!("krg-session-{}", ctx.config.session_id),
        heartbeat_interval: heartbeat,
        election_timeout_min: election_min,
        election_timeout_max: election_min * 2,
        ..Default::default()
    }
    .validate()
    .map_err(|e| e.to_string())
}

fn not_in_cluster() -> AdminError {
    AdminError::new(
        ErrorKind::NotFound,
        "this node is not a member of a cluster (start one with `krgadm cluster start`)",
    )
}

fn no_quorum() -> AdminError {
    AdminError::new(
        ErrorKind::NoQuorum,
        "no quorum: this node cannot reach a majority of the cluster's voters, so membership cannot change",
    )
}
