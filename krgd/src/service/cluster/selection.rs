//! The pure choices behind membership changes, apart from the protocol
//! that carries them out ([`membership`](super::membership)): which nodes an
//! administrator's [`NodeSelector`] names for `nodes add` and `nodes del`,
//! and which members vote in Raft.

use std::collections::BTreeSet;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::cluster::{NodeSelector, Presence};
use krg_proto::NodeId;

use super::raft_types::RaftNodeId;
use super::state::ClusterState;

/// The voters to use among `candidates` (sorted ids): at most `max`, and an
/// odd number when there are three or more, since an even count tolerates no
/// more failures than the odd count below it.
pub(super) fn pick_voters(
    candidates: &BTreeSet<RaftNodeId>,
    keep: &BTreeSet<RaftNodeId>,
    max: usize,
) -> BTreeSet<RaftNodeId> {
    let mut out: BTreeSet<RaftNodeId> = keep.intersection(candidates).copied().take(max).collect();
    for id in candidates {
        if out.len() >= max {
            break;
        }
        out.insert(*id);
    }
    if out.len() >= 3 && out.len() % 2 == 0 {
        if let Some(extra) = out
            .iter()
            .rev()
            .find(|id| !keep.contains(id))
            .or(out.iter().next_back())
            .copied()
        {
            out.remove(&extra);
        }
    }
    out
}

/// The present nodes an `add` names. Errors name the first offending node.
pub(super) fn resolve_for_add(
    sel: &NodeSelector,
    state: &ClusterState,
    present: &[Presence],
) -> Result<Vec<Presence>, AdminError> {
    let check = |id: NodeId| -> Result<Presence, AdminError> {
        if let Some(m) = state.members.get(&id) {
            return Err(AdminError::new(
                ErrorKind::Conflict,
                format!("node {id} is already a member ({})", m.state),
            ));
        }
        match present.iter().find(|p| p.node == id) {
            // A sighting naming our own cluster is stale news of a node that
            // has left it; the Welcome that `add` sends finds out the truth.
            Some(p) if p.cluster.is_some_and(|c| c != state.uid) => Err(AdminError::new(
                ErrorKind::Conflict,
                format!("node {id} is in another cluster; stop that one first"),
            )),
            Some(p) => Ok(p.clone()),
            None => Err(AdminError::new(
                ErrorKind::NotFound,
                format!("node {id} is not present (is krgd running there?)"),
            )),
        }
    };
    let ids: Vec<NodeId> = match sel {
        NodeSelector::Ids(ids) => ids.clone(),
        NodeSelector::Macs(macs) => macs
            .iter()
            .map(|mac| {
                present
                    .iter()
                    .find(|p| p.mac == Some(*mac))
                    .map(|p| p.node)
                    .or_else(|| {
                        state
                            .members
                            .values()
                            .find(|m| m.mac == Some(*mac))
                            .map(|m| m.id)
                    })
                    .ok_or_else(|| {
                        AdminError::new(
                            ErrorKind::NotFound,
                            format!("no present node has MAC {mac}"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
        NodeSelector::AllPresent => {
            let free: Vec<NodeId> = present
                .iter()
                .filter(|p| p.cluster.is_none_or(|c| c == state.uid) && !state.is_member(p.node))
                .map(|p| p.node)
                .collect();
            if free.is_empty() {
                return Err(AdminError::new(
                    ErrorKind::NotFound,
                    "no present node is waiting to be added",
                ));
            }
            free
        }
    };
    let mut seen = BTreeSet::new();
    ids.into_iter()
        .filter(|id| seen.insert(*id))
        .map(check)
        .collect()
}

/// The members a `del` names.
pub(super) fn resolve_for_del(
    sel: &NodeSelector,
    state: &ClusterState,
    me: NodeId,
) -> Result<Vec<NodeId>, AdminError> {
    let ids: Vec<NodeId> = match sel {
        NodeSelector::Ids(ids) => ids.clone(),
        NodeSelector::Macs(macs) => macs
            .iter()
            .map(|mac| {
                state
                    .members
                    .values()
                    .find(|m| m.mac == Some(*mac))
                    .map(|m| m.id)
                    .ok_or_else(|| {
                        AdminError::new(ErrorKind::NotFound, format!("no member has MAC {mac}"))
                    })
            })
            .collect::<Result<_, _>>()?,
        // Every member but the one running the change.
        NodeSelector::AllPresent => state
            .members
            .keys()
            .copied()
            .filter(|id| *id != me)
            .collect(),
    };
    let mut seen = BTreeSet::new();
    let ids: Vec<NodeId> = ids.into_iter().filter(|id| seen.insert(*id)).collect();
    if let Some(id) = ids.iter().find(|id| !state.is_member(**id)) {
        return Err(AdminError::new(
            ErrorKind::NotFound,
            format!("node {id} is not a member of the cluster"),
        ));
    }
    if ids.is_empty() {
        return Err(AdminError::new(
            ErrorKind::InvalidArgument,
            "no node to remove",
        ));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::cluster::state::{ClusterCommand, MemberRecord};

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn voters_are_capped_odd_and_sticky() {
        assert_eq!(
            pick_voters(&set(&[1, 2, 3, 4, 5, 6, 7]), &set(&[]), 5),
            set(&[1, 2, 3, 4, 5])
        );
        assert_eq!(
            pick_voters(&set(&[1, 2, 3, 4]), &set(&[]), 5),
            set(&[1, 2, 3])
        );
        assert_eq!(pick_voters(&set(&[1, 2]), &set(&[]), 5), set(&[1, 2]));
        // Existing voters are kept when still candidates.
        assert_eq!(
            pick_voters(&set(&[2, 3, 4, 5, 6]), &set(&[4, 5, 6]), 3),
            set(&[4, 5, 6])
        );
    }

    #[test]
    fn add_and_del_resolution_errors_name_the_node() {
        let mut state = ClusterState::default();
        let p = |n: NodeId, cluster: Option<u64>| Presence {
            node: n,
            mac: Some(krg_proto::cluster::Mac([0, 4, 0x61, 0xaa, 0x6e, n as u8])),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 7600 + n as u16)),
            cluster,
        };
        state.apply(&ClusterCommand::Form {
            uid: 1,
            members: vec![MemberRecord::online(&p(1, None))],
        });
        let present = vec![p(2, None), p(3, Some(9))];
        let e = resolve_for_add(&NodeSelector::Ids(vec![7]), &state, &present).unwrap_err();
        assert!(e.message.contains("node 7 is not present"), "{}", e.message);
        let e = resolve_for_add(&NodeSelector::Ids(vec![1]), &state, &present).unwrap_err();
        assert!(e.message.contains("already a member"), "{}", e.message);
        let e = resolve_for_add(&NodeSelector::Ids(vec![3]), &state, &present).unwrap_err();
        assert!(e.message.contains("another cluster"), "{}", e.message);
        let ok = resolve_for_add(
            &NodeSelector::Macs(vec![p(2, None).mac.unwrap()]),
            &state,
            &present,
        )
        .unwrap();
        assert_eq!(ok[0].node, 2);
        assert_eq!(
            resolve_for_add(&NodeSelector::AllPresent, &state, &present)
                .unwrap()
                .len(),
            1
        );
        let e = resolve_for_del(&NodeSelector::Ids(vec![2]), &state, 1).unwrap_err();
        assert!(
            e.message.contains("node 2 is not a member"),
            "{}",
            e.message
        );
    }
}
