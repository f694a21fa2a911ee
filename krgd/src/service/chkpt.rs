//! CHECKPOINTABLE capability tracking (krgcapset, checkpoint).
//!
//! The tracking itself (proc connector, inheritance on fork) lives in
//! `checkpoint::captrack`; this service authorises requests and answers them.

use std::sync::Arc;

use checkpoint::captrack::CapTracker;
use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::chkpt::{ChkptReply, ChkptRequest};

use crate::caller::Caller;
use crate::context::NodeContext;
use crate::DaemonError;

pub struct ChkptService {
    ctx: Arc<NodeContext>,
    /// None when the proc connector could not be opened (krgd not root).
    tracker: Option<CapTracker>,
}

impl ChkptService {
    pub async fn start(ctx: Arc<NodeContext>) -> Result<Arc<Self>, DaemonError> {
        let tracker = match CapTracker::start() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow forks with the proc connector; CHECKPOINTABLE is unavailable");
                None
            }
        };
        Ok(Arc::new(Self { ctx, tracker }))
    }

    pub async fn handle_admin(
        &self,
        caller: &Caller,
        req: ChkptRequest,
    ) -> Result<ChkptReply, AdminError> {
        let t = self.tracker.as_ref().ok_or_else(|| {
            AdminError::new(ErrorKind::Unavailable, "this krgd cannot track CHECKPOINTABLE (proc connector unavailable; run krgd as root)")
        })?;
        match req {
            ChkptRequest::SetCheckpointable { pid, enable } => {
                if !caller.is_root() {
                    check_owned_by(pid, caller.uid)?;
                }
                t.set(pid, enable)
                    .map_err(|e| AdminError::new(ErrorKind::NotFound, e.to_string()))?;
                tracing::info!(pid, enable, uid = caller.uid, "CHECKPOINTABLE changed");
                Ok(ChkptReply::Capability {
                    pid,
                    checkpointable: enable,
                    node: self.ctx.node_id(),
                })
            }
            ChkptRequest::Query { pid } => {
                check_exists(pid)?;
                Ok(ChkptReply::Capability {
                    pid,
                    checkpointable: t.is_set(pid),
                    node: self.ctx.node_id(),
                })
            }
        }
    }

    pub async fn shutdown(&self) {
        if let Some(t) = &self.tracker {
            t.shutdown();
        }
    }
}

fn read_status(pid: i32) -> Result<String, AdminError> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| AdminError::new(ErrorKind::NotFound, format!("process {pid} does not exist")))
}

/// Does process `pid` exist?
fn check_exists(pid: i32) -> Result<(), AdminError> {
    read_status(pid).map(drop)
}

/// A user may change the capabilities of a process only if it is entirely
/// theirs: real, effective, saved and file-system uids all the caller's,
/// and its gids all one. A setuid or setgid program the user started holds
/// another identity, and is root's business.
fn check_owned_by(pid: i32, uid: u32) -> Result<(), AdminError> {
    let status = read_status(pid)?;
    let ids = |key| {
        checkpoint::procfs::status_ids(&status, key).map_err(|_| {
            AdminError::new(
                ErrorKind::Internal,
                format!("cannot read the credentials of process {pid}"),
            )
        })
    };
    let (uids, gids) = (ids("Uid")?, ids("Gid")?);
    let all_caller = uids.iter().all(|&u| u == uid);
    let one_gid = gids.iter().all(|&g| Some(&g) == gids.first());
    if !all_caller || !one_gid {
        return Err(AdminError::new(
            ErrorKind::PermissionDenied,
            format!(
                "process {pid} runs with uids {uids:?} and gids {gids:?}; only root may change the capabilities of a process that is not entirely yours"
            ),
        ));
    }
    Ok(())
}
