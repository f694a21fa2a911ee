//! The pass that moves a leaving node's kDFS inodes to another member
//! (`handover.rs` says when it runs).
//!
//! 1. Pick the target: the online member serving this file system with
//!    the most free space. The root node refuses, leaving everything as it
//!    is, while a member is down (`root.rs`).
//! 2. Make the store read-only: every change is refused with EROFS, so
//!    what is copied is what stays.
//! 3. Hand over the units of other nodes' striped files kept here
//!    (`stripes.rs`).
//! 4. Walk the namespace from the root directory. Every entry naming an
//!    inode of this node: copy the inode to the target (once: hard links
//!    share the copy; a directory with its entries, its own inodes copied
//!    likewise, before anything names it; a striped file's other holders'
//!    units renamed to its copy, `stripes.rs`), then point the entry at the
//!    copy (`ReplaceEntry`, only if it still names the original). The walk
//!    is repeated until one finds no name of this node's inodes (a name a
//!    rename moved meanwhile is found by the next one), at most
//!    [`WALKS`] times. The root node then copies the root directory and
//!    tells every store where it is now (`root.rs`).
//! 5. Give the copies their originals' modes and times, sync every store
//!    written (`SyncStore`: one `syncfs` each), remove the originals (the
//!    holders of striped ones drop what is left under the old ids), and
//!    make the store writable again: it holds only what no name reached, and serves as a new
//!    node's would (the node is removed from the cluster right after; if
//!    it is added again, it takes part as an empty node).
//!
//! A pass that fails after step 2 is undone (`undo.rs`): the names go back
//! to the originals, the layouts to this node, holders' units to their
//! files' old ids, the copies are removed, the
//! store is writable again. Files: this one (the pass, the requests, the
//! walk), `copy.rs` (one inode), `stripes.rs` (stripe units), `root.rs`
//! (the root directory), `undo.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use kdfs::store::Store;
use krg_proto::cluster::NodeState;
use krg_proto::kdfs::{
    inode_node, Attr, DirEntry, FileKind, InodeId, KdfsRequest as Q, KdfsResponse as A,
};
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::NodeId;

use super::KdfsService;

mod copy;
mod root;
mod stripes;
mod undo;

/// How long one request to a member may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes of file data per request.
const CHUNK: u32 = 1 << 20;
/// Entries per directory-listing request.
const LIST_BATCH: u32 = 1024;
/// Walks of the namespace before giving up on names that keep moving.
const WALKS: usize = 3;

/// A request that failed: its errno when the store answered one.
struct Failed {
    errno: Option<i32>,
    what: String,
}

impl Failed {
    fn new(what: impl Into<String>) -> Self {
        Self {
            errno: None,
            what: what.into(),
        }
    }
}

type Res<T> = Result<T, Failed>;

/// Run the pass, and say in the log what it did.
pub(super) async fn hand_over(svc: &Arc<KdfsService>, store: Arc<Store>) {
    let started = Instant::now();
    let dir = store.dir().display().to_string();
    match drain(svc, store).await {
        Ok(d) => tracing::info!(
            to = d.to,
            inodes = d.copies.len(),
            bytes = d.bytes,
            secs = started.elapsed().as_secs_f64(),
            %dir,
            "kdfs: handed over (the originals are removed from this node's store)"
        ),
        Err(e) => tracing::warn!(%dir, why = %e.what,
            "kdfs: not handed over: its files stay here, unavailable to the others once it is gone"),
    }
}

async fn drain(svc: &Arc<KdfsService>, store: Arc<Store>) -> Res<Drain> {
    let me = svc.ctx.node_id();
    let sb = store.superblock();
    let mut d = Drain {
        svc: svc.clone(),
        store,
        me,
        to: 0,
        serving: Vec::new(),
        copies: HashMap::new(),
        stamps: Vec::new(),
        written: HashSet::new(),
        repointed: Vec::new(),
        moved_stripes: Vec::new(),
        renamed: Default::default(),
        root_moved: Vec::new(),
        old_root: None,
        bytes: 0,
    };
    if sb.root_node == me {
        d.root_can_move()?;
    }
    d.serving = d.serving_nodes(sb.fs_id).await;
    d.to = *d
        .serving
        .first()
        .ok_or_else(|| Failed::new("no online member serves this kDFS to take its files"))?;
    svc.draining.store(true, Ordering::Release);
    // The sole mount's loans end: the hand-over reads every directory.
    svc.callbacks.recall_all(None).await;
    tracing::info!(
        to = d.to,
        "kdfs: leaving: the store is read-only while its inodes are copied"
    );
    if let Some(hold) = kdfs::store::crash::pause("handover-read-only") {
        tokio::time::sleep(hold).await;
    }
    let moved = d.move_all(sb.root_node).await;
    if let Err(e) = &moved {
        let failed = d.undo().await;
        tracing::warn!(why = %e.what, undo_failures = failed,
            "kdfs: the hand-over failed: names pointed back at the originals, copies removed");
    } else {
        d.discard_originals().await;
    }
    svc.draining.store(false, Ordering::Release);
    moved.map(|()| d)
}

