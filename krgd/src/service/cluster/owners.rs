//! Node ownership (`krgadm nodes checkout` / `release`, as HOP-SCOTCH let
//! users take nodes for themselves): the records kept in the replicated
//! state, and the two commands that change them.
//!
//! Both commands are decided where they are applied, on every member alike:
//! each carries the leader's wall-clock time when it was proposed (`now_ms`),
//! and a checkout expires when that time passes its deadline. So whatever
//! the leader checked before proposing, two checkouts of overlapping sets
//! committed one after the other (even by two leaders in a row) end the same
//! way everywhere: the first wins, the second is refused and changes nothing.
//! Readers (status, placement) compare the deadline with their own clock.

use std::collections::BTreeMap;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::cluster::NodeOwner;
use krg_proto::NodeId;
use serde::{Deserialize, Serialize};

/// One checked-out node, as committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    pub uid: u32,
    pub user: String,
    /// Absolute deadline, milliseconds since the Unix epoch.
    pub until_ms: u64,
    /// The leader's clock when the checkout was proposed.
    pub since_ms: u64,
    pub reason: String,
}

impl Ownership {
    /// Still owned at `now_ms`?
    pub fn live_at(&self, now_ms: u64) -> bool {
        self.until_ms > now_ms
    }

    pub fn to_proto(&self) -> NodeOwner {
        NodeOwner {
            uid: self.uid,
            user: self.user.clone(),
            until_ms: self.until_ms,
            since_ms: self.since_ms,
            reason: self.reason.clone(),
        }
    }
}

/// Why an ownership command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The node is not a member of the cluster.
    NotMember(NodeId),
    /// Someone else holds the node.
    Owned { node: NodeId, by: Ownership },
    /// Release: none of the nodes is checked out.
    NothingOut,
}

impl Refusal {
    /// The one line the caller reads. `releasing_as` is the releasing uid
    /// (None for a checkout), to say whether `--force` would help.
    pub fn to_error(&self, releasing_as: Option<u32>) -> AdminError {
        match self {
            Refusal::NotMember(n) => AdminError::new(
                ErrorKind::NotFound,
                format!("node {n} is not a member of the cluster (krgadm nodes status lists them)"),
            ),
            Refusal::Owned { node, by } => {
                let held = format!(
                    "node {node} is checked out by {} until {}",
                    by.user,
                    rfc3339(by.until_ms)
                );
                let msg = match releasing_as {
                    None if by.reason.is_empty() => held,
                    None => format!("{held} ({})", by.reason),
                    Some(0) => format!("{held}; root releases it with --force"),
                    Some(_) => format!("{held}: only they or root may release it"),
                };
                AdminError::new(ErrorKind::Conflict, msg)
            }
            Refusal::NothingOut => AdminError::new(
                ErrorKind::NotFound,
                "none of these nodes is checked out (an expired checkout is over)",
            ),
        }
    }
}

/// `ms` since the Unix epoch as an RFC 3339 UTC time to the second.
pub fn rfc3339(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("{ms} ms after the epoch"))
}

/// Milliseconds since the Unix epoch by this host's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The ownership table: node id → checkout (expired ones linger until the
/// next command drops them; readers skip them).
pub type Owners = BTreeMap<NodeId, Ownership>;

/// Check `nodes` out as `record` at `now_ms`: all of them, or none when one
/// is not a member or is held by another uid. The owner's own checkouts
/// are replaced (a renewal).
pub fn checkout(
    owners: &mut Owners,
    is_member: impl Fn(NodeId) -> bool,
    nodes: &[NodeId],
    record: &Ownership,
    now_ms: u64,
) -> Result<(), Refusal> {
    owners.retain(|_, o| o.live_at(now_ms));
    for &n in nodes {
        if !is_member(n) {
            return Err(Refusal::NotMember(n));
        }
        if let Some(o) = owners.get(&n).filter(|o| o.uid != record.uid) {
            return Err(Refusal::Owned {
                node: n,
                by: o.clone(),
            });
        }
    }
    for &n in nodes {
        owners.insert(n, record.clone());
    }
    Ok(())
}

