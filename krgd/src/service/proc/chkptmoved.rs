//! `checkpoint PID` of a stand-in (`ProcRequest::CheckpointMoved`): the
//! process it stands for runs on another node, so that node saves it, as
//! `checkpoint` run there would: in its own `/var/chkpt`, under the
//! process's PID there, its PIDs in its namespace kept in the image
//! (docs/checkpoint.md, A krg job's checkpoint). The user names the
//! process as they know it, on the node that started it.
//!
//! The origin checks that the caller may act on the stand-in (its owner,
//! or root) and asks the node the process went to; that node checks again
//! — the job came from the asking node, is the caller's (or the caller is
//! root) and holds CHECKPOINTABLE — and dumps it itself, as root, into
//! the default checkpoint directory (never one the caller names).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::proc::{
    CheckpointMoved, CheckpointedThere, Credentials, ProcPeerReply, ProcPeerRequest,
};
use krg_proto::NodeId;

use super::state::ProcState;
use crate::caller::Caller;
use crate::peers::PeerCallError;

/// How long the node the process runs on may take to save it (its
/// memory is copied while it runs: large ones take seconds).
const TIMEOUT: Duration = Duration::from_secs(300);

fn refused(kind: ErrorKind, what: impl Into<String>) -> AdminError {
    AdminError::new(kind, what)
}

/// On the node of the stand-in: have the node its process runs on save it.
pub async fn from_origin(
    st: &Arc<ProcState>,
    caller: &Caller,
    req: CheckpointMoved,
) -> Result<CheckpointedThere, AdminError> {
    let pid = req.pid;
    let node = st.migration.standins.runs_on(pid).ok_or_else(|| {
        refused(
            ErrorKind::NotFound,
            format!(
                "process {pid} is not the stand-in of a process that moved away from node {}",
                st.node()
            ),
        )
    })?;
    if !caller.is_root() {
        let uids = super::procfs::uids(pid)
            .ok_or_else(|| refused(ErrorKind::NotFound, format!("process {pid} is gone")))?;
        if uids.iter().any(|&u| u != caller.uid) {
            return Err(refused(
                ErrorKind::PermissionDenied,
                format!("process {pid} is not yours"),
            ));
        }
    }
    let creds = Credentials {
        uid: caller.uid,
        gid: caller.gid,
        groups: Vec::new(),
    };
    let ask = PeerRequest::Proc(ProcPeerRequest::Checkpoint { req, creds });
    match st.ctx.peers.call(node, ask, TIMEOUT).await {
        Ok(PeerResponse::Proc(ProcPeerReply::Checkpointed(there))) => Ok(there),
        Ok(other) => Err(refused(
            ErrorKind::Internal,
            format!("node {node} answered {other:?}"),
        )),
        Err(PeerCallError::Remote { error, .. }) => Err(error),
        Err(e) => Err(refused(ErrorKind::Unavailable, format!("node {node}: {e}"))),
    }
}

/// On the node the process moved to from `origin`: save it.
pub async fn here(
    st: &Arc<ProcState>,
    origin: NodeId,
    req: CheckpointMoved,
    creds: Credentials,
) -> Result<CheckpointedThere, AdminError> {
    let node = st.node();
    let pid = req.pid;
    let gone = || {
        refused(
            ErrorKind::NotFound,
            format!("node {node}: process {pid} from node {origin} does not run here"),
        )
    };
    let entry = st
        .table
        .jobs()
        .into_iter()
        .find(|e| e.origin == origin && e.pid == pid && e.moved_signals().is_none())
        .ok_or_else(gone)?;
    if creds.uid != 0 && creds.uid != entry.uid {
        return Err(refused(
            ErrorKind::PermissionDenied,
            format!("node {node}: process {pid} is not yours"),
        ));
    }
    let host = super::procfs::program_host_pid(&entry).ok_or_else(gone)?;
    if !st.caps.is_checkpointable(host) {
        return Err(refused(
            ErrorKind::PermissionDenied,
            format!("node {node}: process {pid} is not CHECKPOINTABLE (run krgcapset -d +CHECKPOINTABLE in the shell that starts it)"),
        ));
    }
    let opts = checkpoint::dump::DumpOptions {
        root: PathBuf::from(checkpoint::store::DEFAULT_ROOT),
        kill: req.kill,
        stop: false,
        node: node.min(63),
        sysv_sem: Vec::new(),
        sysv_msg: Vec::new(),
        full: req.full,
        other_pidns: true,
        stdio_files: Vec::new(),
    };
    let dumped =
        tokio::task::spawn_blocking(move || checkpoint::dump::checkpoint(host, &opts, &|_, _| {}))
            .await
            .map_err(|e| refused(ErrorKind::Internal, e.to_string()))?
            .map_err(|e| refused(ErrorKind::InvalidArgument, format!("node {node}: {e}")))?;
    tracing::info!(
        pid,
        host,
        sn = dumped.sn,
        from = origin,
        "checkpointed a process whose stand-in asked"
    );
    Ok(CheckpointedThere {
        node,
        host_pid: host,
        sn: dumped.sn,
        dir: dumped.dir.display().to_string(),
        tasks: dumped.tasks.len() as u32,
        image_bytes: dumped.image_bytes,
        frozen_us: dumped.frozen.as_micros() as u64,
    })
}
