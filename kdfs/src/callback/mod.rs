//! Callbacks to caching mounts: a krgd remembers which mounts' kernels hold
//! names and attributes it served, and tells them, before it answers a
//! change, what they must forget — as NFSv4 recalls delegations or
//! GlusterFS's upcalls feed md-cache, but waited for.
//!
//! * A mount registers with `Watch` and keeps one `Watch` waiting at every
//!   node it caches from (long poll): the answer carries what to forget, the
//!   next `Watch` acknowledges it.
//! * Requests a caching mount sends are wrapped in `As { client }`: what the
//!   answer grants ([`changes::grants`]) is recorded per directory and per
//!   inode, with the time the mount's kernel keeps it (its TTL); a change
//!   the request makes is not sent back to it (its kernel saw the change).
//! * This node's own mounts serve lookups of this node's store in place, so
//!   they hold anything of it: every change is sent to them (unless they
//!   made it).
//! * A change ([`changes::changes`]) is queued to every holder, and the
//!   answer to the change waits for their acknowledgements — or, for a mount
//!   that does not answer, until what its kernel was given has expired. So
//!   when a change returns, no kernel still holds what it changed.
//! * Regular files open for writing through another node are *volatile*:
//!   this node's mounts stop caching their attributes until they close.
//! * A directory may be lent to the node's sole mount, which then makes
//!   files there without krgd until it is recalled ([`loans`]).

pub mod changes;
pub mod loans;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use krg_proto::kdfs::{InodeId, Inval, KdfsRequest as Q, KdfsResponse as A};
use krg_proto::NodeId;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use changes::{Grant, Scope};

/// How long a `Watch` waits for something to send before answering empty.
pub const POLL: Duration = Duration::from_secs(1);
/// A mount not heard of for this long is taken for gone: no more waiting for
/// its acknowledgements (a remote one's grants are still waited out).
pub const GONE: Duration = Duration::from_secs(3);
/// Longest time a mount may keep names or attributes (its TTL is capped to
/// it); also the TTL assumed for a mount not registered here.
pub const MAX_TTL: Duration = Duration::from_secs(60);
/// Added to a grant's lifetime: the answer travels before the kernel's
/// clock starts (the client shortens its TTL by the time it waited, too).
const SLACK: Duration = Duration::from_millis(50);

struct Client {
    node: NodeId,
    ttl: Duration,
    queue: Vec<Inval>,
    /// Sequence number of the last item queued.
    seq: u64,
    acked: watch::Sender<u64>,
    wake: Arc<Notify>,
    heard: Instant,
}

#[derive(Default)]
struct State {
    clients: HashMap<u64, Client>,
    /// Directory → mounts of other nodes holding names in it, until when.
    entries: HashMap<InodeId, HashMap<u64, Instant>>,
    /// Inode → mounts of other nodes holding its attributes, until when.
    attrs: HashMap<InodeId, HashMap<u64, Instant>>,
    /// Regular files open for writing through other nodes: their handles.
    remote_writes: HashMap<InodeId, HashSet<u64>>,
    /// Grants recorded since the last sweep of expired ones.
    since_sweep: usize,
    /// Directories lent to a mount of this node.
    loans: HashMap<InodeId, loans::Loan>,
    /// Inodes that requests being served touch, and whose requests
    /// (`None`: a peer's, or a mount's that does not cache).
    touching: HashMap<InodeId, Vec<Option<u64>>>,
}

/// Whether serving `req` may grant or change something callbacks track
/// (reads, writes, syncs and listings do not: the request need not be kept).
pub fn concerns(req: &Q) -> bool {
    !matches!(
        req,
        Q::Read { .. }
            | Q::Write { .. }
            | Q::Fsync { .. }
            | Q::FsyncDir { .. }
            | Q::SyncStore
            | Q::OpenDir { .. }
            | Q::ReadDir { .. }
            | Q::ReleaseDir { .. }
            | Q::Statfs
            | Q::Hello
            | Q::Root
            | Q::Readlink { .. }
            | Q::IsEmptyDir { .. }
            | Q::GetXattr { .. }
            | Q::ListXattr { .. }
            | Q::GetStripe { .. }
            | Q::GetReplicas { .. }
            | Q::Conversion { .. }
            | Q::StripeRead { .. }
            | Q::StripeWrite { .. }
            | Q::StripeSync { .. }
            | Q::StripeTruncate { .. }
            | Q::StripeDrop { .. }
            | Q::ReplaceLayout { .. }
            | Q::StripeRename { .. }
            | Q::SetRoot { .. }
            | Q::StripeAdopt { .. }
            | Q::Lend { .. }
    )
}

/// The callback state of one krgd's store.
pub struct Callbacks {
    me: NodeId,
    state: Mutex<State>,
}

/// One acknowledgement to wait for.
struct Wait {
    rx: Option<watch::Receiver<u64>>,
    seq: u64,
    until: Instant,
}

