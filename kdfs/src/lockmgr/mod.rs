//! The lock manager of the files a krgd owns: cluster-wide `fcntl` and
//! `flock` locks. Every mount sends the lock requests of a file to the
//! file's owner node, whose manager decides; see docs/kdfs.md, *Locks*.
//!
//! * A waiting request (`F_SETLKW`, blocking flock) is held here at most
//!   [`WAIT_SLICE`], well under the client's request timeout, then answered
//!   `LockBusy`; the client looks whether the process was interrupted and
//!   asks again. Meanwhile it is woken at each release.
//! * A client's locks live as long as its lease: any lock request or
//!   `LockLease` renews it; the client sends one every [`LEASE_RENEW`]. After
//!   [`LEASE`] without one (the mount died, or its node is cut off), or when
//!   membership says its node is no longer online, its locks are dropped.
//! * Locks live in krgd's memory. A restarted krgd draws a new epoch (the
//!   answer to `LockLease`): the mounts that held locks on its files see
//!   it change and take them again (`ReclaimLock`). If the krgd before it
//!   may have held locks (its marker file says so), it gives them
//!   [`GRACE`] to: meanwhile only reclaims take locks, and a new lock
//!   waits (or fails with EAGAIN without waiting).
//! * A mirrored store (`--replicas 2`) moves: its mirror serves its files,
//!   locks included, while the node is down, and hands it back after. The
//!   manager that takes the files up ([`LockManager::taking_over`], or
//!   [`LockManager::start_over`] at the node taking them back) knows none
//!   of the locks held: it draws a new epoch, so that every mount takes
//!   its locks again there, and gives them [`MOVE_GRACE`] to.

pub mod table;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use krg_proto::kdfs::{inode_node, InodeId, KdfsRequest as Q, KdfsResponse as A, LockKind};
use krg_proto::NodeId;

use table::{holder, Client, Filter, Table};

/// Longest a waiting lock request is held before `LockBusy`.
pub const WAIT_SLICE: Duration = Duration::from_secs(1);
/// A client's locks go after this long without a word from it.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often a client with locks renews its lease.
pub const LEASE_RENEW: Duration = Duration::from_secs(3);
/// How long a restarted manager whose predecessor may have held locks
/// leaves them to their holders: a lease, and a renewal more.
pub const GRACE: Duration = Duration::from_secs(13);
/// How long a manager that took up a moved store's files leaves their
/// locks to their holders: each mount renews its leases every
/// [`LEASE_RENEW`], sees the new epoch and takes its locks again.
pub const MOVE_GRACE: Duration = Duration::from_secs(2 * LEASE_RENEW.as_secs());

struct State {
    table: Table,
    seen: HashMap<Client, Instant>,
    /// Whether the marker file says locks may be held.
    marked: bool,
    /// Drawn at start (and when the files come back from elsewhere): a
    /// mount that sees it change reclaims its locks.
    epoch: u64,
    /// Until when only reclaims take locks.
    grace_until: Option<Instant>,
}

impl State {
    fn new(grace: Option<Duration>) -> Self {
        Self {
            table: Table::default(),
            seen: HashMap::new(),
            marked: false,
            epoch: rand::random(),
            grace_until: grace.map(|g| Instant::now() + g),
        }
    }

    /// Whether only reclaims take locks at this moment.
    fn in_grace(&self) -> bool {
        self.grace_until.is_some_and(|until| Instant::now() < until)
    }
}

pub struct LockManager {
    node: NodeId,
    state: Mutex<State>,
    changed: tokio::sync::Notify,
    /// Exists while locks are held (so that a restart knows to wait for
    /// their reclaims); `None`: no marker (tests).
    marker: Option<PathBuf>,
}

/// Whether `req` is for the lock manager (not the store).
pub fn is_lock_request(req: &Q) -> bool {
    matches!(
        req,
        Q::SetLock { .. }
            | Q::GetLock { .. }
            | Q::ReleaseLocks { .. }
            | Q::LockLease { .. }
            | Q::ReclaimLock { .. }
    )
}

