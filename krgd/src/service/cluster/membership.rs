//! Membership changes. `cluster start` runs on the node where it was asked;
//! every other change runs on the Raft leader (other nodes forward to it),
//! one at a time, and returns only once committed and applied by every
//! online member.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::cluster::{
    ClusterPeerReply, ClusterPeerRequest, ClusterReply, ClusterRequest, NodeSelector, Presence,
};
use krg_proto::NodeId;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};

use super::network::call;
use super::raft_types::RaftNodeId;
use super::selection::{pick_voters, resolve_for_add};
use super::state::{ClusterCommand, CommandResult, MemberRecord};
use super::{no_quorum, not_committed_in_time, ClusterService, Joined};

/// How long a single Raft write may wait for a quorum.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for every online member to apply a change.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(5);

fn err(kind: ErrorKind, message: impl Into<String>) -> AdminError {
    AdminError::new(kind, message)
}

fn raft_error<E: std::fmt::Display>(e: RaftError<RaftNodeId, E>) -> AdminError {
    match e {
        RaftError::APIError(e) => err(
            ErrorKind::Unavailable,
            format!("leadership changed during the operation ({e}); run it again"),
        ),
        RaftError::Fatal(e) => err(ErrorKind::Internal, format!("Raft stopped: {e}")),
    }
}

fn basic(addr: std::net::SocketAddr) -> BasicNode {
    BasicNode {
        addr: addr.to_string(),
    }
}

impl ClusterService {
    /// `krgadm cluster start`: form a cluster of this node and every present
    /// node of the session that is not in a cluster yet.
    pub(super) async fn start_cluster(self: &Arc<Self>) -> Result<ClusterReply, AdminError> {
        let _guard = self.change_lock.lock().await;
        if let Some(j) = self.joined().await {
            return Err(err(
                ErrorKind::Conflict,
                format!(
                    "this node is already in a cluster (epoch {}); add nodes with `krgadm nodes add`",
                    j.state().epoch
                ),
            ));
        }
        let present = self.discovery().map(|d| d.present()).unwrap_or_default();
        let uid = loop {
            let u: u64 = rand::random();
            if u != 0 {
                break u;
            }
        };
        // Presence may lag a second behind (a node that just left a stopped
        // cluster still looks busy), so ask everyone: a node really in another
        // cluster refuses the welcome and is left out.
        let started = std::time::Instant::now();
        let welcomed = self.welcome_all(&present, uid, 0, 0).await;
        tracing::debug!(took = ?started.elapsed(), "founders welcomed");
        for refusal in welcomed.iter().filter_map(|r| r.as_ref().err()) {
            tracing::info!(reason = %refusal.message, "present node not included");
        }
        let me = self.self_presence();
        let mut founders: Vec<Presence> = welcomed.into_iter().filter_map(Result::ok).collect();
        founders.push(me.clone());
        founders.sort_by_key(|p| p.node);

        let joined = self.join(uid, None).await?;
        let ids: BTreeSet<RaftNodeId> = founders.iter().map(|p| p.node as RaftNodeId).collect();
        let mut voters = pick_voters(
            &ids,
            &BTreeSet::from([me.node as RaftNodeId]),
            self.ctx.config.max_voters,
        );
        voters.insert(me.node as RaftNodeId);
        let voter_nodes: BTreeMap<RaftNodeId, BasicNode> = founders
            .iter()
            .filter(|p| voters.contains(&(p.node as RaftNodeId)))
            .map(|p| (p.node as RaftNodeId, basic(p.addr)))
            .collect();
        let result = self.found(&joined, uid, voter_nodes, &founders).await;
        if result.is_err() {
            self.leave_instance(&joined).await;
            for p in founders.iter().filter(|p| p.node != me.node) {
                let _ = call(
                    &self.ctx.peers,
                    p.node,
                    ClusterPeerRequest::Evict {
                        cluster: uid,
                        epoch: u64::MAX,
                        term: u64::MAX,
                    },
                    Duration::from_secs(1),
                )
                .await;
            }
        }
        result.map(ClusterReply::Changed)
    }

