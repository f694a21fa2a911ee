//! The mount's side of coherent kernel caching (see [`crate::callback`] for
//! the nodes' side): how long the kernel may keep each answer, which
//! requests are sent as a caching mount's, and one watcher per node that
//! carries out what the node says to forget.
//!
//! * The kernel keeps names for `entry_timeout` and attributes for
//!   `attr_timeout` — only of nodes this mount is registered with (its
//!   watcher there is up): those tell it of every change before the change
//!   returns. Anything from another node is given a TTL of 0.
//! * Attributes of a regular file are kept only by the node's sole mount
//!   (its first; see `super::local`), and not while it is open for writing
//!   through another node (`Volatile`): writes through FUSE passthrough and
//!   the sole mount's own `setattr`s never reach a krgd, so its size, mode
//!   and times may change without any node seeing it. The name of
//!   such a file is not kept either: its lookup at each path walk refreshes
//!   the size the kernel appends at (close-to-open, as without caching).
//! * A kernel request one of whose requests to a node went out before the
//!   mount's watcher there registered (as a non-caching mount's: that node
//!   records nothing of it) gives the kernel nothing to keep, even if the
//!   watcher registered meanwhile ([`in_request`]).
//! * A forgotten name bumps the kernel's dentry epoch (FUSE_NOTIFY_INC_EPOCH,
//!   Linux ≥ 6.16), which takes no lock: invalidating one entry takes its
//!   directory's lock, which this mount's own request in that directory
//!   may hold while it waits for the very node that waits for us.

mod kernel;
mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use krg_proto::kdfs::{inode_node, Attr, FileKind, InodeId, KdfsRequest};
use krg_proto::NodeId;

pub use kernel::Kernel;

use super::conn::Cluster;

/// One node's watcher, as the rest of the mount sees it.
#[derive(Default)]
struct NodeWatch {
    /// The watcher got an answer since its connection (re)opened: the node
    /// records this mount's grants and tells it of changes.
    registered: Arc<AtomicBool>,
}

pub struct Cache {
    /// This mount's client number (the one its locks carry too).
    pub client: u64,
    /// The node the mount runs on (regular files' attributes are cached
    /// only when they live here).
    local: NodeId,
    entry_ttl: Duration,
    attr_ttl: Duration,
    nodes: Mutex<HashMap<NodeId, NodeWatch>>,
    /// Local regular files open for writing through another node.
    volatile: Mutex<HashSet<InodeId>>,
    /// Inodes the kernel was given attributes of with a TTL (to forget
    /// when their node's watcher loses its connection).
    given: Mutex<HashSet<InodeId>>,
    kernel: OnceLock<Kernel>,
    /// The kernel does this node's file I/O itself (FUSE passthrough): it
    /// then appends at the local file's own end, whatever size it cached.
    /// Without it, an `O_APPEND` write goes at the cached size, which only a
    /// lookup refreshes: local files are then not cached either.
    passthrough: AtomicBool,
    /// This mount is its node's sole mount (the others change no regular
    /// file of the node without krgd); cleared when the store is converted
    /// to more copies (every change goes through krgd then).
    sole: AtomicBool,
    /// Unmounted: the watchers stop (see [`Cache::leave`]).
    leaving: AtomicBool,
    /// Directories this node's krgd lent to this mount (it recalls them
    /// through the watcher).
    pub loans: Arc<super::loans::Loans>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

tokio::task_local! {
    /// Set while a kernel request is served once one of its requests to a
    /// node went out as a non-caching mount's.
    static UNKNOWN_TO_A_NODE: std::cell::Cell<bool>;
}

/// Serve a kernel request with `f`: what its answers give the kernel to
/// keep depends on how its requests went out (see the module header).
pub fn in_request<F: std::future::Future>(f: F) -> impl std::future::Future<Output = F::Output> {
    UNKNOWN_TO_A_NODE.scope(std::cell::Cell::new(false), f)
}

/// Whether the kernel request being served sent a request no node records.
fn unknown_to_a_node() -> bool {
    UNKNOWN_TO_A_NODE.try_with(|c| c.get()).unwrap_or(false)
}

impl Cache {
    pub fn new(
        client: u64,
        local: NodeId,
        sole: bool,
        entry_ttl: Duration,
        attr_ttl: Duration,
    ) -> Self {
        let cap = crate::callback::MAX_TTL;
        Self {
            client,
            local,
            entry_ttl: entry_ttl.min(cap),
            attr_ttl: attr_ttl.min(cap),
            nodes: Mutex::default(),
            volatile: Mutex::default(),
            given: Mutex::default(),
            kernel: OnceLock::new(),
            passthrough: AtomicBool::new(false),
            sole: AtomicBool::new(sole),
            leaving: AtomicBool::new(false),
            loans: Arc::default(),
        }
    }

