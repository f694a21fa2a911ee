//! The Raft types of the cluster membership group, shared by its storage
//! (`store`, `disk`, `writer`), its network and the membership service.

use std::io::Cursor;

use super::state::{ClusterCommand, CommandResult};

openraft::declare_raft_types!(
    /// Raft types of the cluster membership group.
    pub TypeConfig:
        D = ClusterCommand,
        R = CommandResult,
);

/// A node's id as openraft holds it.
pub type RaftNodeId = u64;
/// The membership group's Raft instance.
pub type Raft = openraft::Raft<TypeConfig>;