impl Callbacks {
    pub fn new(me: NodeId) -> Self {
        Self {
            me,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A `Watch` of mount `client` on `node`: register it, take its
    /// acknowledgement, and answer what it must forget (waiting up to
    /// [`POLL`] for something).
    pub async fn watch(&self, node: NodeId, client: u64, acked: u64, ttl_ms: u64) -> A {
        let ttl = Duration::from_millis(ttl_ms).min(MAX_TTL);
        let wake = {
            let mut st = self.state();
            let now = Instant::now();
            let fresh = !st.clients.contains_key(&client);
            let c = st.clients.entry(client).or_insert_with(|| Client {
                node,
                ttl,
                queue: Vec::new(),
                seq: 0,
                acked: watch::channel(0).0,
                wake: Arc::new(Notify::new()),
                heard: now,
            });
            c.heard = now;
            c.ttl = ttl;
            c.acked.send_if_modified(|a| {
                let newer = acked > *a && acked <= c.seq;
                if newer {
                    *a = acked;
                }
                newer
            });
            if fresh {
                tracing::debug!(client = %format!("{client:016x}"), node, "kdfs: a caching mount registered");
                // a second mount of this node: the first stops keeping
                // regular files' attributes (the second writes them in
                // place, unseen), and lends nothing any more
                let other_here = node == self.me
                    && st.clients.iter().any(|(id, c)| {
                        *id != client && c.node == self.me && now.duration_since(c.heard) <= GONE
                    });
                let waits = match other_here {
                    true => self.deliver(&mut st, Some(client), &[(Inval::NotSole, Scope::Local)]),
                    false => Vec::new(),
                };
                Err((other_here && !st.loans.is_empty(), waits))
            } else if !c.queue.is_empty() {
                return Self::take(c);
            } else {
                Ok(c.wake.clone())
            }
        };
        let wake = match wake {
            Ok(wake) => wake,
            Err((recall, waits)) => {
                // A second mount of this node reads the store in place and
                // caches what it reads: nothing of the store is lent then.
                if recall {
                    self.recall_all(Some(client)).await;
                }
                // (answered once the first mount stopped keeping
                // attributes: the second then writes nothing it would keep)
                await_acks(waits).await;
                return A::Invalidate {
                    seq: 0,
                    items: Vec::new(),
                };
            }
        };
        let _ = tokio::time::timeout(POLL, wake.notified()).await;
        let mut st = self.state();
        match st.clients.get_mut(&client) {
            Some(c) => {
                c.heard = Instant::now();
                Self::take(c)
            }
            None => A::Invalidate {
                seq: 0,
                items: Vec::new(),
            },
        }
    }

    /// Mount `client` unmounted: forget it and what it was given, and let
    /// every change waiting for its acknowledgement go on.
    pub fn unwatch(&self, client: u64) {
        let mut guard = self.state();
        let st = &mut *guard;
        if let Some(c) = st.clients.remove(&client) {
            c.acked.send_replace(u64::MAX);
            c.wake.notify_one();
        }
        loans::drop_loans(st, client);
        for m in [&mut st.entries, &mut st.attrs] {
            m.retain(|_, holders| {
                holders.remove(&client);
                !holders.is_empty()
            });
        }
    }

    fn take(c: &mut Client) -> A {
        A::Invalidate {
            seq: c.seq,
            items: std::mem::take(&mut c.queue),
        }
    }

    /// Record what the answer `resp` to `req` of mount `client` (on `node`)
    /// lets its kernel keep. This node's own mounts hold everything anyway.
    pub fn granted(&self, client: u64, node: NodeId, req: &Q, resp: &A) {
        if node == self.me {
            return;
        }
        let grants = changes::grants(req, resp);
        if grants.is_empty() {
            return;
        }
        let mut st = self.state();
        let ttl = st.clients.get(&client).map_or(MAX_TTL, |c| c.ttl);
        let until = Instant::now() + ttl + SLACK;
        for g in grants {
            let map = match g {
                Grant::Entries(dir) => st.entries.entry(dir).or_default(),
                Grant::Attr(ino) => st.attrs.entry(ino).or_default(),
            };
            map.insert(client, until);
        }
        st.since_sweep += 1;
        if st.since_sweep >= 4096 {
            st.since_sweep = 0;
            let now = Instant::now();
            let st = &mut *st;
            for m in [&mut st.entries, &mut st.attrs] {
                m.retain(|_, holders| {
                    holders.retain(|_, t| *t > now);
                    !holders.is_empty()
                });
            }
        }
    }

    /// After `req` (from mount `client` on `node`, if a caching mount sent
    /// it) was served with `resp`: tell every other mount that holds what it
    /// changed, and return once they all acknowledged (or their grants
    /// expired). `moved`: the inode a rename moved.
    pub async fn changed(
        &self,
        client: Option<u64>,
        node: NodeId,
        req: &Q,
        resp: &A,
        moved: Option<InodeId>,
    ) {
        if let (Q::RemoveDir { ino }, A::Done) = (req, resp) {
            self.state().loans.remove(ino);
        }
        let mut items = changes::changes(req, resp, moved);
        let mut advisory = Vec::new();
        self.track_writes(node, req, resp, &mut items, &mut advisory);
        if items.is_empty() && advisory.is_empty() {
            return;
        }
        let waits = {
            let mut st = self.state();
            let waits = self.deliver(&mut st, client, &items);
            // Stable needs no acknowledgement: caching again is only faster.
            let _ = self.deliver(&mut st, client, &advisory);
            waits
        };
        await_acks(waits).await;
    }

    /// Opens and releases for writing through other nodes: a file's first
    /// such handle makes it volatile for this node's mounts, its last one
    /// stable again.
    fn track_writes(
        &self,
        node: NodeId,
        req: &Q,
        resp: &A,
        items: &mut Vec<(Inval, Scope)>,
        advisory: &mut Vec<(Inval, Scope)>,
    ) {
        let mut st = self.state();
        match (req, resp) {
            (Q::Open { ino, write: true }, A::Handle(fh) | A::StripedHandle { fh, .. })
                if node != self.me =>
            {
                let fhs = st.remote_writes.entry(*ino).or_default();
                if fhs.is_empty() {
                    items.push((Inval::Volatile(*ino), Scope::Local));
                }
                fhs.insert(*fh);
            }
            (Q::Release { ino, fh }, _) => Self::released(&mut st, *ino, *fh, advisory),
            (Q::ReleaseMany { handles }, _) => {
                for (ino, fh) in handles {
                    Self::released(&mut st, *ino, *fh, advisory);
                }
            }
            _ => {}
        }
    }

    /// Handle `fh` of `ino` closed: the last one open for writing through
    /// another node makes the file stable again.
    fn released(st: &mut State, ino: InodeId, fh: u64, advisory: &mut Vec<(Inval, Scope)>) {
        if let Some(fhs) = st.remote_writes.get_mut(&ino) {
            if fhs.remove(&fh) && fhs.is_empty() {
                st.remote_writes.remove(&ino);
                advisory.push((Inval::Stable(ino), Scope::Local));
            }
        }
    }

    /// Queue `items` to whoever must hear of them; what to wait for.
    fn deliver(&self, st: &mut State, from: Option<u64>, items: &[(Inval, Scope)]) -> Vec<Wait> {
        let now = Instant::now();
        // client → latest grant expiry among the items it holds.
        let mut targets: HashMap<u64, (Instant, Vec<Inval>)> = HashMap::new();
        let locals: Vec<(u64, Duration)> = st
            .clients
            .iter()
            .filter(|(_, c)| c.node == self.me)
            .map(|(id, c)| (*id, c.ttl))
            .collect();
        for (item, scope) in items {
            let mut add = |id: u64, until: Instant| {
                if Some(id) == from || until <= now {
                    return;
                }
                let t = targets.entry(id).or_insert((until, Vec::new()));
                t.0 = t.0.max(until);
                if !t.1.contains(item) {
                    t.1.push(item.clone());
                }
            };
            for (id, ttl) in &locals {
                add(*id, now + *ttl + SLACK);
            }
            if *scope == Scope::Holders {
                let holders = match item {
                    Inval::Entry { dir, .. } => st.entries.get(dir),
                    Inval::Attr(ino) => st.attrs.get(ino),
                    Inval::Volatile(_) | Inval::Stable(_) | Inval::Recall(_) | Inval::NotSole => {
                        None
                    }
                };
                for (id, until) in holders.into_iter().flatten() {
                    add(*id, *until);
                }
            }
        }
        let mut waits = Vec::new();
        for (id, (until, list)) in targets {
            let until = until.min(now + MAX_TTL + SLACK);
            match st.clients.get_mut(&id) {
                Some(c) if now.duration_since(c.heard) <= GONE => {
                    c.queue.extend(list);
                    c.seq += 1;
                    c.wake.notify_one();
                    waits.push(Wait {
                        rx: Some(c.acked.subscribe()),
                        seq: c.seq,
                        until,
                    });
                }
                Some(c) => {
                    // Silent for too long: gone. A mount of this node that
                    // died left no kernel cache (its mount is dead with it);
                    // another node's may be cut off: wait its grants out.
                    tracing::warn!(client = %format!("{id:016x}"), node = c.node,
                        "kdfs: a caching mount stopped answering; forgetting it");
                    let remote = c.node != self.me;
                    st.clients.remove(&id);
                    loans::drop_loans(st, id);
                    if remote {
                        waits.push(Wait {
                            rx: None,
                            seq: 0,
                            until,
                        });
                    }
                }
                None => waits.push(Wait {
                    rx: None,
                    seq: 0,
                    until,
                }),
            }
        }
        waits
    }
}

#[cfg(test)]
mod tests;

/// Wait for each mount told something to acknowledge it (or for what it
/// held to expire, for one that does not answer).
async fn await_acks(waits: Vec<Wait>) {
    for w in waits {
        match w.rx {
            Some(mut rx) => {
                let seq = w.seq;
                let _ = tokio::time::timeout_at(w.until, rx.wait_for(|a| *a >= seq)).await;
            }
            None => tokio::time::sleep_until(w.until).await,
        }
    }
}
