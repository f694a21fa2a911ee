//! Checkpoint service messages (krgcapset, checkpoint ↔ krgd).

use serde::{Deserialize, Serialize};

/// CHECKPOINTABLE requests krgcapset, checkpoint and restart send their
/// node's krgd; a user may only name their own processes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ChkptRequest {
    /// Set or clear CHECKPOINTABLE on `pid`; descendants started afterwards inherit it.
    SetCheckpointable {
        /// The process, as this node's PID namespace numbers it.
        pid: i32,
        /// True sets the capability, false clears it.
        enable: bool,
    },
    /// Is `pid` CHECKPOINTABLE?
    Query {
        /// The process, as this node's PID namespace numbers it.
        pid: i32,
    },
    /// Set or clear CAN_MIGRATE on `pid` (inherited like CHECKPOINTABLE).
    SetCanMigrate {
        /// The process, as this node's PID namespace numbers it.
        pid: i32,
        /// True sets the capability, false clears it.
        enable: bool,
    },
    /// Is `pid` CAN_MIGRATE?
    QueryCanMigrate {
        /// The process, as this node's PID namespace numbers it.
        pid: i32,
    },
}

/// krgd's answers to [`ChkptRequest`]s.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ChkptReply {
    /// `node`: the id of the node whose krgd answers (checkpoint names its
    /// node file after it).
    Capability {
        /// The process asked about.
        pid: i32,
        /// Whether it holds CHECKPOINTABLE now (after a `SetCheckpointable`,
        /// the new value).
        checkpointable: bool,
        /// The answering krgd's node id.
        node: u32,
    },
    /// Answer to `SetCanMigrate` and `QueryCanMigrate`.
    CanMigrate {
        /// The process asked about.
        pid: i32,
        /// Whether it holds CAN_MIGRATE now.
        can_migrate: bool,
        /// The answering krgd's node id.
        node: u32,
    },
}
