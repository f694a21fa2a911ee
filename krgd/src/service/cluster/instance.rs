//! This node's Raft instance: started when the node is welcomed into a
//! cluster (fresh state on disk), resumed from disk when krgd restarts,
//! stopped when krgd stops (state kept) and dropped when the node leaves its
//! cluster (state deleted).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use krg_proto::admin::{AdminError, ErrorKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::disk::{self, Loaded, LogImage};
use super::raft_types::Raft;
use super::state::ClusterState;
use super::store::{LogStore, StateMachine};
use super::writer::Writer;
use super::{detector, network, ClusterService};
use crate::context::NodeContext;
use crate::{sync, DaemonError};

/// This node's membership in one cluster: a Raft instance and its tasks.
pub(crate) struct Joined {
    pub uid: u64,
    pub raft: Raft,
    pub state: watch::Receiver<ClusterState>,
    disk: Arc<Writer>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The epoch after which the leader that welcomed this instance meant
    /// to add it, plus one (0: resumed from disk, or not welcomed).
    welcome_epoch: AtomicU64,
    /// The latest Raft term of the leaders that welcomed this instance.
    welcome_term: AtomicU64,
    /// When the last welcome came.
    welcomed: Mutex<Option<Instant>>,
}

/// How long a welcome shields a node from evictions of its own term: an
/// eviction sent before the welcome may wait for the lock the welcome took,
/// but not this long; after it, a welcome whose add was given up (another
/// node of the same `nodes add` refused its welcome) no longer keeps the
/// node in a cluster that does not list it.
const WELCOME_SHIELD: Duration = Duration::from_secs(10);

impl Joined {
    pub(super) fn state(&self) -> ClusterState {
        self.state.borrow().clone()
    }

    /// A leader of term `term` welcomed this instance at its epoch `epoch`.
    pub(super) fn welcomed_at(&self, epoch: u64, term: u64) {
        self.welcome_term.fetch_max(term, Ordering::SeqCst);
        self.welcome_epoch
            .fetch_max(epoch.saturating_add(1), Ordering::SeqCst);
        *sync::lock(&self.welcomed) = Some(Instant::now());
    }

    /// The term of the last entry this node applied. A node that applied an
    /// entry of term T holds every entry any leader of a term up to T
    /// committed (Raft's leader completeness), so an eviction stamped with
    /// it, and with the epoch read after it, speaks for all those terms.
    pub(super) fn applied_term(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.leader_id.term)
    }

    /// The Raft term this node is in now (the term a welcome's add will be
    /// committed in, if at all).
    pub(super) fn current_term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Why an eviction stamped `epoch`/`term` is stale, if it is.
    fn stale_eviction(&self, epoch: u64, term: u64) -> Option<Staleness> {
        let welcome = sync::lock(&self.welcomed).map(|at| Welcome {
            epoch: self.welcome_epoch.load(Ordering::SeqCst),
            term: self.welcome_term.load(Ordering::SeqCst),
            age: at.elapsed(),
        });
        eviction_staleness(self.state.borrow().epoch, welcome, epoch, term)
    }
}

/// The last welcome an instance had.
#[derive(Clone, Copy, Debug)]
struct Welcome {
    /// The epoch it will be a member after, plus one.
    epoch: u64,
    term: u64,
    age: Duration,
}

/// Why an eviction is ignored.
#[derive(Debug, PartialEq, Eq)]
enum Staleness {
    /// This node applied a later membership (it was re-added since).
    Applied(u64),
    /// A leader of the eviction's term or a later one welcomed this node
    /// after the eviction's epoch, a moment ago.
    Welcomed(u64),
}