impl LockManager {
    /// The manager of node `node`'s files, with no marker file: it never
    /// waits for reclaims.
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            state: Mutex::new(State::new(None)),
            changed: tokio::sync::Notify::new(),
            marker: None,
        }
    }

    /// The manager of node `node`'s files, whose marker file `marker`
    /// exists while it holds locks: found at start, it waits [`GRACE`]
    /// for their holders to reclaim them.
    pub fn with_marker(node: NodeId, marker: PathBuf) -> Self {
        let held_before = marker.exists();
        if held_before {
            tracing::info!(
                grace_s = GRACE.as_secs(),
                "kdfs: locks may have been held before this start: their holders may take them back first"
            );
        }
        Self {
            state: Mutex::new(State {
                marked: held_before,
                ..State::new(held_before.then_some(GRACE))
            }),
            marker: Some(marker),
            ..Self::new(node)
        }
    }

    /// The manager of `node`'s files on the node that took its store over
    /// (no marker: a restart of this krgd voids the copy it serves).
    pub fn taking_over(node: NodeId) -> Self {
        Self {
            state: Mutex::new(State::new(Some(MOVE_GRACE))),
            ..Self::new(node)
        }
    }

    /// The files were served elsewhere meanwhile (this node takes its
    /// store back): what this manager holds is stale. Forget it, draw a
    /// new epoch and leave the locks to their holders for [`MOVE_GRACE`]
    /// (or the restart's grace, if longer).
    pub fn start_over(&self) {
        let mut st = self.state();
        let grace = Instant::now() + MOVE_GRACE;
        let until = st.grace_until.map_or(grace, |g| g.max(grace));
        let marked = st.marked;
        *st = State {
            marked,
            grace_until: Some(until),
            ..State::new(None)
        };
        drop(st);
        self.changed.notify_waiters();
    }

    /// Keep the marker file in step with the table: made with the first
    /// lock, so it is there whenever locks are held (a failure is logged:
    /// a restart then may not wait for them); removed only by the sweep
    /// (`clear`, once a second), not at each unlock: a lock taken and
    /// dropped per transaction does not cost a file made and removed.
    fn mark(&self, st: &mut State, clear: bool) {
        let Some(marker) = &self.marker else { return };
        let held = !st.table.is_empty();
        let r = match (held, st.marked) {
            (true, false) => std::fs::write(marker, b"locks held\n"),
            // kept through the grace: a second restart still waits
            (false, true) if clear && !st.in_grace() => std::fs::remove_file(marker),
            _ => return,
        };
        match r {
            Ok(()) => st.marked = held,
            Err(e) => {
                tracing::warn!(file = %marker.display(), error = %e, "kdfs: cannot keep the lock marker")
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it cannot leave the table half-changed in a
        // way that matters more than losing every lock would.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn valid(&self, ino: InodeId, start: u64, end: u64) -> bool {
        inode_node(ino) == self.node && start <= end
    }

    /// Answer one lock request from a mount on node `from`.
    pub async fn handle(&self, from: NodeId, req: Q) -> A {
        match req {
            Q::SetLock {
                ino,
                fh,
                lock,
                wait,
            } => {
                if !self.valid(ino, lock.start, lock.end) {
                    return A::Errno(libc::EINVAL);
                }
                let client = (from, lock.client);
                let deadline = tokio::time::Instant::now() + WAIT_SLICE;
                loop {
                    let woken = self.changed.notified();
                    tokio::pin!(woken);
                    // Registered before looking, so no release is missed.
                    woken.as_mut().enable();
                    {
                        let mut st = self.state();
                        st.seen.insert(client, Instant::now());
                        let free = lock.kind == LockKind::Unlock
                            || (!st.in_grace() && st.table.conflict(ino, client, &lock).is_none());
                        if free {
                            if st.table.apply(ino, client, fh, &lock) {
                                self.changed.notify_waiters();
                            }
                            self.mark(&mut st, false);
                            return A::Done;
                        }
                    }
                    if !wait {
                        return A::Errno(libc::EAGAIN);
                    }
                    // in grace, nothing wakes it: it asks again
                    let grace = {
                        let st = self.state();
                        st.grace_until.filter(|_| st.in_grace())
                    };
                    let until = grace.map_or(deadline, |g| deadline.min(g.into()));
                    if tokio::time::timeout_at(until, woken).await.is_err() {
                        return A::LockBusy;
                    }
                }
            }
            Q::GetLock { ino, lock } => {
                if !self.valid(ino, lock.start, lock.end) {
                    return A::Errno(libc::EINVAL);
                }
                let client = (from, lock.client);
                let mut st = self.state();
                st.seen.insert(client, Instant::now());
                if lock.kind == LockKind::Unlock {
                    return A::LockHeld(None);
                }
                A::LockHeld(st.table.conflict(ino, client, &lock).map(|h| holder(&h)))
            }
            Q::ReleaseLocks {
                client,
                ino,
                owner,
                fh,
            } => {
                let f = Filter {
                    client: (from, client),
                    ino,
                    owner,
                    fh,
                };
                let mut st = self.state();
                let gone = st.table.release(&f);
                self.mark(&mut st, false);
                if gone > 0 {
                    self.changed.notify_waiters();
                }
                A::Done
            }
            Q::LockLease { client } => {
                let mut st = self.state();
                st.seen.insert((from, client), Instant::now());
                A::LockEpoch(st.epoch)
            }
            Q::ReclaimLock { ino, fh, lock } => {
                if !self.valid(ino, lock.start, lock.end) || lock.kind == LockKind::Unlock {
                    return A::Errno(libc::EINVAL);
                }
                let client = (from, lock.client);
                let mut st = self.state();
                st.seen.insert(client, Instant::now());
                if st.table.conflict(ino, client, &lock).is_some() {
                    return A::Errno(libc::ENOLCK);
                }
                st.table.apply(ino, client, fh, &lock);
                self.mark(&mut st, false);
                A::Done
            }
            _ => A::Errno(libc::EINVAL),
        }
    }

    /// Drop the locks of clients whose lease ran out or whose node
    /// `online` says is gone; called every second or so. Returns how many.
    pub fn expire(&self, online: impl Fn(NodeId) -> bool) -> usize {
        let now = Instant::now();
        let mut st = self.state();
        let online_now = |c: &Client, t: &Instant| online(c.0) && now.duration_since(*t) < LEASE;
        st.seen.retain(|c, t| online_now(c, t));
        let State { table, seen, .. } = &mut *st;
        let gone = table.release_clients(|c| !seen.contains_key(&c));
        self.mark(&mut st, true);
        drop(st);
        if gone > 0 {
            tracing::info!(gone, "kdfs: dropped the locks of mounts that went away");
            self.changed.notify_waiters();
        }
        gone
    }
}

#[cfg(test)]
mod tests;
