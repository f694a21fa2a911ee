//! The one question the process service asks the membership service
//! (which implements it; the daemon connects them, so neither service
//! imports the other): on which node does a moving process run? The
//! answer is committed in the cluster's Raft log, first asker wins (see
//! `cluster::placements`).

use std::future::Future;
use std::pin::Pin;

use krg_proto::admin::AdminError;
use krg_proto::NodeId;

/// The answer of [`Placement::place`].
pub type Placed<'a> = Pin<Box<dyn Future<Output = Result<NodeId, AdminError>> + Send + 'a>>;

/// Decides where a migration's process runs.
pub trait Placement: Send + Sync {
    /// Record that transfer `xfer` runs on `node`, unless a node was
    /// decided already: the node it runs on, once committed. An error
    /// (no quorum reachable, leadership moving) decided nothing this
    /// node knows of: ask again.
    fn place(&self, xfer: u64, node: NodeId) -> Placed<'_>;
}