    async fn found(
        self: &Arc<Self>,
        joined: &Joined,
        uid: u64,
        voters: BTreeMap<RaftNodeId, BasicNode>,
        founders: &[Presence],
    ) -> Result<krg_proto::cluster::ClusterStatus, AdminError> {
        let started = std::time::Instant::now();
        joined
            .raft
            .initialize(voters.clone())
            .await
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        joined
            .raft
            .wait(Some(COMMIT_TIMEOUT))
            .state(ServerState::Leader, "become leader of the new cluster")
            .await
            .map_err(|_| {
                err(
                    ErrorKind::Unavailable,
                    "the new cluster elected no leader in time (are the voters reachable?)",
                )
            })?;
        // The leader's first (blank) entry commits the initial membership;
        // until then no other membership change is accepted.
        joined
            .raft
            .wait(Some(COMMIT_TIMEOUT))
            .applied_index_at_least(Some(1), "initial membership committed")
            .await
            .map_err(|_| {
                err(
                    ErrorKind::Unavailable,
                    "the new cluster could not commit its first entry in time",
                )
            })?;
        tracing::debug!(took = ?started.elapsed(), "leader elected, first entry committed");
        let t0 = std::time::Instant::now();
        // Every other founder becomes a learner in one membership change;
        // they catch up while the table is committed.
        let learners: Vec<&Presence> = founders
            .iter()
            .filter(|p| !voters.contains_key(&(p.node as RaftNodeId)))
            .collect();
        let members = founders.iter().map(MemberRecord::online).collect();
        // Both entries go out in the same replication round.
        let (learned, result) = tokio::join!(
            self.add_learners(joined, &learners),
            self.commit(joined, ClusterCommand::Form { uid, members })
        );
        learned?;
        let result = result?;
        let t2 = t0.elapsed();
        self.wait_everywhere(joined, result.epoch).await;
        tracing::debug!(learners = learners.len(), committed = ?t2, all_applied = ?t0.elapsed(), "cluster formed");
        Ok(self.status().await)
    }

    /// Welcome each node into cluster `uid` (they start Raft instances); the
    /// leader is at `epoch`, in Raft term `term` (0 while founding).
    async fn welcome_all(
        &self,
        nodes: &[Presence],
        uid: u64,
        epoch: u64,
        term: u64,
    ) -> Vec<Result<Presence, AdminError>> {
        let calls = nodes.iter().map(|p| async move {
            match call(
                &self.ctx.peers,
                p.node,
                ClusterPeerRequest::Welcome {
                    cluster: uid,
                    epoch,
                    term,
                },
                Duration::from_secs(3),
            )
            .await
            {
                Ok(ClusterPeerReply::Ack) => Ok(p.clone()),
                Ok(other) => Err(err(
                    ErrorKind::Internal,
                    format!("node {} answered {other:?}", p.node),
                )),
                Err(e) => Err(err(
                    ErrorKind::Unavailable,
                    format!("node {} cannot join: {e}", p.node),
                )),
            }
        });
        futures::future::join_all(calls).await
    }

    /// Run a forwarded or local change on this node, which must be leader.
    pub(super) async fn lead(
        self: &Arc<Self>,
        joined: &Joined,
        req: ClusterRequest,
    ) -> Result<ClusterReply, AdminError> {
        let _guard = self.change_lock.lock().await;
        if joined.raft.metrics().borrow().state != ServerState::Leader {
            return Err(err(
                ErrorKind::Unavailable,
                "leadership moved to another node; run the command again",
            ));
        }
        // A leader cut off from its majority must not pretend: check quorum first.
        tokio::time::timeout(COMMIT_TIMEOUT, joined.raft.ensure_linearizable())
            .await
            .map_err(|_| no_quorum())?
            .map_err(|_| no_quorum())?;
        match req {
            ClusterRequest::Add(sel) => self.add(joined, sel).await,
            ClusterRequest::Del(sel) => self.del(joined, sel).await,
            ClusterRequest::Stop => self.stop(joined).await,
            other => Err(err(
                ErrorKind::InvalidArgument,
                format!("{other:?} is not a membership change"),
            )),
        }
        .map(ClusterReply::Changed)
    }

