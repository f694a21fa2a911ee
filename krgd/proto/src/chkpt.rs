//! Checkpoint service messages (krgcapset, checkpoint ↔ krgd).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ChkptRequest {
    /// Set or clear CHECKPOINTABLE on `pid`; descendants started afterwards inherit it.
    SetCheckpointable { pid: i32, enable: bool },
    /// Is `pid` CHECKPOINTABLE?
    Query { pid: i32 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ChkptReply {
    Capability { pid: i32, checkpointable: bool },
}
