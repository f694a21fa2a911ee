//! The replicated cluster state: the member table and its epoch, and who
//! has which member checked out ([`owners`](super::owners)), and where
//! each moving process runs ([`placements`](super::placements)). Every member
//! applies the same commands in the same order (Raft), so every member sees
//! the same table and epoch once a change is committed.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use krg_proto::cluster::{Mac, NodeState, Presence};
use krg_proto::NodeId;
use serde::{Deserialize, Serialize};

use super::owners::{self, Owners, Ownership, Refusal};
use super::placements::{self, Placements};

/// One member of the cluster as recorded in the replicated table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub mac: Option<Mac>,
    /// Online, Failed or Leaving (never Present: present nodes are not members).
    pub state: NodeState,
}

impl MemberRecord {
    /// A node joining the table: online, where its presence says it is.
    pub fn online(p: &Presence) -> Self {
        Self {
            id: p.node,
            addr: p.addr,
            mac: p.mac,
            state: NodeState::Online,
        }
    }
}

/// Commands appended to the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterCommand {
    /// First command of a cluster: its random id and founding members.
    Form {
        uid: u64,
        members: Vec<MemberRecord>,
    },
    Add(Vec<MemberRecord>),
    Remove(Vec<NodeId>),
    SetState {
        node: NodeId,
        state: NodeState,
    },
    /// `krgadm cluster stop`: every member leaves.
    Dissolve,
    /// Online members being removed: `leaving` while they hand over.
    Leave(Vec<NodeId>),
    /// `krgadm nodes checkout`: all of `nodes` for `owner`, or none.
    /// `now_ms` is the leader's clock at proposal: expiry is decided by it.
    Checkout {
        nodes: Vec<NodeId>,
        owner: Ownership,
        now_ms: u64,
    },
    /// `krgadm nodes release` by uid `by` (root may `force`).
    Release {
        nodes: Vec<NodeId>,
        by: u32,
        force: bool,
        now_ms: u64,
    },
    /// A migration's handover: transfer `xfer` runs on `node`, unless a
    /// node was decided for it already. `now_ms`: the leader's clock.
    Place {
        xfer: u64,
        node: NodeId,
        now_ms: u64,
    },
}

/// Result of applying a command: the epoch after it, and why an ownership
/// command changed nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub epoch: u64,
    pub refused: Option<Refusal>,
    /// To `Place`: the node the transfer's process runs on.
    pub placed: Option<NodeId>,
}

/// The state machine's data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Random id of this cluster, fixed at formation; 0 before.
    pub uid: u64,
    /// Number of committed changes to the member table.
    pub epoch: u64,
    pub members: BTreeMap<NodeId, MemberRecord>,
    pub dissolved: bool,
    /// Checked-out members (not part of the epoch: ownership is not
    /// membership). After the fields of older snapshots, which decode
    /// as a prefix.
    pub owners: Owners,
    /// Where moving processes run (not part of the epoch either).
    pub placements: Placements,
}

