//! kDFS messages: local tools asking their krgd, and the FUSE client asking
//! the krgd that stores a file.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KdfsAdminRequest {
    /// Serve the formatted kDFS directory `dir` to the cluster.
    Attach { dir: String },
    /// Stop serving `dir`.
    Detach { dir: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KdfsAdminReply {
    Attached,
    Detached,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KdfsRequest {
    /// Is a kDFS store attached on this node, and which file system?
    Hello,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KdfsResponse {
    Hello { fs_id: Option<u128> },
}
