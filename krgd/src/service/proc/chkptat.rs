//! `checkpoint NODE:PID`, and `checkpoint PID` of a stand-in
//! (`ProcRequest::CheckpointAt`): the process is saved by the node it runs
//! on, as `checkpoint` run there would — in that node's `/var/chkpt`,
//! under the process's PID there, its PIDs in its namespace kept in the
//! image (docs/checkpoint.md, A krg job's checkpoint). The user names the
//! process as `krg ps` shows it, from any node; a process that moved away
//! also by its stand-in's PID, on the node that started it.
//!
//! The node asked finds where the process runs (a stand-in: where its
//! process went) and asks that node, or saves it itself; the node that
//! saves it checks the caller — the process's owner (every uid), or root
//! from this node or a member — and that it holds CHECKPOINTABLE, and
//! dumps it as root into its default checkpoint directory (never one the
//! caller names), as a migration does.
//!
//! `checkpoint rm` of an application SN one of whose parts another node
//! saved (`ProcRequest::RemoveSaved`): that node removes the part's SN,
//! checking the caller as `checkpoint rm` does ([`remove_here`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::peer::PeerRequest;
use krg_proto::proc::{
    CheckpointAt, CheckpointedThere, Credentials, ProcPeerReply, ProcPeerRequest, RemoveSaved,
};
use krg_proto::NodeId;

use super::creds::Origin;
use super::heldio::HeldStdio;
use super::lookup::Named;
use super::state::ProcState;
use super::table::JobEntry;
use crate::caller::Caller;

/// How long the node the process runs on may take to save it (its
/// memory is copied while it runs: large ones take seconds).
const TIMEOUT: Duration = Duration::from_secs(300);

/// How long a stand-in that is not known yet (just made by `restart`)
/// is waited for: its part's restore on its node, then its connection.
const CLAIM_WAIT: Duration = Duration::from_secs(10);

fn refused(kind: ErrorKind, what: impl Into<String>) -> AdminError {
    AdminError::new(kind, what)
}

/// On the node asked: save the process where it runs.
pub async fn asked(
    st: &Arc<ProcState>,
    caller: &Caller,
    mut req: CheckpointAt,
) -> Result<CheckpointedThere, AdminError> {
    let me = st.node();
    let creds = super::creds::of_caller(caller);
    let node = match req.node {
        Some(node) => node,
        None => stand_in_node(st, req.pid).await?,
    };
    req.node = Some(node);
    if node == me {
        return here(st, req, creds, Origin::Local).await;
    }
    let ask = PeerRequest::Proc(ProcPeerRequest::Checkpoint { req, creds });
    let got = st.ctx.peers.call(node, ask, TIMEOUT).await;
    super::reply::answer(node, got, |r| match r {
        ProcPeerReply::Checkpointed(there) => Ok(there),
        other => Err(other),
    })
}

