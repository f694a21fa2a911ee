//! Handing a leaving node's processes over: `krgadm nodes del` of a live
//! node waits (bounded, see `service/cluster/leave.rs`) until every
//! registered hand-over service is done with it; this one moves the node's
//! CAN_MIGRATE processes to the online members.
//!
//! The leader asks the leaving node (`ProcPeerRequest::HandOver`) every
//! 100 ms. The first question starts one pass on the leaving node: each
//! root among its migratable processes (see [`load::own_processes`]; a
//! root's parent is not one of them) moves with its descendants, as
//! `migrate --tree` would, to the online members in turn (members checked
//! out by a user last). A move refused (a socket, a local file) leaves the
//! process where it is, logged; the pass goes on. The answer is "done" once
//! the pass is over; the next question after that starts a new pass (a
//! later leave of the same node).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use krg_proto::migrate::MigrateRequest;
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::proc::{Credentials, ProcPeerReply, ProcPeerRequest};
use krg_proto::NodeId;

use super::creds::Origin;
use super::fanout::online_nodes;
use super::load::own_processes;
use super::migrate::{self, check};
use super::state::ProcState;
use crate::service::cluster::owners::now_ms;
use crate::service::cluster::{ask_leaving, HandOver, Pass};

/// The process hand-over of this node: asked by the leader (as a
/// [`HandOver`] service) and, on the leaving node, running the pass.
pub struct ProcHandOver {
    st: Arc<ProcState>,
    pass: Pass,
}

impl ProcHandOver {
    /// For this node's process state.
    pub fn new(st: Arc<ProcState>) -> Arc<Self> {
        Arc::new(Self {
            st,
            pass: Pass::default(),
        })
    }

    /// On the leaving node: start a pass if none runs; true once it ended.
    pub fn progress(&self) -> bool {
        self.pass.progress(|| {
            let st = self.st.clone();
            Some(tokio::spawn(async move { hand_over(&st).await }))
        })
    }
}

impl HandOver for ProcHandOver {
    fn name(&self) -> &'static str {
        "processes"
    }

    fn handed_over(&self, node: NodeId) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            if node == self.st.node() {
                return self.progress();
            }
            let ask = PeerRequest::Proc(ProcPeerRequest::HandOver);
            ask_leaving(&self.st.ctx.peers, node, ask, "processes", |a| match a {
                PeerResponse::Proc(ProcPeerReply::HandedOver { done }) => Some(*done),
                _ => None,
            })
            .await
        })
    }
}

/// Move every root of this node's migratable processes, with its
/// descendants, to the online members in turn.
async fn hand_over(st: &Arc<ProcState>) {
    let me = st.node();
    let targets = targets(st);
    if targets.is_empty() {
        tracing::warn!("no online member to hand processes over to");
        return;
    }
    let roots = roots(st);
    tracing::info!(processes = ?roots, "leaving: handing processes over");
    let root = Credentials::root();
    for (i, pid) in roots.into_iter().enumerate() {
        let to = targets[i % targets.len()];
        let req = MigrateRequest {
            from: None,
            pid,
            to,
            tree: true,
            // the origin is leaving: nothing may be left to pull from it,
            // nor a stand-in to drive the process from it
            postcopy: false,
            no_stand_in: true,
        };
        match migrate::migrate(st, req, root.clone(), Origin::Local).await {
            Ok(r) if r.fell_back.is_none() => {
                tracing::info!(pid, from = me, to, stopped_ms = r.stopped_ms, "handed over");
            }
            Ok(r) => {
                tracing::warn!(pid, to, why = ?r.fell_back, "hand-over failed: it runs here again")
            }
            Err(e) => tracing::warn!(pid, to, why = %e.message, "not handed over: it stays here"),
        }
    }
}

/// Online members but this node; those checked out by a user last.
fn targets(st: &ProcState) -> Vec<NodeId> {
    let me = st.node();
    let view = st.ctx.view();
    let now = now_ms();
    let mut nodes: Vec<NodeId> = online_nodes(st).into_iter().filter(|n| *n != me).collect();
    nodes.sort_by_key(|n| (view.owner_of(*n, now).is_some(), *n));
    nodes
}

/// This node's migratable processes whose parent is not one of them.
fn roots(st: &ProcState) -> Vec<i32> {
    let mine: Vec<i32> = own_processes(st)
        .into_iter()
        .filter(|o| o.migratable)
        .map(|o| o.pid)
        .collect();
    let below: std::collections::HashSet<i32> = mine
        .iter()
        .flat_map(|pid| check::tree(*pid).into_iter().skip(1))
        .collect();
    mine.into_iter()
        .filter(|pid| !below.contains(pid))
        .collect()
}
