//! Cluster membership: presence discovery, the Raft-replicated member table,
//! failure detection, and the `krgadm cluster …` / `krgadm nodes …` requests.
//!
//! * [`discovery`]: which krgds of the session are running (present).
//! * [`state`]: the replicated member table and its epoch.
//! * [`instance`]: this node's Raft instance (join, resume from disk, leave).
//! * [`store`] / [`network`]: openraft storage and transport; [`disk`] and
//!   [`writer`]: the Raft state on disk; [`raft_types`]: the types they share.
//! * [`membership`]: changes run by the Raft leader (start, add, stop);
//!   [`leave`]: removal, with the `leaving` state and the hand-over hook.
//! * [`selection`]: which nodes a change names, and which members vote.
//! * [`detector`]: the leader's liveness probes, marking members failed.
//! * [`owners`] / [`ownership`]: node checkouts (`krgadm nodes checkout`,
//!   `release`), committed like membership.
//! * [`placements`] / [`placement`]: where a migration's process runs,
//!   decided once in the log (the handover fence).
//! * [`report`]: status rows and the published [`ClusterView`](crate::context::ClusterView).

mod detector;
mod discovery;
mod disk;
mod instance;
mod leave;
mod membership;
mod network;
pub mod owners;
mod ownership;
mod placement;
mod placements;
mod raft_types;
mod report;
mod selection;
mod state;
mod store;
mod writer;

/// Crash-safe replacement of a small file (the kDFS service's records too).
pub(crate) use disk::write_atomic;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::auth::Identity;
use krg_proto::cluster::{
    ClusterPeerReply, ClusterPeerRequest, ClusterReply, ClusterRequest, NodeSelf, Presence,
};
use tokio::sync::RwLock;
use tokio::task::JoinHandle;

use self::discovery::Discovery;
pub(crate) use self::instance::Joined;
pub use self::leave::{ask_leaving, HandOver, Pass};
use crate::caller::Caller;
use crate::context::NodeContext;
use crate::peers::PeerCallError;
use crate::sync;
use crate::DaemonError;

/// How long a forwarded membership request may take end to end.
pub(super) const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a change may be forwarded before giving up.
const MAX_HOPS: u8 = 3;

/// The hop count a forwarded change carries on, or a refusal once it went
/// round too often (leadership moving faster than the change travels).
fn next_hop(hops: u8) -> Result<u8, AdminError> {
    if hops >= MAX_HOPS {
        return Err(AdminError::new(
            ErrorKind::Unavailable,
            "leadership is moving; run the command again",
        ));
    }
    Ok(hops + 1)
}

pub struct ClusterService {
    ctx: Arc<NodeContext>,
    discovery: OnceLock<Arc<Discovery>>,
    joined: RwLock<Option<Arc<Joined>>>,
    /// uid of the cluster this node is in (0: none); readable without awaiting.
    joined_uid: AtomicU64,
    /// When the Raft leader last pinged this node.
    leader_contact: Mutex<Option<Instant>>,
    /// Since when this node reaches no majority (see `report::cut_off`).
    no_majority_since: Mutex<Option<Instant>>,
    /// Serialises membership changes on the leader.
    change_lock: tokio::sync::Mutex<()>,
    view_task: Mutex<Option<JoinHandle<()>>>,
    /// Services asked before a leaving node is removed (none yet).
    handovers: std::sync::RwLock<Vec<Arc<dyn HandOver>>>,
}

