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
    /// `node`: the id of the node whose krgd answers (checkpoint names its
    /// node file after it).
    Capability {
        pid: i32,
        checkpointable: bool,
        node: u32,
    },
}
