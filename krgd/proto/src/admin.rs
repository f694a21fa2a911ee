//! Requests local tools send to their node's krgd over the Unix socket, one
//! request and one response per frame, in order.

use serde::{Deserialize, Serialize};

use crate::chkpt::{ChkptReply, ChkptRequest};
use crate::cluster::{ClusterReply, ClusterRequest};
use crate::kdfs::{KdfsAdminReply, KdfsAdminRequest};
use crate::proc::{ProcReply, ProcRequest};
use crate::sched::{SchedReply, SchedRequest};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    Cluster(ClusterRequest),
    Chkpt(ChkptRequest),
    Sched(SchedRequest),
    Kdfs(KdfsAdminRequest),
    /// The process service: run, ps, kill (`krg`).
    Proc(ProcRequest),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminResponse {
    Cluster(ClusterReply),
    Chkpt(ChkptReply),
    Sched(SchedReply),
    Kdfs(KdfsAdminReply),
    /// The process service's answer.
    Proc(ProcReply),
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
