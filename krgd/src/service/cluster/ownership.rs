//! `krgadm nodes checkout` and `nodes release`: the krgd that takes the
//! request resolves and authorises it (SO_PEERCRED uid, the user database),
//! the Raft leader commits it ([`owners`](super::owners) decides it where it
//! is applied), and the answer comes once every online member applied it,
//! so that a `krg run` asked anywhere afterwards sees the new owner.

use std::sync::Arc;
use std::time::Duration;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::cluster::{
    CheckoutRequest, ClusterPeerRequest, ClusterReply, OwnershipChange, ReleaseRequest, Until,
    MAX_REASON_LEN,
};
use krg_proto::nodeset::VALID_IDS;
use krg_proto::NodeId;
use nix::unistd::{Uid, User};
use openraft::ServerState;

use super::owners::{self, Ownership};
use super::state::ClusterCommand;
use super::{next_hop, not_in_cluster, ClusterService, Joined, FORWARD_TIMEOUT};
use crate::caller::Caller;

/// The longest a checkout may last.
const MAX_CHECKOUT: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

fn err(kind: ErrorKind, message: impl Into<String>) -> AdminError {
    AdminError::new(kind, message)
}

impl ClusterService {
    /// `nodes checkout` from a local caller.
    pub(super) async fn checkout(
        self: &Arc<Self>,
        caller: &Caller,
        req: CheckoutRequest,
    ) -> Result<ClusterReply, AdminError> {
        let nodes = node_list(req.nodes)?;
        check_reason(&req.reason)?;
        let (uid, user) = resolve_user(req.user.as_deref(), caller.uid, self.ctx.node_id())?;
        if uid != caller.uid && !caller.is_root() {
            return Err(err(
                ErrorKind::PermissionDenied,
                format!(
                    "permission denied: only root may check nodes out for another user (you are uid {}, not {user})",
                    caller.uid
                ),
            ));
        }
        let until_ms = deadline(req.until, owners::now_ms())?;
        let change = OwnershipChange::Checkout {
            nodes,
            uid,
            user,
            until_ms,
            reason: req.reason,
        };
        self.route_ownership(change, 0).await
    }

    /// `nodes release` from a local caller.
    pub(super) async fn release(
        self: &Arc<Self>,
        caller: &Caller,
        req: ReleaseRequest,
    ) -> Result<ClusterReply, AdminError> {
        let nodes = node_list(req.nodes)?;
        if req.force && !caller.is_root() {
            return Err(err(
                ErrorKind::PermissionDenied,
                format!(
                    "permission denied: only root may release other users' nodes (--force; you are uid {})",
                    caller.uid
                ),
            ));
        }
        let change = OwnershipChange::Release {
            nodes,
            by: caller.uid,
            force: req.force,
        };
        self.route_ownership(change, 0).await
    }

    /// Commit `change` here if this node leads, else forward it to the leader.
    pub(super) async fn route_ownership(
        self: &Arc<Self>,
        change: OwnershipChange,
        hops: u8,
    ) -> Result<ClusterReply, AdminError> {
        let joined = self.joined().await.ok_or_else(not_in_cluster)?;
        let leader = self.reachable_leader(&joined)?;
        if leader == self.ctx.node_id() {
            return self.lead_ownership(&joined, change).await;
        }
        let forward = ClusterPeerRequest::ForwardOwnership {
            change,
            hops: next_hop(hops)?,
        };
        self.forward_to(leader, forward, FORWARD_TIMEOUT).await
    }

    /// On the leader: stamp the change with this clock, commit it, and
    /// answer with the rows of its nodes once every online member has it.
    async fn lead_ownership(
        self: &Arc<Self>,
        joined: &Joined,
        change: OwnershipChange,
    ) -> Result<ClusterReply, AdminError> {
        if joined.raft.metrics().borrow().state != ServerState::Leader {
            return Err(err(
                ErrorKind::Unavailable,
                "leadership moved to another node; run the command again",
            ));
        }
        let now_ms = owners::now_ms();
        let (cmd, nodes, releasing_as) = match change {
            OwnershipChange::Checkout {
                nodes,
                uid,
                user,
                until_ms,
                reason,
            } => {
                // Forwarded changes were checked by their first krgd; the
                // time may have passed on the way.
                if until_ms <= now_ms {
                    return Err(err(
                        ErrorKind::InvalidArgument,
                        format!(
                            "the checkout would end at {}, which has passed",
                            owners::rfc3339(until_ms)
                        ),
                    ));
                }
                check_reason(&reason)?;
                let owner = Ownership {
                    uid,
                    user,
                    until_ms,
                    since_ms: now_ms,
                    reason,
                };
                let nodes = node_list(nodes)?;
                let cmd = ClusterCommand::Checkout {
                    nodes: nodes.clone(),
                    owner,
                    now_ms,
                };
                (cmd, nodes, None)
            }
            OwnershipChange::Release { nodes, by, force } => {
                let nodes = node_list(nodes)?;
                let cmd = ClusterCommand::Release {
                    nodes: nodes.clone(),
                    by,
                    force,
                    now_ms,
                };
                (cmd, nodes, Some(by))
            }
        };
        let (result, index) = self.commit_indexed(joined, cmd).await?;
        if let Some(refusal) = result.refused {
            return Err(refusal.to_error(releasing_as));
        }
        self.wait_until_all(joined, |_, applied| applied >= index)
            .await;
        let rows = self
            .nodes()
            .await
            .into_iter()
            .filter(|r| nodes.contains(&r.id))
            .collect();
        Ok(ClusterReply::Owned(rows))
    }
}

