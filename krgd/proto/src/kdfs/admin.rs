//! What mkfs.kdfs and mount.kdfs ask their own node's krgd on its admin
//! socket: attach or detach a store, and what it serves.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::KdfsNode;
use crate::NodeId;

/// Requests mkfs.kdfs and mount.kdfs send their node's krgd (root only,
/// except `Info`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KdfsAdminRequest {
    /// This node's id, session and address, the members the krgd knows of,
    /// and the directory it serves.
    Info,
    /// Serve the formatted kDFS directory `dir` to the cluster. `fs_id` is the
    /// file system's id learnt from the root node: a store formatted on a
    /// non-root node is bound to it at its first attach.
    Attach {
        /// Absolute path of the formatted store directory.
        dir: String,
        /// The file system's id, when the caller knows it from the root node.
        fs_id: Option<u128>,
    },
    /// Stop serving the attached directory.
    Detach,
}

/// krgd's answers to [`KdfsAdminRequest`]s.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KdfsAdminReply {
    /// To `Info`.
    Info {
        /// The answering krgd's node id.
        node: NodeId,
        /// Its session.
        session: crate::SessionId,
        /// Its peer address (where mount.kdfs reaches it over TCP).
        addr: SocketAddr,
        /// False while no cluster has been started.
        cluster_started: bool,
        /// Every member, with its address and health.
        members: Vec<KdfsNode>,
        /// The store directory it serves, if any.
        attached: Option<String>,
    },
    /// To `Attach`: the store is served.
    Attached {
        /// The id of the file system the store belongs to.
        fs_id: u128,
        /// The node holding its root directory.
        root_node: NodeId,
    },
    /// To `Detach`: the store is no longer served.
    Detached,
}