    async fn add(
        self: &Arc<Self>,
        joined: &Joined,
        sel: NodeSelector,
    ) -> Result<krg_proto::cluster::ClusterStatus, AdminError> {
        let state = joined.state();
        let present = self.discovery().map(|d| d.present()).unwrap_or_default();
        let nodes = resolve_for_add(&sel, &state, &present)?;
        let t0 = std::time::Instant::now();
        let term = joined.current_term();
        for r in self
            .welcome_all(&nodes, joined.uid, state.epoch, term)
            .await
        {
            r?;
        }
        let welcomed = t0.elapsed();
        let records = nodes.iter().map(MemberRecord::online).collect();
        let learners: Vec<&Presence> = nodes.iter().collect();
        // Raft learners and table entry in the same replication round; if
        // the first fails after the second committed, the next rebalance
        // adds the missing learners.
        let (learned, result) = tokio::join!(
            self.add_learners(joined, &learners),
            self.commit(joined, ClusterCommand::Add(records))
        );
        learned?;
        let result = result?;
        let committed = t0.elapsed();
        self.rebalance_voters(joined).await?;
        self.wait_everywhere(joined, result.epoch).await;
        tracing::debug!(?welcomed, ?committed, all_applied = ?t0.elapsed(), "nodes added");
        Ok(self.status().await)
    }

    async fn stop(
        self: &Arc<Self>,
        joined: &Joined,
    ) -> Result<krg_proto::cluster::ClusterStatus, AdminError> {
        let members: Vec<NodeId> = joined.state().members.keys().copied().collect();
        self.commit(joined, ClusterCommand::Dissolve).await?;
        // The table is empty now, so waiting on it proves nothing: tell every
        // former member to leave, so that none stays behind in a dead cluster.
        let me = self.ctx.node_id();
        let evictions = members.iter().filter(|id| **id != me).map(|id| {
            // The cluster is over: no later epoch of it can exist.
            let evict = ClusterPeerRequest::Evict {
                cluster: joined.uid,
                epoch: u64::MAX,
                term: u64::MAX,
            };
            call(&self.ctx.peers, *id, evict, Duration::from_secs(1))
        });
        futures::future::join_all(evictions).await;
        let status = self.status().await;
        self.leave_instance(joined).await;
        Ok(krg_proto::cluster::ClusterStatus {
            members: Vec::new(),
            online: 0,
            ..status
        })
    }

    /// Add `nodes` as Raft learners in one membership change (at the address
    /// they have now, if Raft knew them elsewhere). The leader
    /// replicates to them from then on; `wait_everywhere` after the table
    /// change is what waits for them to have caught up.
    async fn add_learners(&self, joined: &Joined, nodes: &[&Presence]) -> Result<(), AdminError> {
        if nodes.is_empty() {
            return Ok(());
        }
        let add: BTreeMap<RaftNodeId, BasicNode> = nodes
            .iter()
            .map(|p| (p.node as RaftNodeId, basic(p.addr)))
            .collect();
        self.change_membership(joined, ChangeMembers::SetNodes(add))
            .await
    }

    /// Append `cmd` to the replicated log and wait for it to be committed.
    pub(super) async fn commit(
        &self,
        joined: &Joined,
        cmd: ClusterCommand,
    ) -> Result<CommandResult, AdminError> {
        Ok(self.commit_indexed(joined, cmd).await?.0)
    }

    /// [`commit`](Self::commit), also returning the entry's log index.
    pub(super) async fn commit_indexed(
        &self,
        joined: &Joined,
        cmd: ClusterCommand,
    ) -> Result<(CommandResult, u64), AdminError> {
        let resp = tokio::time::timeout(COMMIT_TIMEOUT, joined.raft.client_write(cmd))
            .await
            .map_err(|_| not_committed_in_time())?
            .map_err(raft_error::<ClientWriteError<RaftNodeId, BasicNode>>)?;
        Ok((resp.data, resp.log_id.index))
    }

