//! Failure detection, run by the Raft leader only.
//!
//! Every `heartbeat` the leader pings every member. A member with no answer
//! for `failure_timeout` is committed as failed (so every member sees it),
//! and the Raft voters are rebalanced without it. A failed member that
//! answers again from within the cluster (it came back from a partition, or
//! restarted with its Raft state on disk) is online again: it rejoins Raft
//! as a learner, catches up and may vote again. A member that answers from
//! outside the cluster (its state was lost, or it was evicted) is removed
//! from the table: it is *present* again and may be re-added.
//!
//! Members watch the leader through Raft itself: when it dies an election
//! follows within the election timeout, and the new leader probes the old one
//! at once instead of waiting a whole failure timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use krg_proto::cluster::{ClusterPeerReply, ClusterPeerRequest, NodeState};
use krg_proto::NodeId;
use openraft::ServerState;

use super::network::call;
use super::state::ClusterCommand;
use super::{ClusterService, Joined};

/// What one probe round found out about one member.
enum Probe {
    /// Answered, and is still in this cluster.
    Alive,
    /// Answered, but from outside this cluster (it restarted or was evicted).
    Outside,
    Silent,
}

pub(super) async fn run(svc: Arc<ClusterService>, joined: Arc<Joined>) {
    let heartbeat = svc.ctx.config.heartbeat;
    let timeout = svc.ctx.config.failure_timeout;
    let mut last_ok: HashMap<NodeId, Instant> = HashMap::new();
    let mut leading = false;
    // Index of the last log entry when this node became leader, and
    // whether its first round (once the table has caught up) is still due.
    let mut term_start = 0u64;
    let mut first_round = false;
    let mut previous_leader: Option<NodeId> = None;
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let metrics = joined.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            leading = false;
            let leader = metrics.current_leader.map(|l| l as NodeId);
            if leader.is_some() && leader != previous_leader {
                svc.ctx.metrics.leader_changes.inc();
            }
            previous_leader = leader;
            continue;
        }
        if !leading {
            svc.ctx.metrics.elections_won.inc();
            leading = true;
            first_round = true;
            term_start = metrics.last_log_index.unwrap_or(0);
        }
        // A new leader's table may lag behind its log: a restarted node
        // re-applies only up to the commit index it had saved, and the rest
        // once this term commits. Judging members by an old table would
        // evict members it does not list yet, so wait until it is current.
        if metrics.last_applied.map_or(0, |l| l.index) < term_start {
            continue;
        }
        let state = joined.state();
        if std::mem::take(&mut first_round) {
            // New leader: everyone gets a full timeout, except the previous
            // leader, which a majority just stopped hearing from.
            let now = Instant::now();
            last_ok = state.members.keys().map(|id| (*id, now)).collect();
            if let Some(prev) = previous_leader.filter(|p| *p != svc.ctx.node_id()) {
                last_ok.insert(prev, now.checked_sub(timeout).unwrap_or(now));
            }
            // Finish what the previous leader could not (e.g. it removed
            // itself and could not drop itself from Raft).
            if let Ok(_guard) = svc.change_lock.try_lock() {
                if let Err(e) = svc.rebalance_voters(&joined).await {
                    tracing::debug!(error = %e.message, "rebalance after election");
                }
                svc.finish_leaves(&joined).await;
            }
        }
        // Not while a change runs: a node being added is welcomed (and so
        // claims the cluster) before the table lists it.
        if let Ok(_guard) = svc.change_lock.try_lock() {
            evict_strays(&svc, &joined).await;
        }
        let me = svc.ctx.node_id();
        let targets: Vec<(NodeId, NodeState)> = state
            .members
            .values()
            .filter(|m| m.id != me)
            .map(|m| (m.id, m.state))
            .collect();
        let probes = targets
            .iter()
            .map(|(id, _)| probe(&svc, *id, joined.uid, heartbeat));
        let results = futures::future::join_all(probes).await;
        let now = Instant::now();
        let mut failed = Vec::new();
        let mut revived = Vec::new();
        let mut returned = Vec::new();
        for ((id, st), result) in targets.into_iter().zip(results) {
            match (st, result) {
                (NodeState::Online, Probe::Alive) => {
                    last_ok.insert(id, now);
                }
                (NodeState::Online, Probe::Silent) => {
                    let since = *last_ok.entry(id).or_insert(now);
                    if now.duration_since(since) >= timeout {
                        failed.push((id, now.duration_since(since)));
                    }
                }
                // Came back (partition healed, or restarted from disk).
                (NodeState::Failed, Probe::Alive) => {
                    last_ok.insert(id, now);
                    revived.push(id);
                }
                (_, Probe::Outside) => returned.push(id),
                _ => {}
            }
        }
        if failed.is_empty() && revived.is_empty() && returned.is_empty() {
            continue;
        }
        // Do not interleave with an administrator's change; retry next round.
        let Ok(_guard) = svc.change_lock.try_lock() else {
            continue;
        };
        // The probes went out without the lock: if the table changed since,
        // what they found may be stale (a member deleted and re-added while
        // its probe was out answered "outside", and removing it now would
        // undo an acknowledged add). Probe again next round.
        if joined.state().epoch != state.epoch {
            continue;
        }
        for (id, silent) in failed {
            tracing::warn!(node = id, "member stopped answering; marking it failed");
            if svc
                .commit(
                    &joined,
                    ClusterCommand::SetState {
                        node: id,
                        state: NodeState::Failed,
                    },
                )
                .await
                .is_err()
            {
                break;
            }
            svc.ctx.metrics.failure_detections.inc();
            svc.ctx
                .metrics
                .failure_detection_seconds
                .observe(silent.as_secs_f64());
        }
        for id in revived {
            if let Err(e) = revive(&svc, &joined, id).await {
                tracing::warn!(node = id, error = %e.message, "cannot bring a returning member back");
                break;
            }
        }
        if !returned.is_empty() {
            tracing::info!(nodes = ?returned, "members answer from outside the cluster; they are present now");
            let _ = svc.commit(&joined, ClusterCommand::Remove(returned)).await;
        }
        if let Err(e) = svc.rebalance_voters(&joined).await {
            tracing::warn!(error = %e.message, "cannot rebalance Raft voters");
        }
    }
}