fn unexpected(node: NodeId, a: &A) -> Failed {
    Failed::new(format!("node {node}: unexpected answer {a:?}"))
}

/// A name pointed at a copy.
struct Repointed {
    dir: InodeId,
    name: Vec<u8>,
    original: InodeId,
    copy: InodeId,
    kind: FileKind,
}

/// The state of one pass.
struct Drain {
    svc: Arc<KdfsService>,
    store: Arc<Store>,
    me: NodeId,
    /// Where the copies go.
    to: NodeId,
    /// The other online members serving this file system, the most free
    /// space first (`to` is the first).
    serving: Vec<NodeId>,
    /// Original → copy.
    copies: HashMap<InodeId, InodeId>,
    /// Directory copies and their originals' attributes, given at the end
    /// (adding entries changes a directory's times).
    stamps: Vec<(InodeId, Attr)>,
    /// The nodes whose directories had names re-pointed (their stores are
    /// synced at the end, with the target's).
    written: HashSet<NodeId>,
    /// Names pointed at copies, in order (to point them back on failure).
    repointed: Vec<Repointed>,
    /// Striped files whose units here went to another holder.
    moved_stripes: Vec<stripes::MovedStripe>,
    /// Other holders' units of striped files owned here, renamed to their
    /// copies' ids (made by copies running side by side).
    renamed: std::sync::Mutex<Vec<stripes::RenamedStripe>>,
    /// The stores told that the root moved, in order (this node being the
    /// root node), and the root directory it had.
    root_moved: Vec<NodeId>,
    old_root: Option<InodeId>,
    /// File data copied.
    bytes: u64,
}

impl Drain {
    /// Walk until no name of this node's inodes is left, then finish.
    async fn move_all(&mut self, root_node: NodeId) -> Res<()> {
        self.move_stripes().await?;
        let root = match self.call(root_node, Q::Root).await? {
            A::Root(r) => r,
            other => return Err(unexpected(root_node, &other)),
        };
        for _ in 0..WALKS {
            if self.walk(root).await? == 0 {
                if root_node != self.me {
                    return self.finish().await;
                }
                self.old_root = Some(root);
                let new_root = self.copy_root(root).await?;
                self.finish().await?;
                return self.switch_root(new_root).await;
            }
        }
        Err(Failed::new(format!(
            "names of its inodes were still being moved after {WALKS} walks"
        )))
    }

