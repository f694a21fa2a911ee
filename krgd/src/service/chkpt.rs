//! CHECKPOINTABLE capability tracking (krgcapset, checkpoint).
//!
//! The tracking itself (proc connector, inheritance on fork) lives in
//! `checkpoint::captrack`; this service authorises requests and answers them.

use std::sync::Arc;

use checkpoint::captrack::CapTracker;
use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::chkpt::{ChkptReply, ChkptRequest};

use crate::context::NodeContext;
use crate::net::admin::Caller;
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
                let owner = process_owner(pid)?;
                if !caller.is_root() && caller.uid != owner {
                    return Err(AdminError::new(
                        ErrorKind::PermissionDenied,
                        format!("process {pid} belongs to uid {owner}; only root or its owner may change its capabilities"),
                    ));
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
                process_owner(pid)?;
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

/// Real uid of a process, from /proc.
fn process_owner(pid: i32) -> Result<u32, AdminError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|_| {
        AdminError::new(ErrorKind::NotFound, format!("process {pid} does not exist"))
    })?;
    checkpoint::procfs::status_ids(&status, "Uid")
        .ok()
        .and_then(|v| v.first().copied())
        .ok_or_else(|| {
            AdminError::new(
                ErrorKind::Internal,
                format!("cannot read the owner of process {pid}"),
            )
        })
}