    /// The node's store is being converted to more copies: this mount no
    /// longer keeps regular files' attributes as the sole mount does.
    pub fn no_longer_sole(&self) {
        self.sole.store(false, Ordering::Release);
    }

    /// Caching is off (`entry_timeout=0,attr_timeout=0`): no watcher, no
    /// callbacks, every answer with TTL 0.
    pub fn off(&self) -> bool {
        self.entry_ttl.is_zero() && self.attr_ttl.is_zero()
    }

    /// The kernel accepted FUSE passthrough for this mount.
    pub fn enable_passthrough(&self) {
        self.passthrough.store(true, Ordering::Relaxed);
    }

    /// The session is up: the watchers may now act on the kernel.
    pub fn set_kernel(&self, k: Kernel) {
        let _ = self.kernel.set(k);
    }

    /// The root directory is another inode now: the kernel forgets inode
    /// 1's attributes and every name (looked up again in the new root).
    pub fn root_moved(&self) {
        if let Some(k) = self.kernel.get() {
            k.forget_attr_of_root();
            k.forget_all_entries();
        }
    }

    fn registered(&self, node: NodeId) -> bool {
        lock(&self.nodes)
            .get(&node)
            .is_some_and(|w| w.registered.load(Ordering::SeqCst))
    }

    /// Start the watcher of `node` if it is not running yet.
    pub fn watch(self: &Arc<Self>, cluster: &Arc<Cluster>, node: NodeId) {
        if self.off() {
            return;
        }
        let registered = {
            let mut nodes = lock(&self.nodes);
            if nodes.contains_key(&node) {
                return;
            }
            let w = nodes.entry(node).or_default();
            w.registered.clone()
        };
        tokio::spawn(watch::run(self.clone(), cluster.clone(), node, registered));
    }

    /// `req` as this mount sends it to `node`: as a caching mount's when the
    /// node keeps track of it, else as is.
    pub fn wrap(&self, node: NodeId, req: KdfsRequest) -> KdfsRequest {
        if self.off() || !self.registered(node) {
            let _ = UNKNOWN_TO_A_NODE.try_with(|c| c.set(true));
            return req;
        }
        KdfsRequest::As {
            client: self.client,
            req: Box::new(req),
        }
    }

    /// How long the kernel may keep the name in directory `dir` that
    /// names the inode of attributes `a`. A regular file whose attributes
    /// are not kept is looked up again at every path walk, as before
    /// caching: that lookup is what refreshes the size the kernel appends
    /// at and reads up to (close-to-open).
    pub fn entry_ttl(&self, dir: InodeId, a: &Attr) -> Duration {
        let kept = self.registered(inode_node(dir)) && !unknown_to_a_node();
        if !kept || (a.kind == FileKind::File && !self.keeps(a)) {
            return Duration::ZERO;
        }
        self.entry_ttl
    }

    /// Whether the kernel may keep the attributes `a` at all.
    fn keeps(&self, a: &Attr) -> bool {
        let node = inode_node(a.ino);
        self.registered(node)
            && (a.kind != FileKind::File
                || (node == self.local
                    && self.sole.load(Ordering::Acquire)
                    && self.passthrough.load(Ordering::Relaxed)
                    && !lock(&self.volatile).contains(&a.ino)))
    }

    /// How long the kernel may keep the attributes `a`.
    pub fn attr_ttl(&self, a: &Attr) -> Duration {
        if !self.keeps(a) || self.attr_ttl.is_zero() || unknown_to_a_node() {
            return Duration::ZERO;
        }
        lock(&self.given).insert(a.ino);
        self.attr_ttl
    }

    /// The kernel forgot inode `ino` (FUSE forget).
    pub fn forgotten(&self, ino: InodeId) {
        lock(&self.given).remove(&ino);
    }

    fn set_volatile(&self, ino: InodeId, on: bool) {
        let mut v = lock(&self.volatile);
        if on {
            v.insert(ino);
        } else {
            v.remove(&ino);
        }
    }

    /// The inodes of `node` the kernel may hold attributes of (taken out:
    /// they are about to be invalidated).
    fn take_given(&self, node: NodeId) -> Vec<InodeId> {
        let mut g = lock(&self.given);
        let of_node: Vec<InodeId> = g
            .iter()
            .copied()
            .filter(|i| inode_node(*i) == node)
            .collect();
        for i in &of_node {
            g.remove(i);
        }
        of_node
    }

    fn ttl_ms(&self) -> u64 {
        self.entry_ttl.max(self.attr_ttl).as_millis() as u64
    }
}
