//! The pass that moves a leaving node's kDFS inodes to another member
//! (`handover.rs` says when it runs).
//!
//! 1. Refuse, leaving everything as it is, when this node is the file
//!    system's root node (every superblock names it) or keeps striped
//!    data (a layout never changes); pick the target: the online member
//!    serving this file system with the most free space.
//! 2. Make the store read-only: every change is refused with EROFS, so
//!    what is copied is what stays.
//! 3. Walk the namespace from the root directory. Every entry naming an
//!    inode of this node: copy the inode to the target (once: hard links
//!    share the copy; a directory with its entries, its own inodes copied
//!    likewise, before anything names it), then point the entry at the
//!    copy (`ReplaceEntry`, only if it still names the original). The walk
//!    is repeated until one finds no name of this node's inodes (a name a
//!    rename moved meanwhile is found by the next one), at most
//!    [`WALKS`] times.
//! 4. Give the copies their originals' modes and times, sync the changed
//!    directories, remove the originals, and make the store writable
//!    again: it holds only what no name reached, and serves as a new
//!    node's would (the node is removed from the cluster right after; if
//!    it is added again, it takes part as an empty node).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kdfs::store::Store;
use krg_proto::cluster::NodeState;
use krg_proto::kdfs::{
    inode_node, Attr, DirEntry, FileKind, InodeId, KdfsRequest as Q, KdfsResponse as A, NewInode,
    SetAttr, SetTime,
};
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::NodeId;

use super::KdfsService;

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
    let sb = store.superblock().clone();
    if sb.root_node == me {
        return Err(Failed::new(
            "this is the root node of the file system (its root directory cannot move)",
        ));
    }
    let st = store.clone();
    let striped = tokio::task::spawn_blocking(move || st.striped_data())
        .await
        .map_err(|e| Failed::new(e.to_string()))?
        .map_err(|e| Failed::new(e.to_string()))?;
    if let Some(why) = striped {
        return Err(Failed::new(format!("{why}; striped files cannot move")));
    }
    let mut d = Drain {
        svc: svc.clone(),
        store,
        me,
        to: 0,
        copies: HashMap::new(),
        stamps: Vec::new(),
        changed: HashSet::new(),
        bytes: 0,
    };
    d.to = d.pick_target(sb.fs_id).await?;
    svc.draining.store(true, Ordering::Release);
    tracing::info!(
        to = d.to,
        "kdfs: leaving: the store is read-only while its inodes are copied"
    );
    let root = match d.call(sb.root_node, Q::Root).await? {
        A::Root(r) => r,
        other => return Err(unexpected(sb.root_node, &other)),
    };
    for _ in 0..WALKS {
        if d.walk(root).await? == 0 {
            d.finish().await?;
            d.discard_originals().await;
            svc.draining.store(false, Ordering::Release);
            return Ok(d);
        }
    }
    Err(Failed::new(format!(
        "names of its inodes were still being moved after {WALKS} walks"
    )))
}

fn unexpected(node: NodeId, a: &A) -> Failed {
    Failed::new(format!("node {node}: unexpected answer {a:?}"))
}

/// The state of one pass.
struct Drain {
    svc: Arc<KdfsService>,
    store: Arc<Store>,
    me: NodeId,
    /// Where the copies go.
    to: NodeId,
    /// Original → copy.
    copies: HashMap<InodeId, InodeId>,
    /// Copies and their originals' attributes, given at the end (adding
    /// entries changes a directory's times).
    stamps: Vec<(InodeId, Attr)>,
    /// Directories whose entries changed, synced at the end.
    changed: HashSet<InodeId>,
    /// File data copied.
    bytes: u64,
}

