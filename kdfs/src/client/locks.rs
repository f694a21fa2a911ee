//! Cluster-wide locks, client side. The kernel hands every `fcntl` lock
//! (and, with FUSE_FLOCK_LOCKS, every `flock`) to the mount; they are sent
//! to the lock manager of the file's owner node ([`crate::lockmgr`]), named
//! by this mount's random client number and the kernel's lock owner.
//!
//! * A blocking request asks the owner again every time it answers
//!   `LockBusy` (after at most [`crate::lockmgr::WAIT_SLICE`]), and in
//!   between looks whether the waiting process has a signal to take (fuser
//!   does not pass FUSE_INTERRUPT on, and the kernel waits for the answer
//!   even when the process is killed): then it answers EINTR.
//! * `flush` (every close) drops the closing process's fcntl locks on the
//!   file; `release` (last close of an open file) drops the locks taken
//!   through it (flock and OFD locks). Both only for files this mount ever
//!   locked, so that other closes cost nothing.
//! * Every [`LEASE_RENEW`] the mount tells the nodes it locked files on,
//!   or opened files on, that it is alive; their managers drop its locks
//!   otherwise, and their krgds close its handles (the opens go as
//!   `HeldBy` this mount's client number: see [`ClientLocks::held_by`]).
//! * The mount keeps its own copy of the locks it holds: when a node's
//!   manager answers the lease with a new epoch (its krgd started again
//!   and forgot them), they are taken again there (`ReclaimLock`). On a
//!   mirrored file system, the locks of a failed node's files go to its
//!   mirror, which answers with its own epoch: they move there the same
//!   way, and back when the node takes its store back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use krg_proto::kdfs::{inode_node, InodeId, KdfsRequest as Q, KdfsResponse as A, LockHolder};
use krg_proto::kdfs::{LockKind, LockSpec};
use krg_proto::NodeId;

use super::conn::Cluster;
use crate::lockmgr::table::{Filter, Table};
use crate::lockmgr::LEASE_RENEW;

/// An errno on failure, as every FUSE operation answers.
type Res<T> = Result<T, i32>;

pub struct ClientLocks {
    /// This mount's number in every lock manager.
    pub client: u64,
    /// Files this mount has locked (or tried to).
    locked: Mutex<HashSet<InodeId>>,
    /// The locks it holds, as the managers hold them (client node 0: this
    /// mount), to take them again after a manager's restart.
    held: Mutex<Table>,
    /// The epoch each node's manager last answered.
    epochs: Mutex<HashMap<NodeId, u64>>,
    /// Nodes this mount opened handles on (kept: a lease more is cheap).
    opened_on: Mutex<HashSet<NodeId>>,
}

/// This mount in its own copy of its locks.
const ME: NodeId = 0;

impl Default for ClientLocks {
    fn default() -> Self {
        Self::new()
    }
}

/// The kind an fcntl `l_type` names.
pub fn kind_of(typ: i32) -> Option<LockKind> {
    match typ {
        libc::F_RDLCK => Some(LockKind::Read),
        libc::F_WRLCK => Some(LockKind::Write),
        libc::F_UNLCK => Some(LockKind::Unlock),
        _ => None,
    }
}

/// The fcntl `l_type` of a kind.
pub fn typ_of(kind: LockKind) -> i32 {
    match kind {
        LockKind::Read => libc::F_RDLCK,
        LockKind::Write => libc::F_WRLCK,
        LockKind::Unlock => libc::F_UNLCK,
    }
}

/// Whether thread `pid` has a signal to take (or is gone): its blocked lock
/// request must then give way with EINTR.
fn interrupted(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (field("SigPnd:") | field("ShdPnd:")) & !field("SigBlk:") != 0
}

impl ClientLocks {
    pub fn new() -> Self {
        Self {
            client: rand::random::<u64>(),
            locked: Mutex::new(HashSet::new()),
            held: Mutex::new(Table::default()),
            epochs: Mutex::new(HashMap::new()),
            opened_on: Mutex::new(HashSet::new()),
        }
    }

