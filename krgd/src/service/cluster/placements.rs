//! Where a moving process runs, decided once in the replicated log.
//!
//! A migration's handover has two nodes that could run the process: the
//! target, which restored it, and the origin, which takes it back when the
//! target fails. A network partition can leave each believing the other
//! failed. So neither lets its copy run on its own say: each asks the
//! cluster to record "transfer X runs on node N" ([`place`]), and the
//! first such record in the Raft log wins, on every member alike; later
//! ones change nothing and are answered with the first. A node cut off in
//! the minority cannot get anything committed, so it never runs a copy
//! the majority gave to another node.
//!
//! Records are kept [`KEEP_MS`] after the leader's clock stamped them
//! (long past any migration's end) and then dropped, as later commands
//! are applied. Which node serves a generation of a kDFS store is
//! recorded the same way (`placement::kdfs_key`), and kept until a
//! generation two later of the same store is decided: a node back after
//! any time must find out who served its store meanwhile.

use std::collections::BTreeMap;

use krg_proto::NodeId;
use serde::{Deserialize, Serialize};

use crate::service::placement::kdfs_of;

/// How long a decision is remembered (leader's clock, milliseconds).
pub const KEEP_MS: u64 = 60 * 60 * 1000;

/// One decision: the node that runs the transfer's process, and when it
/// was recorded (the leader's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub node: NodeId,
    pub at_ms: u64,
}

/// Decisions by transfer id.
pub type Placements = BTreeMap<u64, Placed>;

/// Apply "transfer `xfer` runs on `node`" at the leader's time `now_ms`:
/// the node it runs on (the first decided, if one was).
pub fn place(all: &mut Placements, xfer: u64, node: NodeId, now_ms: u64) -> NodeId {
    let store = kdfs_of(xfer);
    all.retain(|k, p| match (kdfs_of(*k), store) {
        // A kDFS store's: until a later generation of it is decided.
        (Some((n, g)), Some((now_n, now_g))) if n == now_n => g.wrapping_sub(now_g) as i32 >= -1,
        (Some(_), _) => true,
        (None, _) => now_ms.saturating_sub(p.at_ms) < KEEP_MS,
    });
    all.entry(xfer)
        .or_insert(Placed {
            node,
            at_ms: now_ms,
        })
        .node
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_decision_wins() {
        let mut all = Placements::new();
        assert_eq!(place(&mut all, 7, 3, 1000), 3, "the target asked first");
        assert_eq!(
            place(&mut all, 7, 1, 1200),
            3,
            "the origin is told node 3 has it"
        );
        assert_eq!(
            place(&mut all, 8, 1, 1300),
            1,
            "another transfer is its own"
        );
        assert_eq!(place(&mut all, 8, 2, 1400), 1);
    }

    #[test]
    fn a_kdfs_store_s_decisions_stay_until_two_generations_later() {
        use crate::service::placement::kdfs_key;
        let mut all = Placements::new();
        assert_eq!(
            place(&mut all, kdfs_key(2, 10), 3, 0),
            3,
            "the mirror took it over"
        );
        assert_eq!(
            place(&mut all, kdfs_key(2, 10), 2, KEEP_MS * 5),
            3,
            "days later"
        );
        place(&mut all, kdfs_key(5, 1), 5, 0);
        place(&mut all, kdfs_key(2, 11), 2, KEEP_MS * 5);
        assert!(all.contains_key(&kdfs_key(2, 10)));
        place(&mut all, kdfs_key(2, 12), 2, KEEP_MS * 5);
        assert!(!all.contains_key(&kdfs_key(2, 10)), "two generations later");
        assert!(all.contains_key(&kdfs_key(5, 1)), "another store's");
    }

    #[test]
    fn old_decisions_are_forgotten() {
        let mut all = Placements::new();
        place(&mut all, 7, 3, 0);
        place(&mut all, 8, 2, KEEP_MS - 1);
        place(&mut all, 9, 1, KEEP_MS);
        assert!(!all.contains_key(&7), "an hour old: dropped");
        assert_eq!(all.len(), 2);
    }
}