impl Drain {
    /// `req` to `node`'s store (this node's: in place).
    async fn call(&self, node: NodeId, req: Q) -> Res<A> {
        let answer = if node == self.me {
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

    /// The online member serving file system `fs_id` with the most free
    /// space.
    async fn pick_target(&self, fs_id: u128) -> Res<NodeId> {
        let view = self.svc.ctx.view();
        let mut best: Option<(u64, NodeId)> = None;
        for n in view.members().filter(|n| n.state == NodeState::Online) {
            if n.id == self.me {
                continue;
            }
            match self.call(n.id, Q::Hello).await {
                Ok(A::Hello {
                    fs_id: Some(id), ..
                }) if id == fs_id => {}
                _ => continue,
            }
            if let Ok(A::Statfs { bavail, .. }) = self.call(n.id, Q::Statfs).await {
                if best.is_none_or(|(b, _)| bavail > b) {
                    best = Some((bavail, n.id));
                }
            }
        }
        best.map(|(_, n)| n)
            .ok_or_else(|| Failed::new("no online member serves this kDFS to take its files"))
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
            for e in self.list(dir).await? {
                if inode_node(e.ino) != self.me {
                    if e.kind == FileKind::Dir {
                        stack.push(e.ino);
                    }
                    continue;
                }
                found += 1;
                let copy = self.copy(e.ino, e.kind).await?;
                if self.repoint(dir, &e, copy).await? && e.kind == FileKind::Dir {
                    stack.push(copy);
                }
            }
        }
        Ok(found)
    }

    /// Point entry `e` of `dir` at `copy`. False when it no longer names
    /// the original (renamed meanwhile: the next walk finds it).
    async fn repoint(&mut self, dir: InodeId, e: &DirEntry, copy: InodeId) -> Res<bool> {
        let req = Q::ReplaceEntry {
            dir,
            name: e.name.clone(),
            old: e.ino,
            new: copy,
            kind: e.kind,
        };
        match self.call(inode_node(dir), req).await {
            Ok(_) => {
                self.changed.insert(dir);
                Ok(true)
            }
            Err(f) if f.errno == Some(libc::ENOENT) => Ok(false),
            Err(f) => Err(f),
        }
    }

    /// The copy of this node's inode `old` on the target, made if needed
    /// (a directory with its entries).
    fn copy(
        &mut self,
        old: InodeId,
        kind: FileKind,
    ) -> Pin<Box<dyn Future<Output = Res<InodeId>> + Send + '_>> {
        Box::pin(async move {
            if let Some(copy) = self.copies.get(&old) {
                return Ok(*copy);
            }
            let attr = match self.call(self.me, Q::GetAttr { ino: old }).await? {
                A::Attr(a) if a.kind == kind => a,
                A::Attr(a) => {
                    return Err(Failed::new(format!(
                        "inode {old:x} is a {:?}, its entry says {kind:?}",
                        a.kind
                    )))
                }
                other => return Err(unexpected(self.me, &other)),
            };
            let target = match kind {
                FileKind::Symlink => match self.call(self.me, Q::Readlink { ino: old }).await? {
                    A::Target(t) => Some(t),
                    other => return Err(unexpected(self.me, &other)),
                },
                _ => None,
            };
            let new = NewInode {
                kind,
                perm: attr.perm,
                uid: attr.uid,
                gid: attr.gid,
                rdev: attr.rdev,
                target,
            };
            let open = (kind == FileKind::File).then_some(true);
            let (copy, fh) = match self.call(self.to, Q::MakeInode { new, open }).await? {
                A::Created { attr, fh, .. } => (attr.ino, fh),
                other => return Err(unexpected(self.to, &other)),
            };
            self.copies.insert(old, copy);
            match kind {
                FileKind::File => self.copy_data(old, copy, fh, attr.size).await?,
                FileKind::Dir => self.copy_entries(old, copy).await?,
                _ => {}
            }
            if kind != FileKind::Dir {
                for _ in 1..attr.nlink {
                    self.call(self.to, Q::IncLink { ino: copy }).await?;
                }
            }
            self.copy_xattrs(old, copy).await?;
            self.stamps.push((copy, attr));
            Ok(copy)
        })
    }

