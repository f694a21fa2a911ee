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

pub mod table;

use std::collections::HashMap;
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

#[derive(Default)]
struct State {
    table: Table,
    seen: HashMap<Client, Instant>,
}

pub struct LockManager {
    node: NodeId,
    state: Mutex<State>,
    changed: tokio::sync::Notify,
}

/// Whether `req` is for the lock manager (not the store).
pub fn is_lock_request(req: &Q) -> bool {
    matches!(
        req,
        Q::SetLock { .. } | Q::GetLock { .. } | Q::ReleaseLocks { .. } | Q::LockLease { .. }
    )
}

impl LockManager {
    /// The manager of node `node`'s files.
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            state: Mutex::new(State::default()),
            changed: tokio::sync::Notify::new(),
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
                        if lock.kind == LockKind::Unlock
                            || st.table.conflict(ino, client, &lock).is_none()
                        {
                            if st.table.apply(ino, client, fh, &lock) {
                                self.changed.notify_waiters();
                            }
                            return A::Done;
                        }
                    }
                    if !wait {
                        return A::Errno(libc::EAGAIN);
                    }
                    if tokio::time::timeout_at(deadline, woken).await.is_err() {
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
                let gone = self.state().table.release(&f);
                if gone > 0 {
                    self.changed.notify_waiters();
                }
                A::Done
            }
            Q::LockLease { client } => {
                self.state().seen.insert((from, client), Instant::now());
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
        let State { table, seen } = &mut *st;
        let gone = table.release_clients(|c| !seen.contains_key(&c));
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
