//! Directories lent to this node's sole mount (`KdfsRequest::Lend`; the
//! mount's side is `client::loans`). A loan lets the mount make regular
//! files in the directory, and remove those it made, in the store itself —
//! no round trip to krgd. So nothing krgd serves may depend on the
//! directory meanwhile:
//!
//! * a directory is lent only while the borrower is this node's only
//!   caching mount, no mount of another node holds its names or
//!   attributes (no callback could reach them), and no request of another
//!   mount about it is being served;
//! * the loan is recalled before krgd serves any other mount, or a peer, a
//!   request that names the directory, or an inode numbered from the loan
//!   (a file made under it) — and before it serves the borrower itself a
//!   new striping policy or count of copies for the directory: `Inval::Recall` is queued to the borrower, and
//!   the request waits until the borrower acknowledges it — it has
//!   finished what it was doing there — or, for a borrower that does not
//!   answer, for [`GONE`] at most (the mount stops using a loan on its own
//!   once its krgd has not answered for less than that);
//! * loans are dropped when the borrower unmounts or is taken for gone, and
//!   recalled when a second mount of this node registers, before a node's
//!   hand-over and before a conversion to more copies.

use std::collections::HashMap;

use krg_proto::kdfs::{inode_local, inode_node, InodeId, Inval, KdfsRequest as Q};
use krg_proto::NodeId;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Callbacks, State, GONE};

/// One lent directory.
pub(super) struct Loan {
    client: u64,
    /// Local inode numbers reserved for it, `[first, end)` each.
    blocks: Vec<(u64, u64)>,
    /// Being recalled: the acknowledgement every request that touches it
    /// waits for.
    recall: Option<Recalling>,
}

#[derive(Clone)]
struct Recalling {
    acked: Option<watch::Receiver<u64>>,
    seq: u64,
    until: Instant,
}

impl Loan {
    fn numbered(&self, me: NodeId, ino: InodeId) -> bool {
        let local = inode_local(ino);
        inode_node(ino) == me && self.blocks.iter().any(|(a, b)| (*a..*b).contains(&local))
    }
}

/// A request's hold on the inodes it touches, kept while it is served:
/// none of them is lent meanwhile.
pub struct Touching<'a> {
    callbacks: &'a Callbacks,
    client: Option<u64>,
    inos: Vec<InodeId>,
}

impl Drop for Touching<'_> {
    fn drop(&mut self) {
        if self.inos.is_empty() {
            return;
        }
        let mut st = self.callbacks.state();
        for ino in &self.inos {
            if let Some(by) = st.touching.get_mut(ino) {
                if let Some(i) = by.iter().position(|c| *c == self.client) {
                    by.swap_remove(i);
                }
                if by.is_empty() {
                    st.touching.remove(ino);
                }
            }
        }
    }
}

