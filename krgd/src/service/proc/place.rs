//! Where a run's jobs go: the nodes named (each online), every online
//! node, or the scheduler tree's placement policy, falling back to the
//! least-loaded online node when no policy answers. Nodes another user has
//! checked out (`krgadm nodes checkout`) take only their owner's and
//! root's jobs: named, they are refused; otherwise they are skipped.

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::proc::Placement;
use krg_proto::sched::{SchedReply, SchedRequest};
use krg_proto::NodeId;

use super::fanout;
use super::state::ProcState;
use crate::caller::Caller;
use crate::service::sched::SchedService;

/// The nodes a placement names, each at most once, for jobs of user `uid`.
pub async fn nodes(
    st: &ProcState,
    sched: &SchedService,
    caller: &Caller,
    placement: &Placement,
    uid: u32,
) -> Result<Vec<NodeId>, AdminError> {
    match placement {
        Placement::Nodes(list) => {
            if list.is_empty() {
                return Err(AdminError::new(
                    ErrorKind::InvalidArgument,
                    "the node list is empty",
                ));
            }
            for &n in list {
                fanout::check_online(st, n)?;
                fanout::check_owner(st, n, uid)?;
            }
            Ok(list.clone())
        }
        Placement::AllOnline => {
            let nodes = fanout::usable_nodes(st, uid);
            if nodes.is_empty() {
                return Err(all_taken());
            }
            Ok(nodes)
        }
        Placement::Auto => Ok(vec![auto(st, sched, caller, uid).await?]),
    }
}

fn all_taken() -> AdminError {
    AdminError::new(
        ErrorKind::PermissionDenied,
        "every online node is checked out by another user (krgadm nodes status shows by whom)",
    )
}

/// The placement policy's choice, else the least loaded online node
/// (among those `uid` may use).
async fn auto(
    st: &ProcState,
    sched: &SchedService,
    caller: &Caller,
    uid: u32,
) -> Result<NodeId, AdminError> {
    let asked = sched
        .handle_admin(caller, SchedRequest::Place { scheduler: None })
        .await;
    if let Ok(SchedReply::Placement { node, reason }) = asked {
        if fanout::check_online(st, node).is_ok() && fanout::check_owner(st, node, uid).is_ok() {
            tracing::debug!(node, reason, "placed by the scheduler tree");
            st.ctx.metrics.placed("policy", node);
            return Ok(node);
        }
    }
    let usable = fanout::usable_nodes(st, uid);
    if usable.is_empty() {
        return Err(all_taken());
    }
    let node = least_loaded(st, &usable).await;
    st.ctx.metrics.placed("least_load", node);
    Ok(node)
}

/// The node of `nodes` (not empty) with the lowest 1-minute load (then
/// fewest jobs, then lowest id); if none answers, this node when it is
/// one of them, else the first.
pub async fn least_loaded(st: &ProcState, nodes: &[NodeId]) -> NodeId {
    let asks = nodes
        .iter()
        .map(|&n| async move { (n, fanout::stat(st, n).await) });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .filter_map(|(n, s)| s.ok().map(|s| (s.load1_milli, s.jobs, n)))
        .min()
        .map(|(_, _, n)| n)
        .or_else(|| nodes.contains(&st.node()).then(|| st.node()))
        .or(nodes.first().copied())
        .unwrap_or_else(|| st.node())
}
