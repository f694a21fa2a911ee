//! Global scheduler messages: placement queries (krgadm → krgd) and probe
//! values exchanged between nodes (krgd → krgd).

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Scheduler requests a local tool (`krgadm sched`) sends its krgd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SchedRequest {
    /// Which node should run a new process? Answered by the placement policy
    /// of the named scheduler (or of the first scheduler that has one).
    Place {
        /// The scheduler directory (`schedulers/<name>`) whose policy
        /// decides; `None`: the first that has a placement policy.
        scheduler: Option<String>,
    },
}

/// krgd's answers to [`SchedRequest`]s.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SchedReply {
    /// To `Place`: the node the policy picked and its one-line reason
    /// (e.g. "most free memory (… bytes) among 4 node(s)").
    Placement {
        /// The chosen node.
        node: NodeId,
        /// Why, as the policy's `placement` file says it.
        reason: String,
    },
}

/// Requests the scheduler service of one krgd sends another's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SchedPeerRequest {
    /// Ask a node for the current values of its loaded probes' sources.
    ProbeValues,
}

/// The latest sample of one source of a probe loaded on the answering node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeValue {
    /// Probe name as in `probes/<probe>`.
    pub probe: String,
    /// Source name as in `probes/<probe>/<source>`.
    pub source: String,
    /// Unit name (`bytes`, `load`, `percent`, `count`, `flag`, `text`).
    pub unit: String,
    /// The value as its `value` file prints it (without the newline).
    pub value: String,
    /// Sample counter of the probe: a new number means a new sample.
    pub seq: u64,
}

/// Answers to [`SchedPeerRequest`]s.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SchedPeerReply {
    /// To `ProbeValues`: one entry per source of every probe loaded there.
    ProbeValues(Vec<ProbeValue>),
}