/// Whether an eviction stamped `epoch`/`term` is stale for a node that
/// applied `applied` and had `welcome`. A welcome from an earlier term than
/// the eviction does not count: its add was not committed (the evicting
/// leader, which applied an entry of its own term, would list the node) and
/// can no longer be. Nor does an old welcome (see [`WELCOME_SHIELD`]).
fn eviction_staleness(
    applied: u64,
    welcome: Option<Welcome>,
    epoch: u64,
    term: u64,
) -> Option<Staleness> {
    if applied > epoch {
        return Some(Staleness::Applied(applied));
    }
    let w = welcome?;
    (w.epoch > epoch && w.term >= term && w.age < WELCOME_SHIELD)
        .then_some(Staleness::Welcomed(w.epoch))
}

/// How long a Raft core that stopped on its own stays down before it is
/// started again (a core that fails at once again restarts at this pace).
const CORE_RESTART_DELAY: Duration = Duration::from_secs(1);

/// Whether leaving deletes the Raft state on disk.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Forget {
    /// The node left its cluster (removed, evicted, dissolved).
    Yes,
    /// krgd stops; the node stays a member and resumes when it restarts.
    No,
}

impl ClusterService {
    /// Start a Raft instance for cluster `uid` (idempotent for the same uid),
    /// with fresh state on disk. `welcome`: the epoch and term of the leader that
    /// welcomed this node, recorded before the instance can be seen, so
    /// that an eviction sent before the welcome but handled after it (it
    /// waited for the lock) is ignored: the fault campaign (seed 938669814,
    /// release build) saw a welcomed node obey such stale evictions in the
    /// instant between the two, wipe its state, and its add be acknowledged
    /// anyway, after which the leader removed it on its own.
    pub(super) async fn join(
        self: &Arc<Self>,
        uid: u64,
        welcome: Option<(u64, u64)>,
    ) -> Result<Arc<Joined>, AdminError> {
        let mut slot = self.joined.write().await;
        if let Some(j) = slot.as_ref() {
            return if j.uid == uid {
                if let Some((epoch, term)) = welcome {
                    j.welcomed_at(epoch, term);
                }
                Ok(j.clone())
            } else {
                Err(AdminError::new(
                    ErrorKind::Conflict,
                    format!("node {} is already in another cluster", self.ctx.node_id()),
                ))
            };
        }
        let data_dir = self.ctx.config.data_dir.clone();
        let internal = |e: String| AdminError::new(ErrorKind::Internal, e);
        tokio::task::spawn_blocking(move || disk::create(&data_dir, uid))
            .await
            .map_err(|e| internal(e.to_string()))?
            .map_err(|e| internal(e.to_string()))?;
        let fresh = Loaded {
            uid,
            vote: None,
            committed: None,
            snapshot: None,
            log: LogImage::default(),
        };
        let joined = self.start_raft(fresh).await.map_err(internal)?;
        if let Some((epoch, term)) = welcome {
            joined.welcomed_at(epoch, term);
        }
        *slot = Some(joined.clone());
        tracing::info!(
            node = self.ctx.node_id(),
            cluster = format!("{uid:016x}"),
            "joined cluster"
        );
        Ok(joined)
    }