impl ClusterState {
    /// Apply one command. Commands are validated before being proposed, so
    /// applying never fails; a command that changes nothing leaves the epoch.
    pub fn apply(&mut self, cmd: &ClusterCommand) -> CommandResult {
        let owned = match cmd {
            ClusterCommand::Checkout {
                nodes,
                owner,
                now_ms,
            } => {
                let members = &self.members;
                Some(owners::checkout(
                    &mut self.owners,
                    |n| members.contains_key(&n),
                    nodes,
                    owner,
                    *now_ms,
                ))
            }
            ClusterCommand::Release {
                nodes,
                by,
                force,
                now_ms,
            } => {
                let members = &self.members;
                Some(owners::release(
                    &mut self.owners,
                    |n| members.contains_key(&n),
                    nodes,
                    *by,
                    *force,
                    *now_ms,
                ))
            }
            _ => None,
        };
        if let Some(outcome) = owned {
            return CommandResult {
                epoch: self.epoch,
                refused: outcome.err(),
                placed: None,
            };
        }
        if let ClusterCommand::Place { xfer, node, now_ms } = cmd {
            let on = placements::place(&mut self.placements, *xfer, *node, *now_ms);
            return CommandResult {
                epoch: self.epoch,
                refused: None,
                placed: Some(on),
            };
        }
        let changed = match cmd {
            ClusterCommand::Form { uid, members } => {
                self.uid = *uid;
                self.members = members.iter().map(|m| (m.id, m.clone())).collect();
                true
            }
            ClusterCommand::Add(records) => {
                let mut changed = false;
                for r in records {
                    changed |= self.members.insert(r.id, r.clone()).as_ref() != Some(r);
                }
                changed
            }
            // Every id is removed: `any` would stop at the first one found.
            #[allow(clippy::unnecessary_fold)]
            ClusterCommand::Remove(ids) => {
                // A removed node's checkout ends with its membership.
                ids.iter().for_each(|id| {
                    self.owners.remove(id);
                });
                ids.iter()
                    .fold(false, |c, id| self.members.remove(id).is_some() || c)
            }
            ClusterCommand::SetState { node, state } => match self.members.get_mut(node) {
                Some(m) if m.state != *state => {
                    m.state = *state;
                    true
                }
                _ => false,
            },
            ClusterCommand::Dissolve => {
                self.dissolved = true;
                self.members.clear();
                self.owners.clear();
                true
            }
            ClusterCommand::Leave(ids) => {
                let mut changed = false;
                for id in ids {
                    if let Some(m) = self.members.get_mut(id) {
                        if m.state == NodeState::Online {
                            m.state = NodeState::Leaving;
                            changed = true;
                        }
                    }
                }
                changed
            }
            ClusterCommand::Checkout { .. }
            | ClusterCommand::Release { .. }
            | ClusterCommand::Place { .. } => false,
        };
        if changed {
            self.epoch += 1;
        }
        CommandResult {
            epoch: self.epoch,
            refused: None,
            placed: None,
        }
    }

    /// Who holds `node` at `now_ms` (expired checkouts hold nothing).
    pub fn owner_at(&self, node: NodeId, now_ms: u64) -> Option<&Ownership> {
        self.owners.get(&node).filter(|o| o.live_at(now_ms))
    }

    pub fn is_member(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }

    pub fn online(&self) -> impl Iterator<Item = &MemberRecord> {
        self.members
            .values()
            .filter(|m| m.state == NodeState::Online)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: NodeId) -> MemberRecord {
        MemberRecord {
            id,
            addr: SocketAddr::from(([127, 0, 0, 1], 7600 + id as u16)),
            mac: None,
            state: NodeState::Online,
        }
    }

    #[test]
    fn epoch_counts_real_changes_only() {
        let mut s = ClusterState::default();
        assert_eq!(
            s.apply(&ClusterCommand::Form {
                uid: 9,
                members: vec![rec(1), rec(2)]
            })
            .epoch,
            1
        );
        assert_eq!(s.apply(&ClusterCommand::Add(vec![rec(3)])).epoch, 2);
        assert_eq!(
            s.apply(&ClusterCommand::Add(vec![rec(3)])).epoch,
            2,
            "re-adding the same record is no change"
        );
        assert_eq!(
            s.apply(&ClusterCommand::SetState {
                node: 2,
                state: NodeState::Failed
            })
            .epoch,
            3
        );
        assert_eq!(
            s.apply(&ClusterCommand::SetState {
                node: 2,
                state: NodeState::Failed
            })
            .epoch,
            3
        );
        assert_eq!(s.apply(&ClusterCommand::Remove(vec![2, 7])).epoch, 4);
        assert_eq!(s.members.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(s.apply(&ClusterCommand::Remove(vec![7])).epoch, 4);
        // Leaving: online members only, once.
        let e = s.epoch;
        assert_eq!(s.apply(&ClusterCommand::Leave(vec![3, 9])).epoch, e + 1);
        assert_eq!(s.members[&3].state, NodeState::Leaving);
        assert_eq!(s.apply(&ClusterCommand::Leave(vec![3])).epoch, e + 1);
        assert_eq!(s.online().count(), 1);
        s.apply(&ClusterCommand::Dissolve);
        assert!(s.dissolved && s.members.is_empty());
    }
}
