//! The byte-range lock table of the files one krgd owns: POSIX semantics
//! (a lock owner's new lock replaces its own locks on the range, split as
//! needed; shared locks coexist; an exclusive lock conflicts with any other
//! owner's lock it overlaps). flock(2) locks arrive as whole-file locks of
//! their open file's owner and follow the same rules.

use std::collections::HashMap;

use krg_proto::kdfs::{InodeId, LockHolder, LockKind, LockSpec};
use krg_proto::NodeId;

/// One mount: the node it runs on and the number it drew at start.
pub type Client = (NodeId, u64);

/// A held lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub client: Client,
    pub owner: u64,
    pub fh: u64,
    pub start: u64,
    pub end: u64,
    pub write: bool,
    pub pid: u32,
}

impl Held {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }

    fn same_owner(&self, client: Client, owner: u64) -> bool {
        self.client == client && self.owner == owner
    }

    fn kind(&self) -> LockKind {
        if self.write {
            LockKind::Write
        } else {
            LockKind::Read
        }
    }

    /// The request that takes this lock (a mount reclaiming it).
    pub fn spec(&self) -> LockSpec {
        LockSpec {
            client: self.client.1,
            owner: self.owner,
            start: self.start,
            end: self.end,
            kind: self.kind(),
            pid: self.pid,
        }
    }
}

/// Which locks a release drops.
#[derive(Debug, Clone, Copy)]
pub struct Filter {
    pub client: Client,
    pub ino: Option<InodeId>,
    pub owner: Option<u64>,
    pub fh: Option<u64>,
}

impl Filter {
    fn matches(&self, ino: InodeId, h: &Held) -> bool {
        h.client == self.client
            && self.ino.is_none_or(|i| i == ino)
            && self.owner.is_none_or(|o| o == h.owner)
            && self.fh.is_none_or(|f| f == h.fh)
    }
}

#[derive(Default)]
pub struct Table {
    by_ino: HashMap<InodeId, Vec<Held>>,
}

impl Table {
    /// The first lock of another owner that `spec` (Read or Write) would
    /// conflict with.
    pub fn conflict(&self, ino: InodeId, client: Client, spec: &LockSpec) -> Option<Held> {
        let write = spec.kind == LockKind::Write;
        self.by_ino.get(&ino)?.iter().copied().find(|h| {
            !h.same_owner(client, spec.owner)
                && h.overlaps(spec.start, spec.end)
                && (write || h.write)
        })
    }

    /// Apply `spec` for its owner (the caller checked [`Table::conflict`]):
    /// the owner's locks on the range are cut away, then the new lock is
    /// added (none for `Unlock`). Returns whether the owner's earlier locks
    /// changed (waiters may then proceed).
    pub fn apply(&mut self, ino: InodeId, client: Client, fh: u64, spec: &LockSpec) -> bool {
        let (s, e) = (spec.start, spec.end);
        let list = self.by_ino.entry(ino).or_default();
        let mut kept = Vec::with_capacity(list.len() + 2);
        let mut freed = false;
        for h in list.drain(..) {
            if !h.same_owner(client, spec.owner) || !h.overlaps(s, e) {
                kept.push(h);
                continue;
            }
            // Waiters look again after any change (over-waking is harmless).
            freed = true;
            if h.start < s {
                kept.push(Held { end: s - 1, ..h });
            }
            if h.end > e {
                kept.push(Held { start: e + 1, ..h });
            }
        }
        if spec.kind != LockKind::Unlock {
            kept.push(Held {
                client,
                owner: spec.owner,
                fh,
                start: s,
                end: e,
                write: spec.kind == LockKind::Write,
                pid: spec.pid,
            });
        }
        if kept.is_empty() {
            self.by_ino.remove(&ino);
        } else {
            *list = kept;
        }
        freed
    }

    /// Drop the locks `f` selects; how many went.
    pub fn release(&mut self, f: &Filter) -> usize {
        let mut gone = 0;
        self.by_ino.retain(|ino, list| {
            let before = list.len();
            list.retain(|h| !f.matches(*ino, h));
            gone += before - list.len();
            !list.is_empty()
        });
        gone
    }

    /// Drop every lock of the clients `dead` selects; how many went.
    pub fn release_clients(&mut self, dead: impl Fn(Client) -> bool) -> usize {
        let mut gone = 0;
        self.by_ino.retain(|_, list| {
            let before = list.len();
            list.retain(|h| !dead(h.client));
            gone += before - list.len();
            !list.is_empty()
        });
        gone
    }