    /// The data of regular file `old` into `copy`, open as `fh` there.
    async fn copy_data(
        &mut self,
        old: InodeId,
        copy: InodeId,
        fh: Option<u64>,
        size: u64,
    ) -> Res<()> {
        let fh = fh.ok_or_else(|| Failed::new("the copy was not opened"))?;
        let copied = match self
            .call(
                self.me,
                Q::Open {
                    ino: old,
                    write: false,
                },
            )
            .await
        {
            Ok(A::Handle(src)) => {
                let r = self.copy_bytes(old, src, copy, fh, size).await;
                let _ = self.call(self.me, Q::Release { ino: old, fh: src }).await;
                r
            }
            Ok(other) => Err(unexpected(self.me, &other)),
            Err(e) => Err(e),
        };
        let synced = match copied {
            Ok(()) => self
                .call(
                    self.to,
                    Q::Fsync {
                        ino: copy,
                        fh,
                        datasync: false,
                    },
                )
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        let _ = self.call(self.to, Q::Release { ino: copy, fh }).await;
        synced
    }

    /// Bytes `0..size` of `old` (open as `src`) into `copy` (open as
    /// `fh`). Chunks of zeros are not written: the copy keeps holes.
    async fn copy_bytes(
        &mut self,
        old: InodeId,
        src: u64,
        copy: InodeId,
        fh: u64,
        size: u64,
    ) -> Res<()> {
        let mut offset = 0;
        while offset < size {
            let read = Q::Read {
                ino: old,
                fh: src,
                offset,
                len: CHUNK,
            };
            let data = match self.call(self.me, read).await? {
                A::Data(d) if d.0.is_empty() => break,
                A::Data(d) => d,
                other => return Err(unexpected(self.me, &other)),
            };
            let len = data.0.len() as u64;
            if data.0.iter().any(|b| *b != 0) {
                let write = Q::Write {
                    ino: copy,
                    fh,
                    offset,
                    data,
                };
                match self.call(self.to, write).await? {
                    A::Written(n) if u64::from(n) == len => {}
                    other => return Err(unexpected(self.to, &other)),
                }
            }
            self.bytes += len;
            offset += len;
        }
        let set = SetAttr {
            size: Some(size),
            ..SetAttr::default()
        };
        self.call(self.to, Q::SetAttr { ino: copy, set }).await?;
        Ok(())
    }

    /// The entries of directory `old` into its copy, their inodes of this
    /// node copied first; and its striping policy.
    async fn copy_entries(&mut self, old: InodeId, copy: InodeId) -> Res<()> {
        for e in self.list(old).await? {
            let ino = if inode_node(e.ino) == self.me {
                self.copy(e.ino, e.kind).await?
            } else {
                e.ino
            };
            let add = Q::AddEntry {
                dir: copy,
                name: e.name,
                ino,
                kind: e.kind,
                replace: false,
            };
            self.call(self.to, add).await?;
        }
        self.changed.insert(copy);
        if let A::Stripe {
            policy: Some(p), ..
        } = self.call(self.me, Q::GetStripe { ino: old }).await?
        {
            let set = Q::SetStripePolicy {
                dir: copy,
                policy: Some(p),
            };
            self.call(self.to, set).await?;
        }
        Ok(())
    }

    /// The extended attributes (ACLs, capabilities, user's) of `old` onto
    /// `copy`: after its data, since a write drops a capability.
    async fn copy_xattrs(&mut self, old: InodeId, copy: InodeId) -> Res<()> {
        let names = match self.call(self.me, Q::ListXattr { ino: old }).await? {
            A::XattrNames(n) => n,
            other => return Err(unexpected(self.me, &other)),
        };
        for name in names {
            let get = Q::GetXattr {
                ino: old,
                name: name.clone(),
            };
            let value = match self.call(self.me, get).await? {
                A::Xattr(v) => v,
                other => return Err(unexpected(self.me, &other)),
            };
            let set = Q::SetXattr {
                ino: copy,
                name,
                value,
                flags: 0,
            };
            self.call(self.to, set).await?;
        }
        Ok(())
    }

    /// Remove the originals, now that every name names a copy (fsynced):
    /// the store keeps only what no name reached, and serves again as a
    /// new node's would. A removal that fails leaves that object (logged).
    async fn discard_originals(&self) {
        let store = self.store.clone();
        let originals: Vec<InodeId> = self.copies.keys().copied().collect();
        let done = tokio::task::spawn_blocking(move || {
            for ino in originals {
                if let Err(e) = store.discard(ino) {
                    tracing::warn!(ino = %format!("{ino:x}"), error = %e,
                        "kdfs: could not remove a handed-over original (fsck.kdfs finds it)");
                }
            }
        });
        if let Err(e) = done.await {
            tracing::warn!(error = %e, "kdfs: removing the handed-over originals failed");
        }
    }

    /// The copies' modes and times, then the changed directories synced.
    async fn finish(&mut self) -> Res<()> {
        for (copy, attr) in std::mem::take(&mut self.stamps) {
            let set = SetAttr {
                // A symlink has no mode of its own.
                mode: (attr.kind != FileKind::Symlink).then_some(u32::from(attr.perm)),
                atime: Some(SetTime::At(attr.atime)),
                mtime: Some(SetTime::At(attr.mtime)),
                ..SetAttr::default()
            };
            self.call(self.to, Q::SetAttr { ino: copy, set }).await?;
        }
        for dir in std::mem::take(&mut self.changed) {
            self.call(inode_node(dir), Q::FsyncDir { ino: dir }).await?;
        }
        Ok(())
    }
}
