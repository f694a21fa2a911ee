//! Who one end of a connection is: what the handshake ([`crate::auth`])
//! authenticates and the frame keys ([`crate::seal`]) are derived for.

use serde::{Deserialize, Serialize};

use crate::{NodeId, SessionId};

/// What is connecting: another krgd, or a tool acting for an administrator
/// (mount.kdfs, benchmarks) that holds the cluster key but is not a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A krgd, member of the session or about to be.
    Node,
    /// A tool holding the cluster key (mount.kdfs, benchmarks).
    Tool,
}

/// Who one end of a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The session it belongs to; a server refuses another session.
    pub session: SessionId,
    /// Its node id (a tool gives the id of the node it runs on).
    pub node: NodeId,
    /// krgd or tool.
    pub role: Role,
}
