//! Requests local tools send to their node's krgd over the Unix socket, one
//! request and one response per frame, in order.

use serde::{Deserialize, Serialize};

use crate::chkpt::{ChkptReply, ChkptRequest};
use crate::cluster::{ClusterReply, ClusterRequest};
use crate::kdfs::{KdfsAdminReply, KdfsAdminRequest};
use crate::sched::{SchedReply, SchedRequest};

/// Largest admin request krgd reads from root: `nodes add` of every id
/// from 1 to 65535 spelt out is under 200 KiB; anything longer is refused
/// unread.
pub const MAX_REQUEST_LEN: usize = 256 * 1024;

/// Largest admin request krgd reads from an ordinary user: what a user may
/// ask (status, CHECKPOINTABLE of their processes, a placement) fits in a
/// few hundred bytes, a path of 4 KiB included.
pub const MAX_USER_REQUEST_LEN: usize = 16 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    Cluster(ClusterRequest),
    Chkpt(ChkptRequest),
    Sched(SchedRequest),
    Kdfs(KdfsAdminRequest),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminResponse {
    Cluster(ClusterReply),
    Chkpt(ChkptReply),
    Sched(SchedReply),
    Kdfs(KdfsAdminReply),
    Error(AdminError),
}

/// A refused or failed request: a kind a script can branch on and one line
/// for a human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    PermissionDenied,
    /// The change needs a quorum of voters and there is none.
    NoQuorum,
    /// The request conflicts with the current state (already a member, …).
    Conflict,
    /// The service or a peer does not answer.
    Unavailable,
    Internal,
}

impl AdminError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}