impl ClusterService {
    pub async fn start(ctx: Arc<NodeContext>) -> Result<Arc<Self>, DaemonError> {
        let svc = Arc::new(Self {
            ctx: ctx.clone(),
            discovery: OnceLock::new(),
            joined: RwLock::new(None),
            joined_uid: AtomicU64::new(0),
            leader_contact: Mutex::new(None),
            no_majority_since: Mutex::new(None),
            change_lock: tokio::sync::Mutex::new(()),
            view_task: Mutex::new(None),
            handovers: std::sync::RwLock::default(),
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
        // Before anything is served: a damaged state stops krgd here.
        svc.resume().await?;
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
        self.stop_raft().await;
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
            // Any user, for themselves: authorised per node and owner.
            ClusterRequest::Checkout(req) => self.checkout(caller, req).await,
            ClusterRequest::Release(req) => self.release(caller, req).await,
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
        // A removal waits for the leaving nodes' hand-overs.
        let timeout = match req {
            ClusterRequest::Del(_) => FORWARD_TIMEOUT + self.handover_patience(),
            _ => FORWARD_TIMEOUT,
        };
        let forward = ClusterPeerRequest::Forward {
            req,
            hops: next_hop(hops)?,
        };
        self.forward_to(target, forward, timeout).await
    }

    /// Send a forwarded change to `target` and relay its answer.
    async fn forward_to(
        &self,
        target: krg_proto::NodeId,
        forward: ClusterPeerRequest,
        timeout: Duration,
    ) -> Result<ClusterReply, AdminError> {
        match network::call(&self.ctx.peers, target, forward, timeout).await {
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
                network::serve(&joined.raft, joined.uid, rpc)
                    .await
                    .map(ClusterPeerReply::Raft)
                    .map_err(|e| AdminError::new(ErrorKind::InvalidArgument, e))
            }
            ClusterPeerRequest::Forward { req, hops } => self.forwarded(from, req, hops).await,
            ClusterPeerRequest::ForwardOwnership { change, hops } => {
                if from.role != krg_proto::auth::Role::Node {
                    return Err(AdminError::new(
                        ErrorKind::PermissionDenied,
                        "only krgd nodes may forward changes",
                    ));
                }
                self.route_ownership(change, hops)
                    .await
                    .map(ClusterPeerReply::Forwarded)
            }
            ClusterPeerRequest::Place { xfer, node, hops } => {
                if from.role != krg_proto::auth::Role::Node {
                    return Err(AdminError::new(
                        ErrorKind::PermissionDenied,
                        "only krgd nodes may place a migration",
                    ));
                }
                self.route_placement(xfer, node, hops)
                    .await
                    .map(ClusterPeerReply::Placed)
            }
            ClusterPeerRequest::Welcome {
                cluster,
                epoch,
                term,
            } => {
                self.join(cluster, Some((epoch, term))).await?;
                Ok(ClusterPeerReply::Ack)
            }
            ClusterPeerRequest::Evict {
                cluster,
                epoch,
                term,
            } => {
                self.evicted(from.node, cluster, epoch, term).await;
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

    /// How far this node is in `j`: the epoch its services see (its
    /// published view, not only what its state machine applied) and its
    /// last applied log index. A change waited for "on every member"
    /// (`wait_everywhere`) is then visible to a command run on any of them
    /// the moment it returns (mkfs.kdfs right after `cluster start` found
    /// "no cluster is running" otherwise).
    pub(super) fn progress(&self, j: &Joined) -> (u64, u64) {
        let applied = j
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        (j.state.borrow().epoch.min(self.ctx.view_epoch()), applied)
    }

    /// Answer the leader's liveness probe; a ping from this node's own
    /// cluster also proves the leader is reachable.
    async fn pong(&self, leader: krg_proto::NodeId, cluster: u64) -> ClusterPeerReply {
        let mine = self.cluster_uid();
        if mine == Some(cluster) {
            *sync::lock(&self.leader_contact) = Some(Instant::now());
        }
        tracing::trace!(leader, "ping");
        let (epoch, applied) = match self.joined().await {
            Some(j) => self.progress(&j),
            None => (0, 0),
        };
        ClusterPeerReply::Pong {
            epoch,
            cluster: mine,
            applied,
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

    /// The leader this node can currently reach, or a no-quorum error.
    fn reachable_leader(&self, joined: &Joined) -> Result<krg_proto::NodeId, AdminError> {
        let watch = joined.raft.metrics();
        // A core that stopped leaves its last metrics behind: not a leader.
        if watch.has_changed().is_err() {
            return Err(AdminError::new(
                ErrorKind::NoQuorum,
                "no quorum: this node's Raft stopped (see its log); it starts again from disk",
            ));
        }
        let metrics = watch.borrow().clone();
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

fn not_in_cluster() -> AdminError {
    AdminError::new(
        ErrorKind::NotFound,
        "this node is not a member of a cluster (start one with `krgadm cluster start`)",
    )
}

/// A change was proposed but not committed within the bound: it may still
/// be, by this leader or the next (unlike [`no_quorum`], which is said
/// before anything is proposed).
fn not_committed_in_time() -> AdminError {
    AdminError::new(
        ErrorKind::NoQuorum,
        "no quorum: the change was proposed but not committed in time; it may still be — check `krgadm cluster status`",
    )
}

fn no_quorum() -> AdminError {
    AdminError::new(
        ErrorKind::NoQuorum,
        "no quorum: this node cannot reach a majority of the cluster's voters, so membership cannot change",
    )
}