    /// Every client holding a lock.
    pub fn clients(&self) -> Vec<Client> {
        let mut v: Vec<Client> = self.by_ino.values().flatten().map(|h| h.client).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Whether no lock is held.
    pub fn is_empty(&self) -> bool {
        self.by_ino.is_empty()
    }

    /// Every held lock, with its file.
    pub fn all(&self) -> impl Iterator<Item = (InodeId, &Held)> {
        self.by_ino
            .iter()
            .flat_map(|(ino, list)| list.iter().map(move |h| (*ino, h)))
    }

    #[cfg(test)]
    pub fn held(&self, ino: InodeId) -> Vec<Held> {
        let mut v = self.by_ino.get(&ino).cloned().unwrap_or_default();
        v.sort_by_key(|h| (h.client, h.owner, h.start));
        v
    }
}

/// What F_GETLK reports of a conflicting lock.
pub fn holder(h: &Held) -> LockHolder {
    LockHolder {
        start: h.start,
        end: h.end,
        kind: h.kind(),
        pid: h.pid,
        client: h.client.1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Client = (1, 10);
    const B: Client = (2, 20);

    fn spec(owner: u64, start: u64, end: u64, kind: LockKind) -> LockSpec {
        LockSpec {
            client: 0,
            owner,
            start,
            end,
            kind,
            pid: 7,
        }
    }

    #[test]
    fn shared_locks_coexist_and_exclusive_ones_conflict_on_overlap_only() {
        let mut t = Table::default();
        t.apply(1, A, 1, &spec(1, 0, 99, LockKind::Read));
        assert!(t.conflict(1, B, &spec(2, 50, 60, LockKind::Read)).is_none());
        let c = t.conflict(1, B, &spec(2, 50, 60, LockKind::Write)).unwrap();
        assert_eq!((c.client, c.start, c.end), (A, 0, 99));
        assert!(t
            .conflict(1, B, &spec(2, 100, 200, LockKind::Write))
            .is_none());
        assert!(t.conflict(2, B, &spec(2, 0, 10, LockKind::Write)).is_none());
        // The owner itself never conflicts with its own locks.
        assert!(t.conflict(1, A, &spec(1, 0, 10, LockKind::Write)).is_none());
        // Same owner number, other mount: a different owner.
        assert!(t.conflict(1, B, &spec(1, 0, 10, LockKind::Write)).is_some());
    }

    #[test]
    fn a_new_lock_splits_and_replaces_the_owners_own_range() {
        let mut t = Table::default();
        t.apply(1, A, 1, &spec(1, 0, 99, LockKind::Write));
        // Unlock the middle: two pieces are left.
        assert!(t.apply(1, A, 1, &spec(1, 40, 59, LockKind::Unlock)));
        let r: Vec<(u64, u64)> = t.held(1).iter().map(|h| (h.start, h.end)).collect();
        assert_eq!(r, vec![(0, 39), (60, 99)]);
        assert!(t
            .conflict(1, B, &spec(2, 40, 59, LockKind::Write))
            .is_none());
        // Downgrade part of it to shared.
        assert!(t.apply(1, A, 1, &spec(1, 0, 9, LockKind::Read)));
        let r: Vec<(u64, u64, bool)> = t
            .held(1)
            .iter()
            .map(|h| (h.start, h.end, h.write))
            .collect();
        assert_eq!(r, vec![(0, 9, false), (10, 39, true), (60, 99, true)]);
        assert!(t.conflict(1, B, &spec(2, 0, 9, LockKind::Read)).is_none());
        // Unlock everything.
        t.apply(1, A, 1, &spec(1, 0, u64::MAX, LockKind::Unlock));
        assert!(t.held(1).is_empty());
    }

    #[test]
    fn releases_select_by_client_file_owner_and_handle() {
        let mut t = Table::default();
        t.apply(1, A, 5, &spec(1, 0, 9, LockKind::Write));
        t.apply(1, A, 6, &spec(2, 10, 19, LockKind::Write));
        t.apply(2, A, 7, &spec(1, 0, 9, LockKind::Write));
        t.apply(1, B, 8, &spec(1, 20, 29, LockKind::Write));
        let f = Filter {
            client: A,
            ino: Some(1),
            owner: Some(1),
            fh: None,
        };
        assert_eq!(t.release(&f), 1);
        let f = Filter {
            client: A,
            ino: None,
            owner: None,
            fh: Some(7),
        };
        assert_eq!(t.release(&f), 1);
        assert_eq!(t.clients(), vec![A, B]);
        assert_eq!(t.release_clients(|c| c.0 == 1), 1);
        assert_eq!(t.clients(), vec![B]);
    }
}