/// The nodes of a request: at least one, valid ids, each once.
fn node_list(mut nodes: Vec<NodeId>) -> Result<Vec<NodeId>, AdminError> {
    if nodes.is_empty() {
        return Err(err(ErrorKind::InvalidArgument, "the node list is empty"));
    }
    if let Some(bad) = nodes.iter().find(|n| !VALID_IDS.contains(n)) {
        return Err(err(
            ErrorKind::InvalidArgument,
            format!("{bad} is not a node id (a number from 1 to 65535)"),
        ));
    }
    nodes.sort_unstable();
    nodes.dedup();
    Ok(nodes)
}

/// A reason is shown in tables and on the status page: one short line.
fn check_reason(reason: &str) -> Result<(), AdminError> {
    if reason.len() > MAX_REASON_LEN {
        return Err(err(
            ErrorKind::InvalidArgument,
            format!(
                "the reason is {} bytes long; at most {MAX_REASON_LEN} are allowed",
                reason.len()
            ),
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err(err(
            ErrorKind::InvalidArgument,
            "the reason may not hold control characters (newlines, tabs, escapes)",
        ));
    }
    Ok(())
}

/// (uid, name) of the user `who` names (a name or a uid; the caller when
/// `None`), from this node's user database.
fn resolve_user(who: Option<&str>, caller: u32, node: NodeId) -> Result<(u32, String), AdminError> {
    let found = match who {
        None => User::from_uid(Uid::from_raw(caller)),
        Some(w) => match w.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(w),
        },
    };
    let missing = || match who {
        None => {
            format!("uid {caller} is not a user on node {node} (no entry in its user database)")
        }
        Some(w) => format!("'{w}' is not a user on node {node} (no entry in its user database)"),
    };
    match found {
        Ok(Some(u)) => Ok((u.uid.as_raw(), u.name)),
        Ok(None) => Err(err(ErrorKind::InvalidArgument, missing())),
        Err(e) => Err(err(
            ErrorKind::Internal,
            format!("{}: reading the user database: {e}", missing()),
        )),
    }
}

/// The absolute end of a checkout taken at `now_ms`.
fn deadline(until: Until, now_ms: u64) -> Result<u64, AdminError> {
    let max = u64::try_from(MAX_CHECKOUT.as_millis()).unwrap_or(u64::MAX);
    let at = match until {
        Until::After { ms: 0 } => {
            return Err(err(
                ErrorKind::InvalidArgument,
                "a checkout must last some time (--until +0 ends at once)",
            ))
        }
        Until::After { ms } if ms > max => u64::MAX,
        Until::After { ms } => now_ms.saturating_add(ms),
        Until::At { unix_ms } if unix_ms <= now_ms => {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!("--until {} has passed", owners::rfc3339(unix_ms)),
            ))
        }
        Until::At { unix_ms } => unix_ms,
    };
    if at.saturating_sub(now_ms) > max {
        return Err(err(
            ErrorKind::InvalidArgument,
            "a checkout may last at most 10 years",
        ));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn deadlines_and_reasons() {
        assert_eq!(deadline(Until::After { ms: 2000 }, 1000).unwrap(), 3000);
        assert!(deadline(Until::After { ms: 0 }, 1000).is_err());
        assert!(deadline(Until::At { unix_ms: 999 }, 1000).is_err());
        assert!(deadline(Until::At { unix_ms: 1000 }, 1000).is_err());
        assert_eq!(deadline(Until::At { unix_ms: 5000 }, 1000).unwrap(), 5000);
        assert!(deadline(Until::After { ms: u64::MAX }, 1000).is_err());
        assert!(check_reason("benchmark, week 49").is_ok());
        assert!(check_reason("a\nb").is_err());
        assert!(check_reason("\u{1b}[31mred").is_err());
        assert!(check_reason(&"x".repeat(MAX_REASON_LEN + 1)).is_err());
        assert_eq!(node_list(vec![8, 5, 5]).unwrap(), vec![5, 8]);
        assert!(node_list(vec![]).is_err());
        assert!(node_list(vec![0]).is_err());
    }

    #[test]
    fn users_resolve_by_name_or_uid() {
        assert_eq!(
            resolve_user(Some("root"), 1000, 1).unwrap(),
            (0, "root".into())
        );
        assert_eq!(resolve_user(Some("0"), 1000, 1).unwrap().0, 0);
        assert_eq!(resolve_user(None, 0, 1).unwrap().1, "root");
        let e = resolve_user(Some("no-such-user-krg"), 0, 4).unwrap_err();
        assert_eq!(
            e.message,
            "'no-such-user-krg' is not a user on node 4 (no entry in its user database)"
        );
    }
}