    /// `req` to `node`'s store (this node's: in place).
    async fn call(&self, node: NodeId, req: Q) -> Res<A> {
        let answer = if node == self.me && super::is_quick(&req) {
            // a few local syscalls: not worth a thread hand-off
            self.store.handle(req)
        } else if node == self.me {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.handle(req))
                .await
                .map_err(|e| Failed::new(e.to_string()))?
        } else {
            match self
                .svc
                .ctx
                .peers
                .call(node, PeerRequest::Kdfs(req), CALL_TIMEOUT)
                .await
            {
                Ok(PeerResponse::Kdfs(a)) => a,
                Ok(PeerResponse::Error(e)) => {
                    return Err(Failed::new(format!("node {node}: {}", e.message)))
                }
                Ok(other) => return Err(Failed::new(format!("node {node}: {other:?}"))),
                Err(e) => return Err(Failed::new(format!("node {node}: {e}"))),
            }
        };
        match answer {
            A::Errno(e) => Err(Failed {
                errno: Some(e),
                what: format!("node {node}: {}", std::io::Error::from_raw_os_error(e)),
            }),
            a => Ok(a),
        }
    }

    /// The other online members serving file system `fs_id`, the most
    /// free space first.
    async fn serving_nodes(&self, fs_id: u128) -> Vec<NodeId> {
        let view = self.svc.ctx.view();
        let mut found: Vec<(u64, NodeId)> = Vec::new();
        for n in view.members().filter(|n| n.state == NodeState::Online) {
            if n.id == self.me {
                continue;
            }
            if !self.serves(n.id, fs_id).await {
                continue;
            }
            if let Ok(A::Statfs { bavail, .. }) = self.call(n.id, Q::Statfs).await {
                found.push((bavail, n.id));
            }
        }
        found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        found.into_iter().map(|(_, n)| n).collect()
    }

    /// Whether `node`'s krgd serves file system `fs_id`.
    async fn serves(&self, node: NodeId, fs_id: u128) -> bool {
        matches!(
            self.call(node, Q::Hello).await,
            Ok(A::Hello { fs_id: Some(id), .. }) if id == fs_id
        )
    }

    /// The entries of directory `dir`, from its owner.
    async fn list(&self, dir: InodeId) -> Res<Vec<DirEntry>> {
        let node = inode_node(dir);
        let fh = match self.call(node, Q::OpenDir { ino: dir }).await? {
            A::Handle(fh) => fh,
            other => return Err(unexpected(node, &other)),
        };
        let mut all = Vec::new();
        let listed = loop {
            let req = Q::ReadDir {
                fh,
                offset: all.len() as u64,
                max: LIST_BATCH,
            };
            match self.call(node, req).await {
                Ok(A::Entries(v)) if v.is_empty() => break Ok(()),
                Ok(A::Entries(v)) => all.extend(v),
                Ok(other) => break Err(unexpected(node, &other)),
                Err(e) => break Err(e),
            }
        };
        let _ = self.call(node, Q::ReleaseDir { fh }).await;
        listed.map(|()| all)
    }

    /// One walk of the namespace from `root`: every name of this node's
    /// inodes is pointed at their copy. How many such names it found.
    async fn walk(&mut self, root: InodeId) -> Res<usize> {
        let mut stack = vec![root];
        let mut seen = HashSet::new();
        let mut found = 0;
        while let Some(dir) = stack.pop() {
            if !seen.insert(dir) {
                continue;
            }
            let (mine, others): (Vec<DirEntry>, Vec<DirEntry>) = self
                .list(dir)
                .await?
                .into_iter()
                .partition(|e| inode_node(e.ino) == self.me);
            stack.extend(
                others
                    .iter()
                    .filter(|e| e.kind == FileKind::Dir)
                    .map(|e| e.ino),
            );
            found += mine.len();
            let copies = self.copies_of(&mine).await?;
            let moves: Vec<(DirEntry, InodeId)> = mine.into_iter().zip(copies).collect();
            for batch in moves.chunks(copy::PARALLEL) {
                let asks = batch.iter().map(|(e, copy)| {
                    let req = Q::ReplaceEntry {
                        dir,
                        name: e.name.clone(),
                        old: e.ino,
                        new: *copy,
                        kind: e.kind,
                    };
                    self.call(inode_node(dir), req)
                });
                let answers = join_all(asks).await;
                // Every answer recorded before an error is returned: the
                // undo must know each name that was pointed at a copy.
                let mut failed = None;
                for ((e, copy), answer) in batch.iter().zip(answers) {
                    match self.repointed(dir, e, *copy, answer) {
                        Ok(true) if e.kind == FileKind::Dir => stack.push(*copy),
                        Ok(_) => {}
                        Err(f) => {
                            failed.get_or_insert(f);
                        }
                    }
                }
                if let Some(f) = failed {
                    return Err(f);
                }
                if kdfs::store::crash::fails("handover-repointed") {
                    return Err(Failed::new("failure point handover-repointed"));
                }
                if let Some(hold) = kdfs::store::crash::pause("handover-repointed") {
                    tokio::time::sleep(hold).await;
                }
            }
        }
        Ok(found)
    }

    /// Record the answer to pointing entry `e` of `dir` at `copy`. False
    /// when it no longer named the original (renamed meanwhile: the next
    /// walk finds it).
    fn repointed(
        &mut self,
        dir: InodeId,
        e: &DirEntry,
        copy: InodeId,
        answer: Res<A>,
    ) -> Res<bool> {
        match answer {
            Ok(_) => {
                self.written.insert(inode_node(dir));
                self.repointed.push(Repointed {
                    dir,
                    name: e.name.clone(),
                    original: e.ino,
                    copy,
                    kind: e.kind,
                });
                Ok(true)
            }
            Err(f) if f.errno == Some(libc::ENOENT) => Ok(false),
            Err(f) => Err(f),
        }
    }

    /// Remove the originals, now that every name names a copy (synced):
    /// the store keeps only what no name reached, and serves again as a
    /// new node's would. A removal that fails leaves that object (logged).
    async fn discard_originals(&self) {
        let store = self.store.clone();
        let originals: Vec<InodeId> = self.copies.keys().copied().collect();
        let stripes = self.moved_stripe_inos();
        let done = tokio::task::spawn_blocking(move || {
            for ino in originals {
                if let Err(e) = store.discard(ino) {
                    tracing::warn!(ino = %format!("{ino:x}"), error = %e,
                        "kdfs: could not remove a handed-over original (fsck.kdfs finds it)");
                }
            }
            for ino in stripes {
                if let Err(e) = store.discard_moved_stripe(ino) {
                    tracing::warn!(ino = %format!("{ino:x}"), error = %e,
                        "kdfs: could not remove handed-over stripe units (fsck.kdfs finds them)");
                }
            }
        });
        if let Err(e) = done.await {
            tracing::warn!(error = %e, "kdfs: removing the handed-over originals failed");
        }
        // The striped files removed: their old holders drop what is left
        // under the old ids (the copy the target merged).
        self.svc.drop_gone_stripes(&self.store);
    }

    /// The copies' modes and times, then every store written synced.
    async fn finish(&mut self) -> Res<()> {
        for (copy, attr) in std::mem::take(&mut self.stamps) {
            let set = copy::stamp(&attr);
            self.call(self.to, Q::SetAttr { ino: copy, set }).await?;
        }
        // One syncfs per store written (the copies' data and entries, the
        // re-pointed names), rather than an fsync per file: the originals
        // are removed only after this.
        let mut stores = std::mem::take(&mut self.written);
        stores.insert(self.to);
        stores.extend(self.renaming_holders());
        for node in stores {
            self.call(node, Q::SyncStore).await?;
        }
        Ok(())
    }
}