    /// Make the Raft voters the online members (at most `max_voters`, odd),
    /// make every other online member a learner, and drop from Raft every
    /// node that is not an online member.
    pub(super) async fn rebalance_voters(&self, joined: &Joined) -> Result<(), AdminError> {
        let known: BTreeSet<RaftNodeId> = joined
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        let missing: Vec<Presence> = joined
            .state()
            .online()
            .filter(|m| !known.contains(&(m.id as RaftNodeId)))
            .map(|m| Presence {
                node: m.id,
                mac: m.mac,
                addr: m.addr,
                cluster: Some(joined.uid),
            })
            .collect();
        self.add_learners(joined, &missing.iter().collect::<Vec<_>>())
            .await?;
        let metrics = joined.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<RaftNodeId> = membership.voter_ids().collect();
        let nodes: BTreeSet<RaftNodeId> = membership.nodes().map(|(id, _)| *id).collect();
        let online: BTreeSet<RaftNodeId> = joined
            .state()
            .online()
            .map(|m| m.id as RaftNodeId)
            .filter(|id| nodes.contains(id))
            .collect();
        if online.is_empty() {
            return Ok(());
        }
        let target = pick_voters(&online, &voters, self.ctx.config.max_voters);
        if target != voters {
            // Demoted voters stay learners (online members must keep
            // receiving the log); the non-members among them go next.
            self.change_membership(joined, ChangeMembers::ReplaceAllVoters(target.clone()))
                .await?;
        }
        let stale: BTreeSet<RaftNodeId> = nodes
            .iter()
            .filter(|id| !online.contains(id) && !target.contains(id))
            .copied()
            .collect();
        let leading = joined.raft.metrics().borrow().state == ServerState::Leader;
        if !stale.is_empty() && leading {
            self.change_membership(joined, ChangeMembers::RemoveNodes(stale))
                .await?;
        }
        Ok(())
    }

    async fn change_membership(
        &self,
        joined: &Joined,
        change: ChangeMembers<RaftNodeId, BasicNode>,
    ) -> Result<(), AdminError> {
        tokio::time::timeout(COMMIT_TIMEOUT, joined.raft.change_membership(change, true))
            .await
            .map_err(|_| not_committed_in_time())?
            .map_err(raft_error::<ClientWriteError<RaftNodeId, BasicNode>>)?;
        Ok(())
    }

    /// Wait (bounded) until every online member reports `epoch`.
    pub(super) async fn wait_everywhere(&self, joined: &Joined, epoch: u64) {
        self.wait_until_all(joined, |e, _| e >= epoch).await
    }

    /// Wait (bounded) until this node and every online member answer (its
    /// epoch as its services see it, its last applied log index) satisfy `done`.
    pub(super) async fn wait_until_all(&self, joined: &Joined, done: impl Fn(u64, u64) -> bool) {
        let deadline = tokio::time::Instant::now() + PROPAGATION_TIMEOUT;
        let me = self.ctx.node_id();
        loop {
            let state = joined.state();
            let others: Vec<NodeId> = state
                .online()
                .map(|m| m.id)
                .filter(|id| *id != me)
                .collect();
            let pings = others.iter().map(|id| {
                let ping = ClusterPeerRequest::Ping {
                    from: me,
                    cluster: joined.uid,
                };
                call(&self.ctx.peers, *id, ping, Duration::from_millis(500))
            });
            let lagging = futures::future::join_all(pings)
                .await
                .into_iter()
                .filter(|r| {
                    !matches!(r, Ok(ClusterPeerReply::Pong { epoch, applied, .. }) if done(*epoch, *applied))
                })
                .count();
            // this node too: its own services (the view) may lag its log
            let (epoch, applied) = self.progress(joined);
            let lagging = lagging + usize::from(!done(epoch, applied));
            if lagging == 0 || tokio::time::Instant::now() >= deadline {
                if lagging > 0 {
                    tracing::warn!(lagging, "some members have not applied the change yet");
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
