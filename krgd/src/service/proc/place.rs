//! Where a run's jobs go: the nodes named (each online), every online
//! node, or the scheduler tree's placement policy, falling back to the
//! least-loaded online node when no policy answers.

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::proc::Placement;
use krg_proto::sched::{SchedReply, SchedRequest};
use krg_proto::NodeId;

use super::fanout;
use super::state::ProcState;
use crate::caller::Caller;
use crate::service::sched::SchedService;

/// The nodes a placement names, each at most once.
pub async fn nodes(
    st: &ProcState,
    sched: &SchedService,
    caller: &Caller,
    placement: &Placement,
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
            }
            Ok(list.clone())
        }
        Placement::AllOnline => Ok(fanout::online_nodes(st)),
        Placement::Auto => Ok(vec![auto(st, sched, caller).await]),
    }
}

/// The placement policy's choice, else the least loaded online node.
async fn auto(st: &ProcState, sched: &SchedService, caller: &Caller) -> NodeId {
    let asked = sched
        .handle_admin(caller, SchedRequest::Place { scheduler: None })
        .await;
    if let Ok(SchedReply::Placement { node, reason }) = asked {
        if fanout::check_online(st, node).is_ok() {
            tracing::debug!(node, reason, "placed by the scheduler tree");
            st.ctx.metrics.placed("policy", node);
            return node;
        }
    }
    let node = least_loaded(st).await;
    st.ctx.metrics.placed("least_load", node);
    node
}

/// The online node with the lowest 1-minute load (then fewest jobs, then
/// lowest id); this node if none answers.
pub async fn least_loaded(st: &ProcState) -> NodeId {
    let nodes = fanout::online_nodes(st);
    let asks = nodes
        .iter()
        .map(|&n| async move { (n, fanout::stat(st, n).await) });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .filter_map(|(n, s)| s.ok().map(|s| (s.load1_milli, s.jobs, n)))
        .min()
        .map(|(_, _, n)| n)
        .unwrap_or_else(|| st.node())
}
