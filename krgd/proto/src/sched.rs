//! Global scheduler messages: placement queries and probe values exchanged
//! between nodes.

use serde::{Deserialize, Serialize};

use crate::NodeId;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SchedRequest {
    /// Which node should run a new process? Answered by the placement policy
    /// of the named scheduler (or the first one loaded).
    Place { scheduler: Option<String> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SchedReply {
    Placement { node: NodeId, reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SchedPeerRequest {
    /// Ask a node for the current values of its loaded probes' sources.
    ProbeValues,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SchedPeerReply {
    /// `(probe/source path, value as text)` pairs.
    ProbeValues(Vec<(String, String)>),
}