/// A failed member answers again from within the cluster: make it a Raft
/// learner again (the rebalance after this round may make it a voter) and
/// commit it online.
async fn revive(
    svc: &ClusterService,
    joined: &Joined,
    id: NodeId,
) -> Result<(), krg_proto::admin::AdminError> {
    tracing::info!(node = id, "failed member answers again; it is online");
    let Some(addr) = joined.state().members.get(&id).map(|m| m.addr) else {
        return Ok(());
    };
    let node = openraft::BasicNode {
        addr: addr.to_string(),
    };
    tokio::time::timeout(
        svc.ctx.config.failure_timeout,
        joined.raft.add_learner(id as u64, node, false),
    )
    .await
    .map_err(|_| super::not_committed_in_time())?
    .map_err(|e| {
        krg_proto::admin::AdminError::new(krg_proto::admin::ErrorKind::Unavailable, e.to_string())
    })?;
    svc.commit(
        joined,
        ClusterCommand::SetState {
            node: id,
            state: NodeState::Online,
        },
    )
    .await
    .map(|_| ())
}

/// A node removed while it was cut off still believes it is a member: its
/// presence names this cluster. Tell it to leave, so it becomes present.
///
/// Leaving deletes its Raft state, so a node the Raft membership still
/// counts as a voter is demoted first: a voter that forgot its vote and its
/// log could elect a leader missing committed entries (the fault campaign
/// saw two logs disagree below their commit index), and be sent the log of
/// the leader from wherever it believed the voter's log ended.
async fn evict_strays(svc: &ClusterService, joined: &Joined) {
    let Some(discovery) = svc.discovery() else {
        return;
    };
    // The term first, then the table: the table is then at least as recent
    // as the term the evictions claim (see `Joined::applied_term`).
    let term = joined.applied_term();
    let state = &joined.state();
    let strays: Vec<NodeId> = discovery
        .present()
        .iter()
        .filter(|p| p.cluster == Some(joined.uid) && !state.is_member(p.node))
        .map(|p| p.node)
        .collect();
    let mut voting = Vec::new();
    for id in &strays {
        if may_vote(joined, *id).await {
            voting.push(*id);
        }
    }
    if !voting.is_empty() {
        if let Err(e) = svc.rebalance_voters(joined).await {
            tracing::debug!(error = %e.message, "demoting former members before evicting them");
        }
    }
    for node in strays {
        if may_vote(joined, node).await {
            tracing::info!(
                node,
                "a former member is still a Raft voter; evicting it once it is demoted"
            );
            continue;
        }
        tracing::info!(
            node,
            epoch = state.epoch,
            "a former member still claims this cluster; evicting it"
        );
        let evict = ClusterPeerRequest::Evict {
            cluster: joined.uid,
            epoch: state.epoch,
            term,
        };
        let _ = call(&svc.ctx.peers, node, evict, svc.ctx.config.heartbeat).await;
    }
}

/// Whether `node` may still vote: it votes in the last Raft membership
/// `joined` knows committed, or in the last one it knows at all.
///
/// Both, because leaving deletes the node's Raft state for good, and the
/// last membership may not be committed: a leader that appended a
/// configuration without the node can be deposed, and its successor's
/// log, without that entry, still counts on the node's vote (a removed
/// node that left on the strength of such an entry, with another, left a
/// leader with a configuration change that could never commit). Unknown
/// (the Raft core stopped) counts as a voter.
pub(super) async fn may_vote(joined: &Joined, node: NodeId) -> bool {
    let node = u64::from(node);
    joined
        .raft
        .with_raft_state(move |st| {
            let m = &st.membership_state;
            [m.committed(), m.effective()]
                .iter()
                .any(|c| c.membership().voter_ids().any(|v| v == node))
        })
        .await
        .unwrap_or(true)
}

/// The voters of the Raft membership `joined` knows last (committed or
/// not: what `cluster status` shows).
pub(super) fn voters(joined: &Joined) -> std::collections::BTreeSet<u64> {
    joined
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

async fn probe(svc: &ClusterService, node: NodeId, uid: u64, within: Duration) -> Probe {
    let ping = ClusterPeerRequest::Ping {
        from: svc.ctx.node_id(),
        cluster: uid,
    };
    match tokio::time::timeout(within, call(&svc.ctx.peers, node, ping, within)).await {
        Ok(Ok(ClusterPeerReply::Pong { cluster, .. })) if cluster == Some(uid) => Probe::Alive,
        Ok(Ok(ClusterPeerReply::Pong { .. })) => Probe::Outside,
        _ => Probe::Silent,
    }
}
