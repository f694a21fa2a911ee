//! The global views: the process table, a signal, and node figures are
//! asked of every node concerned at once (over the pooled peer
//! connections), never replicated.

use std::time::Duration;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::cluster::NodeState;
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::proc::{Credentials, NodeStat, ProcPeerReply, ProcPeerRequest, ProcRow};
use krg_proto::NodeId;

use super::creds::Origin;
use super::lookup;
use super::nodestat;
use super::state::ProcState;
use crate::peers::PeerCallError;

/// How long a node may take to answer a table or figures request.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The nodes of "everywhere": online members, or this node alone when no
/// cluster is formed.
pub fn online_nodes(st: &ProcState) -> Vec<NodeId> {
    let view = st.ctx.view();
    let mut nodes: Vec<NodeId> = view.online_members().map(|n| n.id).collect();
    if nodes.is_empty() {
        nodes.push(st.node());
    }
    nodes.sort_unstable();
    nodes
}

/// Why `node` cannot be asked or used, if it cannot.
pub fn check_online(st: &ProcState, node: NodeId) -> Result<(), AdminError> {
    if node == st.node() {
        return Ok(());
    }
    let view = st.ctx.view();
    match view.node(node).map(|n| n.state) {
        Some(NodeState::Online) => Ok(()),
        Some(state @ (NodeState::Failed | NodeState::Leaving | NodeState::Present)) => {
            Err(AdminError::new(
                ErrorKind::Unavailable,
                format!("node {node} is not online (it is {state})"),
            ))
        }
        None => Err(AdminError::new(
            ErrorKind::NotFound,
            format!("node {node} is unknown (krgadm nodes status lists the nodes)"),
        )),
    }
}

/// Why user `uid` may not place work on `node`, if they may not: another
/// user has it checked out (root may use any node).
pub fn check_owner(st: &ProcState, node: NodeId, uid: u32) -> Result<(), AdminError> {
    let view = st.ctx.view();
    let now = crate::service::cluster::owners::now_ms();
    match view.owner_of(node, now) {
        Some(o) if o.uid != uid && uid != 0 => Err(AdminError::new(
            ErrorKind::PermissionDenied,
            format!(
                "node {node} is checked out by {} until {}: only they or root may use it",
                o.user,
                crate::service::cluster::owners::rfc3339(o.until_ms)
            ),
        )),
        _ => Ok(()),
    }
}

/// [`online_nodes`] that user `uid` may place work on.
pub fn usable_nodes(st: &ProcState, uid: u32) -> Vec<NodeId> {
    online_nodes(st)
        .into_iter()
        .filter(|&n| check_owner(st, n, uid).is_ok())
        .collect()
}

fn peer_error(e: PeerCallError) -> String {
    match e {
        PeerCallError::Remote { error, .. } => error.message,
        other => other.to_string(),
    }
}

/// The process table of `nodes` (default: every online node).
pub async fn ps(
    st: &ProcState,
    nodes: Option<Vec<NodeId>>,
    uid: Option<u32>,
) -> (Vec<ProcRow>, Vec<(NodeId, String)>) {
    let nodes = nodes.unwrap_or_else(|| online_nodes(st));
    let asks = nodes.iter().map(|&node| async move {
        if let Err(e) = check_online(st, node) {
            return (node, Err(e.message));
        }
        if node == st.node() {
            return (node, Ok(lookup::list(st, uid)));
        }
        let answer = st
            .ctx
            .peers
            .call(
                node,
                PeerRequest::Proc(ProcPeerRequest::List { uid }),
                ASK_TIMEOUT,
            )
            .await;
        match answer {
            Ok(PeerResponse::Proc(ProcPeerReply::List(rows))) => (
                node,
                Ok(rows.into_iter().filter(|r| r.node == node).collect()),
            ),
            Ok(other) => (node, Err(format!("unexpected answer {other:?}"))),
            Err(e) => (node, Err(peer_error(e))),
        }
    });
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    for (node, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(mut r) => rows.append(&mut r),
            Err(why) => missing.push((node, why)),
        }
    }
    rows.sort_by_key(|r| (r.node, r.pid));
    (rows, missing)
}

/// `krg kill`: signal `node:pid` on behalf of `who`.
pub async fn kill(
    st: &ProcState,
    node: NodeId,
    pid: i32,
    signal: i32,
    who: Credentials,
) -> Result<(), AdminError> {
    check_online(st, node)?;
    if node == st.node() {
        return lookup::kill(st, pid, signal, &who, Origin::Local);
    }
    let req = PeerRequest::Proc(ProcPeerRequest::Kill {
        pid,
        signal,
        creds: who,
    });
    match st.ctx.peers.call(node, req, ASK_TIMEOUT).await {
        Ok(PeerResponse::Proc(ProcPeerReply::Killed)) => Ok(()),
        Ok(other) => Err(AdminError::new(
            ErrorKind::Internal,
            format!("node {node} answered {other:?}"),
        )),
        Err(PeerCallError::Remote { error, .. }) => Err(error),
        Err(e) => Err(AdminError::new(ErrorKind::Unavailable, e.to_string())),
    }
}

/// Figures of `node` (this one read locally).
pub async fn stat(st: &ProcState, node: NodeId) -> Result<NodeStat, AdminError> {
    if node == st.node() {
        return Ok(nodestat::read(st.table.len() as u32));
    }
    match st
        .ctx
        .peers
        .call(node, PeerRequest::Proc(ProcPeerRequest::Stat), ASK_TIMEOUT)
        .await
    {
        Ok(PeerResponse::Proc(ProcPeerReply::Stat(s))) => Ok(s),
        Ok(other) => Err(AdminError::new(
            ErrorKind::Internal,
            format!("node {node} answered {other:?}"),
        )),
        Err(PeerCallError::Remote { error, .. }) => Err(error),
        Err(e) => Err(AdminError::new(ErrorKind::Unavailable, e.to_string())),
    }
}