impl Callbacks {
    /// Before serving `req` of mount `client` (`None`: a peer, or a mount
    /// that does not cache): recall every loan of another mount it touches,
    /// and keep what it touches from being lent until the guard goes.
    pub async fn touching(&self, client: Option<u64>, req: &Q) -> Touching<'_> {
        let inos = crate::mirror::inodes_named(req);
        if inos.is_empty() {
            return Touching {
                callbacks: self,
                client,
                inos,
            };
        }
        // A directory's new policy changes what a create there makes,
        // which the borrower's own creates would not know of.
        let own_too = changes_policy(req);
        let recalls: Vec<InodeId> = {
            let mut st = self.state();
            for ino in &inos {
                st.touching.entry(*ino).or_default().push(client);
            }
            st.loans
                .iter()
                .filter(|(dir, loan)| {
                    (own_too || Some(loan.client) != client)
                        && inos.iter().any(|i| i == *dir || loan.numbered(self.me, *i))
                })
                .map(|(dir, _)| *dir)
                .collect()
        };
        for dir in recalls {
            self.recall(dir).await;
        }
        Touching {
            callbacks: self,
            client,
            inos,
        }
    }

    /// Lend directory `dir` to mount `client` on `node`, if nothing stands
    /// in the way (see the module header): the loan's inode numbers, which
    /// `reserve` gives (`(first, count)`; `None`: refused).
    pub fn lend(
        &self,
        client: u64,
        node: NodeId,
        dir: InodeId,
        reserve: impl FnOnce() -> Option<(u64, u64)>,
    ) -> Option<(u64, u64)> {
        let mut st = self.state();
        if !self.may_lend(&st, client, node, dir) {
            return None;
        }
        let (first, count) = reserve()?;
        let loan = st.loans.entry(dir).or_insert_with(|| Loan {
            client,
            blocks: Vec::new(),
            recall: None,
        });
        loan.blocks.push((first, first + count));
        Some((first, count))
    }

    fn may_lend(&self, st: &State, client: u64, node: NodeId, dir: InodeId) -> bool {
        let now = Instant::now();
        let held =
            |m: Option<&HashMap<u64, Instant>>| m.is_some_and(|h| h.values().any(|t| *t > now));
        let local_client = |id: &u64| st.clients.get(id).is_some_and(|c| c.node == self.me);
        let other_local = st.clients.iter().any(|(id, c)| {
            *id != client && c.node == self.me && now.duration_since(c.heard) <= GONE
        });
        node == self.me
            && local_client(&client)
            && !other_local
            && st
                .loans
                .get(&dir)
                .is_none_or(|l| l.client == client && l.recall.is_none())
            && !held(st.entries.get(&dir))
            && !held(st.attrs.get(&dir))
            && st
                .touching
                .get(&dir)
                .is_none_or(|by| by.iter().all(|c| *c == Some(client)))
    }

    /// Take lent directory `dir` back: tell its borrower, and return once
    /// it acknowledged (or stopped answering). Every request that touches
    /// it meanwhile waits here too.
    pub(super) async fn recall(&self, dir: InodeId) {
        let wait = {
            let mut guard = self.state();
            let st = &mut *guard;
            let Some(loan) = st.loans.get_mut(&dir) else {
                return;
            };
            if loan.recall.is_none() {
                let now = Instant::now();
                let acked = match st.clients.get_mut(&loan.client) {
                    Some(c) if now.duration_since(c.heard) <= GONE => {
                        c.queue.push(Inval::Recall(dir));
                        c.seq += 1;
                        c.wake.notify_one();
                        Some((c.acked.subscribe(), c.seq))
                    }
                    _ => None,
                };
                loan.recall = Some(Recalling {
                    seq: acked.as_ref().map_or(0, |a| a.1),
                    acked: acked.map(|a| a.0),
                    until: now + GONE,
                });
            }
            loan.recall.clone()
        };
        let Some(r) = wait else { return };
        if let Some(mut rx) = r.acked {
            let seq = r.seq;
            let answered = tokio::time::timeout_at(r.until, rx.wait_for(|a| *a >= seq)).await;
            if !matches!(answered, Ok(Ok(_))) {
                tracing::warn!(dir = %format!("{dir:x}"),
                    "kdfs: the mount a directory was lent to did not give it back in time; taken back");
            }
        }
        let mut st = self.state();
        if st
            .loans
            .get(&dir)
            .is_some_and(|l| l.recall.as_ref().is_some_and(|x| x.seq == r.seq))
        {
            st.loans.remove(&dir);
        }
    }

    /// Recall every loan of a mount other than `except` (every loan: `None`).
    pub async fn recall_all(&self, except: Option<u64>) {
        let dirs: Vec<InodeId> = self
            .state()
            .loans
            .iter()
            .filter(|(_, l)| Some(l.client) != except)
            .map(|(d, _)| *d)
            .collect();
        for dir in dirs {
            self.recall(dir).await;
        }
    }
}

/// Whether `req` gives a directory a striping policy or a count of copies
/// for what is made in it (creates there are krgd's then).
fn changes_policy(req: &Q) -> bool {
    matches!(
        crate::mirror::unwrapped_ref(req),
        Q::SetStripePolicy { .. }
            | Q::SetInodeReplicas {
                policy: Some(_),
                ..
            }
    )
}

/// Forget the loans of mount `client` (it unmounted, or is gone).
pub(super) fn drop_loans(st: &mut State, client: u64) {
    st.loans.retain(|_, l| l.client != client);
}
