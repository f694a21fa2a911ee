//! `restart` of a `krg run` job's checkpoint (`ProcRequest::RestartJob`):
//! the tree ran in a PID namespace of its own, so it comes back as a job
//! does after a migration ([`super::migrate::adopt`]) — a new init in a new
//! namespace, every task with its own PID there — but from the checkpoint
//! store, with no session to go back to: a detached job of this node, its
//! output in `<data_dir>/detached/…` like `krg run --detach`'s.
//!
//! Only root asks (restart runs as root; through another node, root there:
//! `restart NODE:PID SN` is forwarded, [`forward`]); the image belongs to
//! its user, who may have edited it: its PID map is checked
//! (`checkpoint::restore::jobns`), and `restart` checks the rest as it
//! does for any image.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::peer::PeerRequest;
use krg_proto::proc::{Credentials, JobRestarted, ProcPeerReply, ProcPeerRequest, RestartJob};
use krg_proto::NodeId;

use checkpoint::restore::jobns::JobCheckpoint;

use super::migrate::adopt::{self, JobImage};
use super::migrate::restore::Lazy;
use super::migrate::Clock;
use super::state::ProcState;

/// How long another node may take to restart a job (restart waits up to
/// two minutes for a restore).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(150);

fn refused(kind: ErrorKind, what: impl std::fmt::Display) -> AdminError {
    AdminError::new(kind, what.to_string())
}

/// Have node `node` restart `req` (root asked here: `creds`).
pub async fn forward(
    st: &ProcState,
    node: NodeId,
    req: RestartJob,
    creds: Credentials,
) -> Result<JobRestarted, AdminError> {
    let ask = PeerRequest::Proc(ProcPeerRequest::RestartJob { req, creds });
    let got = st.ctx.peers.call(node, ask, FORWARD_TIMEOUT).await;
    super::reply::answer(node, got, |r| match r {
        ProcPeerReply::Restarted(r) => Ok(r),
        other => Err(other),
    })
}

/// Restart SN `req.sn` of application `req.app` as a detached job here.
pub async fn restart(st: &Arc<ProcState>, req: RestartJob) -> Result<JobRestarted, AdminError> {
    let root = PathBuf::from(&req.dir);
    if !root.is_absolute() {
        return Err(refused(
            ErrorKind::InvalidArgument,
            format!("{}: the checkpoint directory must be absolute", req.dir),
        ));
    }
    let (app, sn) = (req.app, req.sn);
    let job = read_job(&root, app, sn).await?;
    if job.map.is_empty() {
        return Err(refused(
            ErrorKind::InvalidArgument,
            format!("SN {sn} of {app} ran in krgd's own PID namespace: restart it without krgd"),
        ));
    }
    let img = saved_image(&root, (app, sn), job, st.node(), true);
    let started = adopt::start(st, img, &mut Clock::new(), Lazy::No).await?;
    let output = started
        .entry
        .output
        .as_ref()
        .map(|o| o.dir.display().to_string())
        .unwrap_or_default();
    let host_pid = super::procfs::scan(std::slice::from_ref(&started.entry))
        .iter()
        .find(|f| f.pid == started.entry.pid)
        .map_or(0, |f| f.host_pid);
    let pid = started.entry.pid;
    tracing::info!(
        app,
        sn,
        pid,
        host_pid,
        "restarted a job's checkpoint as a detached job"
    );
    // a detached job has no session to serve: this one only records its end
    drop(super::session::spawn_started(st.clone(), started, None));
    Ok(JobRestarted {
        node: st.node(),
        pid,
        host_pid,
        output,
    })
}

/// SN `sn` of application `app` under `root`, a job's checkpoint: its
/// PID map is checked (the image belongs to its user, who may have
/// edited it; `restart` checks the rest as it does for any image).
pub async fn read_job(root: &Path, app: i32, sn: u32) -> Result<JobCheckpoint, AdminError> {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || checkpoint::restore::jobns::read(&root, app, sn))
        .await
        .map_err(|e| refused(ErrorKind::Internal, e))?
        .map_err(|e| refused(ErrorKind::InvalidArgument, e))
}

/// Checkpoint (`app`, `sn`) under `root`, `job`, to run again here as a
/// job for `origin`: a detached one whose output goes to files here, or
/// one whose session goes back to `origin`. It was CHECKPOINTABLE to be
/// saved: every task of it is again.
pub fn saved_image(
    root: &Path,
    (app, sn): (i32, u32),
    job: JobCheckpoint,
    origin: NodeId,
    detached: bool,
) -> JobImage<'_> {
    let everyone: Vec<i32> = job.map.iter().map(|&(image, _)| image).collect();
    JobImage {
        root,
        app,
        sn,
        pid: job.root,
        map: job.map,
        uid: job.uid,
        gid: job.gid,
        origin,
        terminal: None,
        checkpointable: everyone,
        detached,
        output_here: detached,
        fence: None,
    }
}
