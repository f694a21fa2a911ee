//! Requests local tools send to their node's krgd over the Unix socket, one
//! request and one response per frame, in order.

use serde::{Deserialize, Serialize};

use crate::chkpt::{ChkptReply, ChkptRequest};
use crate::cluster::{ClusterReply, ClusterRequest};
use crate::kdfs::{KdfsAdminReply, KdfsAdminRequest};
use crate::proc::{ProcReply, ProcRequest};
pub use crate::refusal::{AdminError, ErrorKind};
use crate::sched::{SchedReply, SchedRequest};

/// Largest admin request krgd reads from root: `nodes add` of every id
/// from 1 to 65535 spelt out is under 200 KiB; anything longer is refused
/// unread.
pub const MAX_REQUEST_LEN: usize = 256 * 1024;

/// Largest admin request krgd reads from an ordinary user: what a user may
/// ask (status, CHECKPOINTABLE of their processes, a placement) fits in a
/// few hundred bytes, a path of 4 KiB included.
pub const MAX_USER_REQUEST_LEN: usize = 16 * 1024;

/// One request of a local tool, naming the krgd service it is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Membership (krgadm `cluster` and `nodes`).
    Cluster(ClusterRequest),
    /// CHECKPOINTABLE tracking (krgcapset, checkpoint, restart).
    Chkpt(ChkptRequest),
    /// The global scheduler (krgadm `sched`).
    Sched(SchedRequest),
    /// kDFS stores (mkfs.kdfs, mount.kdfs).
    Kdfs(KdfsAdminRequest),
    /// The process service: run, ps, kill (`krg`).
    Proc(ProcRequest),
}

/// krgd's answer to an [`AdminRequest`]: the variant of the service asked,
/// or an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminResponse {
    /// Answer of the membership service.
    Cluster(ClusterReply),
    /// Answer of the checkpoint service.
    Chkpt(ChkptReply),
    /// Answer of the scheduler service.
    Sched(SchedReply),
    /// Answer of the kDFS service.
    Kdfs(KdfsAdminReply),
    /// The process service's answer.
    Proc(ProcReply),
    /// The request was refused or failed (also: the connection was over
    /// one of krgd's limits, before any request was read).
    Error(AdminError),
}
