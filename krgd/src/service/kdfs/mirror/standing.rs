//! Where this node stands among a store's mirrors (`kdfs::mirror::place`),
//! and what follows from it: whether its copy is partial (it keeps only
//! the inodes of more copies than the file system's), which copy takes a
//! failed store over, and what a copy handed on or back may drop.

use kdfs::format::MAX_REPLICAS;
use kdfs::mirror::mirrors_of;
use kdfs::mirror::place::{self, Keeper};
use kdfs::store::Store;
use krg_proto::NodeId;

use crate::context::NodeContext;

/// `owner`'s mirrors, first to last, and this node's place among them.
fn my_place(ctx: &NodeContext, owner: NodeId) -> (Vec<NodeId>, Option<usize>) {
    let members = super::members(ctx);
    let list = mirrors_of(owner, &members, usize::from(MAX_REPLICAS - 1));
    let place = list.iter().position(|m| *m == ctx.node_id());
    (list, place)
}

/// What this node's copy of `owner`'s store keeps of it, for handing it
/// back: all of it, unless it is partial.
pub(super) fn source_keeper(ctx: &NodeContext, owner: NodeId, copy: &Store) -> Keeper {
    match my_place(ctx, owner).1 {
        Some(place) if is_partial(ctx, owner, copy) => Keeper::Mirror(place),
        _ => Keeper::Owner,
    }
}

/// Whether this node's copy of `owner`'s store (`copy`) keeps only the
/// inodes of more copies than the file system's (a later mirror: see
/// `kdfs::mirror::place`).
pub(super) fn is_partial(ctx: &NodeContext, owner: NodeId, copy: &Store) -> bool {
    match my_place(ctx, owner).1 {
        Some(place) => !place::keeps(Keeper::Mirror(place), copy.replicas()),
        None => false,
    }
}

/// Whether this node's copy of `owner`'s store (`view`) is partial while
/// an earlier mirror, which keeps more, lives: that one takes the store
/// over, not this one.
pub(super) fn partial_while_a_fuller_lives(ctx: &NodeContext, owner: NodeId, view: &Store) -> bool {
    let (list, place) = my_place(ctx, owner);
    let Some(place) = place else { return false };
    let partial = !place::keeps(Keeper::Mirror(place), view.replicas());
    partial && list[..place].iter().any(|m| !super::is_failed(ctx, *m))
}