/// Where the process of stand-in `pid` runs. A stand-in `restart` has
/// just made is known once its process runs again on its node and the
/// stand-in claimed its session: a `checkpoint` right after `restart`
/// waits for that (up to [`CLAIM_WAIT`]) instead of failing.
async fn stand_in_node(st: &ProcState, pid: i32) -> Result<NodeId, AdminError> {
    let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
    loop {
        if let Some(node) = st.migration.standins.runs_on(pid) {
            return Ok(node);
        }
        if !checkpoint::standin::is_stand_in(pid) {
            return Err(refused(
                ErrorKind::NotFound,
                format!(
                    "process {pid} is not the stand-in of a process that moved away from node {}",
                    st.node()
                ),
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(refused(
                ErrorKind::Unavailable,
                format!(
                    "process {pid} is a stand-in whose process does not run again yet (restart brings it back on its node): try again once krg ps shows it"
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The host PID of the process this node's `krg ps` shows as `pid`: one
/// of its jobs' processes (with its job), or a process that migrated in
/// (it kept its PID).
fn find(st: &ProcState, pid: i32) -> Result<(i32, Option<Arc<JobEntry>>), AdminError> {
    let node = st.node();
    match super::lookup::named(st, pid)? {
        Named::Job(found) => Ok((found.host_pid, Some(found.job))),
        Named::Host { pid, stand_in: false } => Ok((pid, None)),
        Named::Host { stand_in: true, .. } => Err(refused(
            ErrorKind::NotFound,
            format!("process {node}:{pid} is a stand-in: its process runs elsewhere (checkpoint {pid} on node {node} finds it)"),
        )),
    }
}

/// On the node the process runs on: save it for `creds`.
pub async fn here(
    st: &Arc<ProcState>,
    req: CheckpointAt,
    creds: Credentials,
    origin: Origin,
) -> Result<CheckpointedThere, AdminError> {
    let node = st.node();
    let pid = req.pid;
    let (host, job) = find(st, pid)?;
    let uids = super::procfs::uids(host)
        .ok_or_else(|| refused(ErrorKind::NotFound, format!("process {node}:{pid} is gone")))?;
    let allowed = match creds.uid {
        0 => !matches!(origin, Origin::Outsider(_)),
        uid => uids.iter().all(|&u| u == uid),
    };
    if !allowed {
        return Err(refused(
            ErrorKind::PermissionDenied,
            format!("process {node}:{pid} is not yours"),
        ));
    }
    if !st.caps.is_checkpointable(host) {
        return Err(refused(
            ErrorKind::PermissionDenied,
            format!("process {node}:{pid} is not CHECKPOINTABLE (run krgcapset -d +CHECKPOINTABLE in the shell that starts it)"),
        ));
    }
    // A process that arrived a moment ago may still have its memory
    // brought in by a page server: wait for it, since pages not in yet
    // would be missing from the image (the dump refuses such a process).
    let tree: Vec<i32> = checkpoint::dump::tree(host)
        .map(|t| t.into_iter().map(|(p, _)| p).collect())
        .unwrap_or_else(|_| vec![host]);
    super::migrate::wait_filled(st, &tree).await?;
    let hold = req.hold && !req.kill;
    let opts = checkpoint::dump::DumpOptions {
        root: PathBuf::from(checkpoint::store::DEFAULT_ROOT),
        kill: req.kill,
        stop: hold,
        node: node.min(63),
        sysv_sem: Vec::new(),
        sysv_msg: Vec::new(),
        full: req.full,
        other_pidns: true,
        stdio_files: Vec::new(),
        stand_ins: Vec::new(),
    };
    let dumped =
        tokio::task::spawn_blocking(move || checkpoint::dump::checkpoint(host, &opts, &|_, _| {}))
            .await
            .map_err(|e| refused(ErrorKind::Internal, e.to_string()))?
            .map_err(|e| refused(ErrorKind::InvalidArgument, format!("node {node}: {e}")))?;
    let (mut output_written, mut input_kept) = (None, 0);
    if hold {
        super::held::hold(st, host, dumped.sn, creds.uid, &dumped);
        let stdio = job.and_then(|j| crate::sync::lock(&j.held_stdio).clone());
        if let Some(stdio) = stdio {
            let (written, kept) = hold_stdio(st, stdio, host, &dumped).await;
            (output_written, input_kept) = (Some(written), kept);
        }
    }
    tracing::info!(
        pid,
        host,
        sn = dumped.sn,
        uid = creds.uid,
        hold,
        "checkpointed a process for krg's checkpoint NODE:PID"
    );
    Ok(CheckpointedThere {
        node,
        host_pid: host,
        sn: dumped.sn,
        dir: dumped.dir.display().to_string(),
        tasks: dumped.tasks.len() as u32,
        image_bytes: dumped.image_bytes,
        frozen_us: dumped.frozen.as_micros() as u64,
        output_written,
        input_kept,
    })
}

/// What was on its way between the held part `host` and its stand-in
/// becomes part of the checkpoint (see [`super::heldio`]): its output
/// written by the stand-in first, its unread input kept with its SN.
/// Whether the output was written within the limit, and the bytes of
/// input kept.
async fn hold_stdio(
    st: &ProcState,
    stdio: Arc<HeldStdio>,
    host: i32,
    dumped: &checkpoint::dump::DumpReport,
) -> (bool, u64) {
    let limit = super::heldio::WRITE_LIMIT;
    let written = st.held.output_marks.flush_and_wait(&stdio, limit).await;
    let mut unread = Vec::new();
    if written {
        match stdio.take_unread(host).await {
            Ok(u) => unread = u,
            Err(e) => tracing::warn!(host, error = %e, "cannot read a held part's unread input"),
        }
    } else {
        tracing::warn!(
            host,
            "a held part's output on its way was not written by its stand-in within {limit:?}: the tree is saved without it"
        );
    }
    let mut kept = unread.len() as u64;
    if !unread.is_empty() {
        if let Err(e) = super::heldio::input::keep(&dumped.dir, dumped.sn, &unread) {
            tracing::warn!(host, error = %e, "cannot keep a held part's unread input with its SN");
            kept = 0;
        }
    }
    // (given back when it runs on, whatever became of the file)
    super::held::attach_stdio(st, host, dumped.sn, stdio, unread.into());
    (written, kept)
}

/// On the node asked: have the node that saved a part remove its SN.
pub async fn remove_asked(
    st: &Arc<ProcState>,
    caller: &Caller,
    req: RemoveSaved,
) -> Result<(), AdminError> {
    let creds = super::creds::of_caller(caller);
    if req.node == st.node() {
        return remove_here(req, creds, Origin::Local).await;
    }
    let node = req.node;
    let ask = PeerRequest::Proc(ProcPeerRequest::RemoveSaved { req, creds });
    let got = st.ctx.peers.call(node, ask, TIMEOUT).await;
    super::reply::answer(node, got, |r| match r {
        ProcPeerReply::SavedRemoved => Ok(()),
        other => Err(other),
    })
}

/// On the node that saved the part: remove SN `req.sn` of `req.app` from
/// its default checkpoint directory, for `creds` (root from this node or
/// a member, or the directory's owner; the SN after it keeps its pages).
pub async fn remove_here(
    req: RemoveSaved,
    creds: Credentials,
    origin: Origin,
) -> Result<(), AdminError> {
    if creds.uid == 0 && matches!(origin, Origin::Outsider(_)) {
        return Err(refused(
            ErrorKind::PermissionDenied,
            "root's removals are taken only from members of the cluster",
        ));
    }
    let dir = checkpoint::store::app_dir(
        std::path::Path::new(checkpoint::store::DEFAULT_ROOT),
        req.app,
    );
    let (node, app, sn) = (req.node, req.app, req.sn);
    tokio::task::spawn_blocking(move || checkpoint::chain::remove(&dir, sn, creds.uid))
        .await
        .map_err(|e| refused(ErrorKind::Internal, e.to_string()))?
        .map_err(|e| refused(ErrorKind::InvalidArgument, format!("node {node}: {e}")))?;
    tracing::info!(
        app,
        sn,
        uid = creds.uid,
        "removed a saved part of an application"
    );
    Ok(())
}
