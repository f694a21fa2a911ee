//! Whether a node a session or a migration depends on is still there, as
//! the membership sees it: [`is_alive`] looks once, [`until_gone`] waits.

use krg_proto::cluster::NodeState;
use krg_proto::NodeId;

use crate::context::ClusterView;

/// Is `node` still a member in good standing, in this node's view? Err
/// says why not.
pub fn is_alive(view: &ClusterView, node: NodeId) -> Result<(), String> {
    if view.epoch == 0 {
        return Ok(()); // no cluster: nothing watches liveness, the connection does
    }
    match view.node(node).map(|n| n.state) {
        Some(NodeState::Online) | Some(NodeState::Leaving) => Ok(()),
        Some(NodeState::Failed) => Err(format!(
            "node {node} failed (silent for longer than the failure timeout)"
        )),
        Some(NodeState::Present) | None => Err(format!("node {node} left the cluster")),
    }
}

/// How [`until_gone`] takes this node's own isolation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum CutOff {
    /// As the end of the wait: a migration's calls (what this node would
    /// ask the cluster cannot be committed, and the target may well be
    /// on the majority's side).
    Ends,
    /// As nothing: it says nothing of `node`.
    Ignored,
}

/// Wait until the membership says `node` is gone (or, with
/// [`CutOff::Ends`], that this node is cut off from the majority); why.
pub async fn until_gone(
    view: &mut tokio::sync::watch::Receiver<ClusterView>,
    node: NodeId,
    cut_off: CutOff,
) -> String {
    loop {
        let seen = view.borrow_and_update().clone();
        if let Err(why) = is_alive(&seen, node) {
            return why;
        }
        if cut_off == CutOff::Ends && seen.epoch != 0 && seen.cut_off {
            return format!("this node is cut off from the majority of the cluster (node {node} may be on its side)");
        }
        if view.changed().await.is_err() {
            // no more views: the call's own timeout decides
            std::future::pending::<()>().await;
        }
    }
}