    /// At start-up: take up the cluster this node was in when krgd stopped.
    pub(super) async fn resume(self: &Arc<Self>) -> Result<(), DaemonError> {
        let data_dir = self.ctx.config.data_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || disk::load(&data_dir))
            .await
            .map_err(|source| DaemonError::Task {
                what: "reading the Raft state",
                source,
            })??;
        let Some(loaded) = loaded else {
            return Ok(());
        };
        let uid = loaded.uid;
        let joined = self.start_raft(loaded).await.map_err(|reason| {
            DaemonError::invalid("data_dir", format!("cannot resume Raft: {reason}"))
        })?;
        let state = joined.state();
        *self.joined.write().await = Some(joined);
        tracing::info!(
            node = self.ctx.node_id(),
            cluster = format!("{uid:016x}"),
            epoch = state.epoch,
            members = state.members.len(),
            "resumed cluster from disk"
        );
        self.publish_view().await;
        Ok(())
    }

    /// Start a Raft instance from `loaded`, with its tasks. Boxed as `Send`:
    /// one of those tasks may start an instance again
    /// ([`Self::revive_when_dead`]), a cycle the compiler cannot infer
    /// through.
    fn start_raft(
        self: &Arc<Self>,
        loaded: Loaded,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Arc<Joined>, String>> + Send + '_>>
    {
        Box::pin(self.start_raft_now(loaded))
    }

    async fn start_raft_now(self: &Arc<Self>, loaded: Loaded) -> Result<Arc<Joined>, String> {
        let dir = self.ctx.config.data_dir.join(disk::DIR);
        let resumed = loaded.vote.is_some() || !loaded.log.entries.is_empty();
        let snapshot_floor = loaded
            .snapshot
            .as_ref()
            .and_then(|(meta, _)| meta.last_log_id)
            .map(|l| l.index);
        let writer = Arc::new(
            Writer::start(dir.clone(), resumed, snapshot_floor)
                .map_err(|e| format!("opening the Raft log in {}: {e}", dir.display()))?,
        );
        let config = raft_config(&self.ctx)?;
        let (machine, state_rx) =
            StateMachine::new(writer.clone(), loaded.snapshot).map_err(|e| {
                format!(
                    "{}: undecodable snapshot: {e}",
                    dir.join(disk::SNAPSHOT_FILE).display()
                )
            })?;
        let log = LogStore::new(
            writer.clone(),
            loaded.uid,
            loaded.vote,
            loaded.committed,
            loaded.log,
        );
        let raft = Raft::new(
            self.ctx.node_id() as u64,
            Arc::new(config),
            network::Network::new(self.ctx.clone(), loaded.uid),
            log,
            machine,
        )
        .await
        .map_err(|e| format!("cannot start Raft: {e}"))?;
        let joined = Arc::new(Joined {
            uid: loaded.uid,
            raft,
            state: state_rx,
            disk: writer,
            tasks: Mutex::default(),
            welcome_epoch: AtomicU64::new(0),
            welcome_term: AtomicU64::new(0),
            welcomed: Mutex::default(),
        });
        // Every service finds a member's address from the replicated state
        // (the member table, else Raft's own membership, which also names
        // voters on their way in or out), even before the view that
        // carries it is published.
        let members = joined.state.clone();
        let metrics = joined.raft.metrics();
        self.ctx.peers.set_resolver(Some(Arc::new(move |node| {
            members
                .borrow()
                .members
                .get(&node)
                .map(|m| m.addr)
                .or_else(|| {
                    let m = metrics.borrow();
                    let known = m.membership_config.membership().get_node(&(node as u64));
                    known.and_then(|n| n.addr.parse().ok())
                })
        })));
        let tasks = vec![
            tokio::spawn(self.clone().follow_state(joined.clone())),
            tokio::spawn(detector::run(self.clone(), joined.clone())),
            tokio::spawn(self.clone().revive_when_dead(joined.clone())),
        ];
        *sync::lock(&joined.tasks) = tasks;
        self.joined_uid.store(loaded.uid, Ordering::SeqCst);
        *sync::lock(&self.leader_contact) = Some(Instant::now());
        Ok(joined)
    }

    /// `by` says this node is out of cluster `uid` as of its epoch `epoch`
    /// in term `term`. Obeyed unless stale (see [`Joined::stale_eviction`]):
    /// a delayed eviction must not end a membership that began after it,
    /// and a welcome whose add a leader lost must not keep the node in
    /// forever (the fault campaign, seed 20697470: a node welcomed at epoch
    /// 59 by a deposed leader ignored the next leader's evictions at 58).
    pub(super) async fn evicted(&self, by: krg_proto::NodeId, uid: u64, epoch: u64, term: u64) {
        // Checked under the write lock that `join` holds while it records a
        // welcome: the check and the leave are one step against it.
        self.leave_if(
            |cur| {
                if cur.uid != uid {
                    return false;
                }
                if let Some(why) = cur.stale_eviction(epoch, term) {
                    tracing::info!(
                        by,
                        epoch,
                        term,
                        ?why,
                        "ignored an eviction older than this membership"
                    );
                    return false;
                }
                tracing::info!(by, epoch, term, "told to leave the cluster");
                true
            },
            Forget::Yes,
        )
        .await
    }

    /// krgd stops: stop Raft, keep its state for the restart.
    pub(super) async fn stop_raft(&self) {
        self.leave_if(|_| true, Forget::No).await
    }

    /// Leave only if `instance` is still the current Raft instance (a delayed
    /// leave must not end a membership that began after it was scheduled).
    /// A leader's own removal (or dissolution) leaves this way too: it may
    /// finish after the node was deposed, evicted and welcomed back into
    /// the same cluster, and leaving by the cluster's id then ended the
    /// new membership behind everyone's back (the fault campaign, seed
    /// 256349191: node 4's removal of itself, begun as leader, left the
    /// instance a later `nodes add -n4` had made; the leader then removed
    /// the member that answered from outside).
    pub(super) async fn leave_instance(&self, instance: &Joined) {
        self.leave_if(|j| std::ptr::eq(Arc::as_ptr(j), instance), Forget::Yes)
            .await
    }

    async fn leave_if(&self, pred: impl FnOnce(&Arc<Joined>) -> bool, forget: Forget) {
        let mut slot = self.joined.write().await;
        let Some(j) = slot.take_if(|j| pred(j)) else {
            return;
        };
        self.stop_instance(&j).await;
        if forget == Forget::Yes {
            let data_dir = self.ctx.config.data_dir.clone();
            let wiped = tokio::task::spawn_blocking(move || disk::wipe(&data_dir)).await;
            if let Ok(Err(e)) | Err(e) = wiped.map_err(|e| DaemonError::Task {
                what: "removing the Raft state",
                source: e,
            }) {
                tracing::error!(error = %e, "cannot remove the Raft state of the cluster left");
            }
        }
        // Held until the directory is gone, so that a join cannot race it.
        drop(slot);
        tracing::info!(
            node = self.ctx.node_id(),
            cluster = format!("{:016x}", j.uid),
            "left cluster"
        );
        self.publish_view().await;
    }

    /// Stop `j`'s tasks and its Raft core, and close its log: nothing of
    /// it reaches the directory after this. Called with the slot locked.
    async fn stop_instance(&self, j: &Joined) {
        self.joined_uid.store(0, Ordering::SeqCst);
        self.ctx.peers.set_resolver(None);
        sync::lock(&j.tasks).drain(..).for_each(|t| t.abort());
        if let Err(e) = j.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft shutdown");
        }
        j.disk.close().await;
    }

    /// Wait for `joined`'s Raft core to end without being told to, and
    /// then start it again from disk, as a krgd restart would. openraft
    /// runs its core as a task: an assertion failing in it (the fault
    /// campaign's `Some(log_id) <= self.committed()` in CI) ends that
    /// task, and the node then answered nothing while its last view still
    /// said it was healthy. A `leave` aborts this task before it stops the
    /// core, so only an unrequested end gets here.
    async fn revive_when_dead(self: Arc<Self>, joined: Arc<Joined>) {
        let mut metrics = joined.raft.metrics();
        while metrics.changed().await.is_ok() {}
        tracing::error!(
            cluster = format!("{:016x}", joined.uid),
            "this node's Raft core stopped on its own (see the panic above); \
             starting it again from disk in {CORE_RESTART_DELAY:?}"
        );
        // From another task: replacing the instance aborts this one.
        tokio::spawn(async move {
            tokio::time::sleep(CORE_RESTART_DELAY).await;
            self.restart_from_disk(&joined).await;
        });
    }

    /// Replace the instance `dead` (if it is still the current one) by one
    /// loaded from the directory, in one step under the slot's lock.
    async fn restart_from_disk(self: &Arc<Self>, dead: &Arc<Joined>) {
        let mut slot = self.joined.write().await;
        if !slot.as_ref().is_some_and(|j| Arc::ptr_eq(j, dead)) {
            return;
        }
        self.stop_instance(dead).await;
        *slot = None;
        let data_dir = self.ctx.config.data_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || disk::load(&data_dir)).await;
        let started = match loaded {
            Ok(Ok(Some(loaded))) => self.start_raft(loaded).await,
            Ok(Ok(None)) => Err("its Raft state is gone".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match started {
            Ok(joined) => {
                *slot = Some(joined);
                tracing::info!("Raft started again from disk");
            }
            Err(reason) => tracing::error!(
                %reason,
                "cannot start Raft again; this node is out of its cluster until krgd restarts"
            ),
        }
        drop(slot);
        self.publish_view().await;
    }

    /// React to every applied change: publish the view, and leave when the
    /// cluster is dissolved or this node was removed.
    async fn follow_state(self: Arc<Self>, joined: Arc<Joined>) {
        let mut rx = joined.state.clone();
        let me_id = self.ctx.node_id();
        loop {
            // Marked seen before the view is built from it: a change that
            // comes while the view is being published wakes `changed()`
            // again. The other way round, the view could be built from the
            // state before a change and the change marked seen after it:
            // lost until the next change (a node formed with the cluster
            // kept the view of no cluster for seconds, and `mkfs.kdfs`
            // there said "no cluster is running on this node").
            let state = rx.borrow_and_update().clone();
            self.publish_view().await;
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
                let removed_at = state.epoch;
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    let state = joined.state();
                    // A welcome after the removal (its epoch is later) means
                    // the node was added again, even if this node has not
                    // applied that add yet (it was paused or cut off).
                    let readded = joined.welcome_epoch.load(Ordering::SeqCst) > removed_at;
                    // Leaving deletes the Raft state: not while a
                    // membership this node knows may still count it as a
                    // voter (the leader demotes it, then evicts it).
                    let voter = detector::may_vote(&joined, me).await;
                    if voter && !state.dissolved && !state.is_member(me) && !readded {
                        tracing::info!(
                            epoch = state.epoch,
                            "no longer a member of the cluster but still a Raft voter; \
                             staying until the leader evicts this node"
                        );
                    }
                    if state.dissolved || (!state.is_member(me) && !readded && !voter) {
                        tracing::info!(
                            epoch = state.epoch,
                            "no longer a member of the cluster; leaving"
                        );
                        svc.leave_instance(&joined).await;
                    }
                });
                if state.dissolved {
                    return;
                }
                // Keep following: the node may be re-added meanwhile (the
                // delayed leave checks again), or removed again later.
                while rx.changed().await.is_ok() {
                    let member = rx.borrow_and_update().is_member(me_id);
                    self.publish_view().await;
                    if member {
                        break;
                    }
                }
                continue;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

pub(super) fn raft_config(ctx: &NodeContext) -> Result<openraft::Config, String> {
    // Raft heartbeats at half the probe interval; elections start after half
    // the failure timeout, so a dead leader is replaced within the bound.
    let heartbeat = (ctx.config.heartbeat.as_millis() as u64 / 2).max(50);
    let election_min = (ctx.config.failure_timeout.as_millis() as u64 / 2).max(heartbeat * 3);
    openraft::Config {
        cluster_name: format!("krg-session-{}", ctx.config.session_id),
        heartbeat_interval: heartbeat,
        election_timeout_min: election_min,
        election_timeout_max: election_min * 2,
        // A snapshot every 500 entries keeps the log file small; it is
        // compacted when purged entries outnumber the live ones.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(500),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    }
    .validate()
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
