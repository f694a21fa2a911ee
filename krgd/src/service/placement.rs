//! The one question the process and kDFS services ask the membership
//! service (which implements it; the daemon connects them, so neither
//! service imports the other): on which node does a moving process run,
//! which node serves generation g of a kDFS store ([`kdfs_key`])? The
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

    /// The node decided for `xfer` as far as this node has applied the
    /// log (nothing is committed: a node back from a partition finds here,
    /// once it caught up, that another took what it had).
    fn decided(&self, xfer: u64) -> Decided<'_>;

    /// Whether the log, as far as this node has applied it, decided who
    /// serves some generation of `node`'s kDFS store: the store was served
    /// in this cluster before (a store formatted again since lost its disk).
    fn served_before(&self, node: NodeId) -> Known<'_>;
}

/// The answer of [`Placement::served_before`].
pub type Known<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// The answer of [`Placement::decided`].
pub type Decided<'a> = Pin<Box<dyn Future<Output = Option<NodeId>> + Send + 'a>>;

/// The top bits of every [`kdfs_key`].
pub const KDFS_TAG: u64 = 0x6b64 << 48;

/// The decision "who serves generation `generation` of node `node`'s kDFS
/// store", as a [`Placement`] key. Such decisions are kept until a later
/// generation of the same store is decided (a migration's are kept an
/// hour).
pub fn kdfs_key(node: NodeId, generation: u32) -> u64 {
    KDFS_TAG | (u64::from(node & 0xffff) << 32) | u64::from(generation)
}

/// The store and generation of a [`kdfs_key`].
pub fn kdfs_of(key: u64) -> Option<(NodeId, u32)> {
    (key & (0xffff << 48) == KDFS_TAG).then_some((((key >> 32) & 0xffff) as NodeId, key as u32))
}
