//! Mirroring of this node's store to the next member, and the mirrors of
//! other nodes' stores kept here (`mkfs.kdfs --replicas 2`).
//!
//! * `push`: sending changes and full copies to a node that keeps a copy;
//! * `owner`: this node's side as a store's owner — each change sent to
//!   the mirror before it is answered, a full copy when mirroring starts
//!   or the mirror lost track;
//! * `claim`: when this node serves its own store (claimed in the Raft
//!   log), and taking it back from the mirror that served it meanwhile;
//! * `restore`: a store formatted again (its disk lost) gets its files
//!   back from its mirror before it is first served;
//! * `copies`: the copies kept here — applying an owner's changes,
//!   answering reads of its files while it is down, taking its store over
//!   when it failed, handing it back;
//! * `standing`: where this node stands among a store's mirrors — whether
//!   its copy is partial (a directory's count: `kdfs::mirror::place`).
//!
//! What is sent is state, not operations (`kdfs::store::capture`); the
//! rule for who mirrors whom is `kdfs::mirror::mirror_of`. The whole
//! design, and what it does not cover, is in docs/kdfs.md (Replication).

mod claim;
mod copies;
mod owner;
mod push;
mod restore;
mod standing;

pub use claim::Beat;
pub use copies::Copies;
pub use owner::{NotMirrored, Owner};

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use krg_proto::cluster::NodeState;
use krg_proto::NodeId;

use crate::context::NodeContext;
use crate::service::placement::Placement;

/// Everything the kDFS service keeps for replication.
pub struct Mirroring {
    /// This store's link to its mirror.
    pub owner: Arc<Owner>,
    /// The copies of other nodes' stores kept here.
    pub copies: Copies,
    /// Who serves a store's generation (the Raft log's decision).
    pub placement: Arc<dyn Placement>,
    /// This node's mirrored store was claimed: it may be served.
    claimed: AtomicBool,
    /// A claim task runs.
    claiming: AtomicBool,
    /// The node copying this node's store back to it.
    handing_back: std::sync::Mutex<Option<NodeId>>,
    /// Proof that this krgd runs (a frozen one may have lost its store).
    pub beat: Beat,
}

impl Mirroring {
    pub fn new(placement: Arc<dyn Placement>) -> Self {
        Self {
            owner: Arc::default(),
            copies: Copies::default(),
            placement,
            claimed: AtomicBool::new(false),
            claiming: AtomicBool::new(false),
            handing_back: Default::default(),
            beat: Beat::default(),
        }
    }
}

/// The members as the mirror rule sees them, and whether `node` is
/// marked failed among them.
pub(super) fn members(ctx: &NodeContext) -> Vec<NodeId> {
    ctx.view().members().map(|m| m.id).collect()
}

pub(super) fn is_failed(ctx: &NodeContext, node: NodeId) -> bool {
    ctx.view()
        .members()
        .any(|m| m.id == node && m.state == NodeState::Failed)
}
