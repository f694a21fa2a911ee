//! How every service refuses a request: [`AdminError`], a kind a script
//! can branch on and one line for a human (re-exported by
//! [`crate::admin`], where the tools meet it).

use serde::{Deserialize, Serialize};

/// A refused or failed request: a kind a script can branch on and one line
/// for a human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    /// What kind of failure, for scripts.
    pub kind: ErrorKind,
    /// One line for a human, printed as is by the tools.
    pub message: String,
}

/// The kinds of [`AdminError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request names something malformed or impossible (bad id, a
    /// request over the size limit, …).
    InvalidArgument,
    /// The node, process or object named does not exist.
    NotFound,
    /// The caller's uid may not do this (changes need root; a user may only
    /// name their own processes).
    PermissionDenied,
    /// The change needs a quorum of voters and there is none.
    NoQuorum,
    /// The request conflicts with the current state (already a member, …).
    Conflict,
    /// The service or a peer does not answer.
    Unavailable,
    /// A fault inside krgd; the message says which.
    Internal,
}

impl AdminError {
    /// An error of `kind` with the one-line `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}
