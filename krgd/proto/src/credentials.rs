//! Whose a job is: [`Credentials`], taken by the origin krgd from the
//! kernel (`SO_PEERCRED` and `/proc`), carried by the run and migration
//! messages (re-exported by [`crate::proc`]).

use serde::{Deserialize, Serialize};

/// The credentials a job runs with: those of the user who asked, as the
/// kernel reported them to the origin krgd (never as a tool claimed them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub groups: Vec<u32>,
}

impl Credentials {
    /// `uid` and `gid` without supplementary groups: who owns a
    /// checkpoint, a migration or a job's output, where only those count.
    pub fn of(uid: u32, gid: u32) -> Self {
        Credentials {
            uid,
            gid,
            groups: Vec::new(),
        }
    }

    /// root's, for what krgd does on its own account (balancing, a
    /// leaving node's hand-over, an application's parts moved together).
    pub fn root() -> Self {
        Self::of(0, 0)
    }
}
