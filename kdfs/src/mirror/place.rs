//! Which of a store's mirrors keeps what. The mirror at place `p` of the
//! store's list ([`super::mirrors_of`], 0 first) keeps the inodes of more
//! than `p + 1` copies (`store::replicas`): with the file system's count
//! of 2, only the first mirror keeps anything; a directory given 3
//! (`kdfsctl replicas 3 DIR`) is kept by the second too. The store's
//! meta-files go to every mirror, other nodes' striped units wherever the
//! file system's count sends them, and an object gone to every mirror (it
//! can no longer say its count; dropping what is not there is nothing).

use std::collections::HashMap;

use krg_proto::kdfs::MirrorChange;

use crate::store::{own_count, Store};

/// Who a copy of a store is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Keeper {
    /// The store's own node (a mirror handing it back): everything.
    #[default]
    Owner,
    /// The mirror at this place of the store's list.
    Mirror(usize),
}

/// Whether `keeper` keeps an inode of `count` copies.
pub fn keeps(keeper: Keeper, count: u8) -> bool {
    match keeper {
        Keeper::Owner => true,
        Keeper::Mirror(place) => usize::from(count) > place + 1,
    }
}

/// The changes of a batch that `keeper` keeps, in order.
pub fn kept_at(store: &Store, keeper: Keeper, changes: &[MirrorChange]) -> Vec<MirrorChange> {
    if !store.has_own_counts() && keeps(keeper, store.replicas()) {
        // Every inode has the file system's count, and this mirror keeps it.
        return changes.to_vec();
    }
    // An object's count: from its state in this batch (the newest
    // there), else asked of the store.
    let mut counts: HashMap<u64, u8> = HashMap::new();
    for c in changes {
        if let MirrorChange::Object {
            local,
            state: Some(s),
        } = c
        {
            counts.insert(*local, own_count(s).unwrap_or(store.replicas()));
        }
    }
    let mut count_of = |local: u64| {
        *counts
            .entry(local)
            .or_insert_with(|| store.replicas_of(local))
    };
    changes
        .iter()
        .filter(|c| match object_of(c) {
            Some(local) => keeps(keeper, count_of(local)),
            None => keeps_whole_store(store, keeper, c),
        })
        .cloned()
        .collect()
}

/// Whether a full copy to `keeper` copies object `local`.
pub fn copies_object(store: &Store, keeper: Keeper, local: u64) -> bool {
    keeps(keeper, store.replicas_of(local))
}

/// The object a change is about, if it is about a live one.
fn object_of(c: &MirrorChange) -> Option<u64> {
    match c {
        MirrorChange::Object {
            local,
            state: Some(_),
        }
        | MirrorChange::Entries { local, .. }
        | MirrorChange::Data { local, .. }
        | MirrorChange::Sync { local: Some(local) } => Some(*local),
        _ => None,
    }
}

/// Changes about no one object: the meta-files and a whole-store sync
/// reach every mirror, a gone object too; other nodes' striped units the
/// mirrors the file system's count names.
fn keeps_whole_store(store: &Store, keeper: Keeper, c: &MirrorChange) -> bool {
    match c {
        MirrorChange::StripeData { .. }
        | MirrorChange::StripeCopy { .. }
        | MirrorChange::StripeLink { .. }
        | MirrorChange::StripeSync { .. } => keeps(keeper, store.replicas()),
        _ => true,
    }
}