    /// `q` as this mount sends it to `node`: a request that opens a handle
    /// goes as this mount's (`HeldBy`), and its lease is kept at `node`
    /// from now on, so that the handle is closed there if the mount dies.
    pub fn held_by(&self, node: NodeId, q: Q) -> Q {
        if !q.opens_handle() {
            return q;
        }
        self.opened_on().insert(node);
        Q::HeldBy {
            client: self.client,
            req: Box::new(q),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Table> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn epochs(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, u64>> {
        self.epochs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, HashSet<InodeId>> {
        self.locked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn opened_on(&self) -> std::sync::MutexGuard<'_, HashSet<NodeId>> {
        self.opened_on.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this mount ever locked (or tried to lock) `ino`.
    pub fn has_locked(&self, ino: InodeId) -> bool {
        self.locked().contains(&ino)
    }

    /// Nodes whose managers may hold locks of this mount, or whose krgds
    /// its handles.
    fn nodes(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.locked().iter().map(|i| inode_node(*i)).collect();
        v.extend(self.opened_on().iter().copied());
        v.sort_unstable();
        v.dedup();
        v
    }

    /// fcntl F_SETLK/F_SETLKW (and flock): `waiter` is the calling thread.
    pub async fn set(
        &self,
        cluster: &Cluster,
        ino: InodeId,
        fh: u64,
        lock: LockSpec,
        wait: bool,
        waiter: u32,
    ) -> Res<()> {
        if lock.kind == LockKind::Unlock && !self.has_locked(ino) {
            return Ok(());
        }
        self.locked().insert(ino);
        loop {
            let q = Q::SetLock {
                ino,
                fh,
                lock,
                wait,
            };
            match cluster.call(inode_node(ino), q).await? {
                A::Done => {
                    self.held().apply(ino, (ME, self.client), fh, &lock);
                    // the manager's epoch from the first lock on, so that
                    // a restart before the next lease is seen too
                    let node = inode_node(ino);
                    if !self.epochs().contains_key(&node) {
                        self.renew(cluster, node).await;
                    }
                    return Ok(());
                }
                A::LockBusy if wait => {
                    if interrupted(waiter) {
                        return Err(libc::EINTR);
                    }
                }
                other => {
                    tracing::warn!(?other, "kdfs: unexpected answer to a lock request");
                    return Err(libc::EIO);
                }
            }
        }
    }

    /// fcntl F_GETLK: the conflicting lock, if any. A holder on another
    /// mount is reported with pid 0 (its pid means nothing here).
    pub async fn get(
        &self,
        cluster: &Cluster,
        ino: InodeId,
        lock: LockSpec,
    ) -> Res<Option<LockHolder>> {
        match cluster
            .call(inode_node(ino), Q::GetLock { ino, lock })
            .await?
        {
            A::LockHeld(h) => Ok(h.map(|h| LockHolder {
                pid: if h.client == self.client { h.pid } else { 0 },
                ..h
            })),
            other => {
                tracing::warn!(?other, "kdfs: unexpected answer to a lock query");
                Err(libc::EIO)
            }
        }
    }

    /// Drop the locks of `owner` (flush: a process closed a descriptor of
    /// the file) or those taken through `fh` (release: the open file is
    /// gone), if this mount ever locked the file.
    pub async fn release(
        &self,
        cluster: &Cluster,
        ino: InodeId,
        owner: Option<u64>,
        fh: Option<u64>,
    ) -> Res<()> {
        if !self.has_locked(ino) {
            return Ok(());
        }
        self.held().release(&Filter {
            client: (ME, self.client),
            ino: Some(ino),
            owner,
            fh,
        });
        let q = Q::ReleaseLocks {
            client: self.client,
            ino: Some(ino),
            owner,
            fh,
        };
        cluster.call(inode_node(ino), q).await.map(|_| ())
    }

    /// Drop every lock of this mount (unmount), as far as the nodes answer.
    pub async fn release_all(&self, cluster: &Cluster) {
        *self.held() = Table::default();
        for node in self.nodes() {
            let q = Q::ReleaseLocks {
                client: self.client,
                ino: None,
                owner: None,
                fh: None,
            };
            let _ = cluster.call(node, q).await;
        }
    }

    /// Renew this mount's lease at every node it holds locks on, for ever;
    /// at once when the cluster marks a node failed (a mirrored file
    /// system: its mirror takes its files' locks up and waits for their
    /// holders to take them again there).
    pub async fn keep_leases(self: Arc<Self>, cluster: Arc<Cluster>) {
        let mut tick = tokio::time::interval(LEASE_RENEW);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = cluster.failures_changed() => {}
            }
            for node in self.nodes() {
                self.renew(&cluster, node).await;
            }
        }
    }

    /// Renew the lease at `node`; if its manager's epoch changed (its krgd
    /// started again, or its files' locks moved to or from its mirror),
    /// take this mount's locks on its files again.
    async fn renew(&self, cluster: &Cluster, node: NodeId) {
        let q = Q::LockLease {
            client: self.client,
        };
        let epoch = match cluster.call(node, q).await {
            Ok(A::LockEpoch(e)) => e,
            Ok(other) => {
                tracing::warn!(?other, "kdfs: unexpected answer to a lock lease");
                return;
            }
            Err(e) => {
                tracing::debug!(node, errno = e, "kdfs: lock lease not renewed");
                return;
            }
        };
        let before = self.epochs().insert(node, epoch);
        if before.is_some_and(|b| b != epoch) {
            self.reclaim(cluster, node).await;
        }
    }

    /// Take again every lock this mount holds on `node`'s files.
    async fn reclaim(&self, cluster: &Cluster, node: NodeId) {
        let mine: Vec<(InodeId, LockSpec, u64)> = self
            .held()
            .all()
            .filter(|(ino, _)| inode_node(*ino) == node)
            .map(|(ino, h)| (ino, h.spec(), h.fh))
            .collect();
        let (mut taken, mut lost) = (0, 0);
        for (ino, lock, fh) in mine {
            match cluster.call(node, Q::ReclaimLock { ino, fh, lock }).await {
                Ok(A::Done) => taken += 1,
                other => {
                    lost += 1;
                    tracing::warn!(ino, ?other, start = lock.start, end = lock.end,
                        "kdfs: a lock held before its files' lock manager changed could not be taken again");
                }
            }
        }
        tracing::info!(
            node,
            taken,
            lost,
            "kdfs: locks taken again after the lock manager of the node's files changed"
        );
    }
}