/// Release `nodes` for `by` at `now_ms`: every one that is checked out,
/// or none when one is not a member or held by another uid (unless
/// `force`). Nodes not checked out are skipped; if that is all of them,
/// nothing happens and the release is refused.
pub fn release(
    owners: &mut Owners,
    is_member: impl Fn(NodeId) -> bool,
    nodes: &[NodeId],
    by: u32,
    force: bool,
    now_ms: u64,
) -> Result<(), Refusal> {
    owners.retain(|_, o| o.live_at(now_ms));
    for &n in nodes {
        if !is_member(n) {
            return Err(Refusal::NotMember(n));
        }
        if let Some(o) = owners.get(&n).filter(|o| o.uid != by && !force) {
            return Err(Refusal::Owned {
                node: n,
                by: o.clone(),
            });
        }
    }
    if !nodes.iter().any(|n| owners.contains_key(n)) {
        return Err(Refusal::NothingOut);
    }
    for n in nodes {
        owners.remove(n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn rec(uid: u32, until_ms: u64) -> Ownership {
        Ownership {
            uid,
            user: format!("u{uid}"),
            until_ms,
            since_ms: 0,
            reason: String::new(),
        }
    }

    #[test]
    fn overlapping_checkouts_all_or_nothing() {
        let mut o = Owners::new();
        let member = |n: NodeId| (1..=8).contains(&n);
        checkout(&mut o, member, &[5, 6, 7, 8], &rec(1000, 100), 10).unwrap();
        let e = checkout(&mut o, member, &[3, 4, 5], &rec(1001, 100), 20).unwrap_err();
        assert_eq!(
            e,
            Refusal::Owned {
                node: 5,
                by: rec(1000, 100)
            }
        );
        assert!(!o.contains_key(&3), "nothing of a refused checkout is kept");
        // Unknown nodes are refused, naming the node.
        assert_eq!(
            checkout(&mut o, member, &[2, 9], &rec(1001, 100), 20),
            Err(Refusal::NotMember(9))
        );
        assert!(!o.contains_key(&2));
        // The owner renews; after expiry another user wins.
        checkout(&mut o, member, &[5], &rec(1000, 200), 30).unwrap();
        assert_eq!(o[&5].until_ms, 200);
        checkout(&mut o, member, &[6, 7], &rec(1001, 300), 150).unwrap();
        assert_eq!(o[&6].uid, 1001);
        assert!(!o.contains_key(&8), "expired checkouts are dropped");
        let msg = Refusal::Owned {
            node: 5,
            by: rec(1000, 0),
        }
        .to_error(None)
        .message;
        assert_eq!(
            msg,
            "node 5 is checked out by u1000 until 1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn release_by_owner_or_forced() {
        let mut o = Owners::new();
        let member = |n: NodeId| (1..=8).contains(&n);
        checkout(&mut o, member, &[5, 6], &rec(1000, 100), 0).unwrap();
        checkout(&mut o, member, &[7], &rec(0, 100), 0).unwrap();
        assert!(matches!(
            release(&mut o, member, &[6, 7], 1000, false, 1),
            Err(Refusal::Owned { node: 7, .. })
        ));
        assert_eq!(o.len(), 3);
        assert!(matches!(
            release(&mut o, member, &[5], 0, false, 1),
            Err(Refusal::Owned { node: 5, .. })
        ));
        release(&mut o, member, &[5, 7], 0, true, 1).unwrap();
        assert_eq!(o.keys().copied().collect::<Vec<_>>(), vec![6]);
        release(&mut o, member, &[4, 6], 1000, false, 1).unwrap();
        assert_eq!(
            release(&mut o, member, &[6], 1000, false, 1),
            Err(Refusal::NothingOut)
        );
        assert_eq!(
            release(&mut o, member, &[9], 1000, false, 1),
            Err(Refusal::NotMember(9))
        );
    }
}
