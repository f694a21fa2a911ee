//! The namespace operations of the FUSE client, as async functions over
//! [`Cluster`]: each one knows which nodes to ask, in which order, and how to
//! undo a half-done step.

use std::sync::Arc;

use krg_proto::kdfs::{
    inode_node, Attr, DirEntry, FileKind, InodeId, KdfsRequest as Q, KdfsResponse as A, NewInode,
    RemoveWhat, SetAttr, StripeLayout,
};
use krg_proto::NodeId;

use super::cache::Cache;
use super::conn::{Cluster, CALL_TIMEOUT};
use super::local::LocalStore;
use super::locks::ClientLocks;
use super::release::Releases;
use super::striped::handles::Striped;
use crate::store::crash;

pub type Res<T> = Result<T, i32>;

/// Shared state of one mount.
pub struct Ops {
    pub cluster: Arc<Cluster>,
    /// The node this client runs on: new inodes are made here.
    pub local: NodeId,
    /// The root directory (inode 1 for the kernel).
    pub root: Arc<super::root::Root>,
    /// This node's own part of the namespace, read in place.
    pub local_store: LocalStore,
    /// This mount's cluster-wide locks.
    pub locks: Arc<ClientLocks>,
    /// Talks to the kernel unasked (set once the session exists): a lock
    /// taken drops the file's cached pages and attributes.
    pub notifier: std::sync::OnceLock<fuser::Notifier>,
    /// What the kernel may keep, and the callbacks that keep it true.
    pub cache: Arc<Cache>,
    /// Releases of file handles on their way, batched.
    pub releases: Arc<Releases>,
    /// Open striped files, and the nodes new ones may use.
    pub striped: Striped,
}

/// What [`Ops::make_open`] made: the inode, its handle when opened, and its
/// layout when it is a striped file.
pub struct Made {
    pub attr: Attr,
    pub fh: Option<u64>,
    pub layout: Option<StripeLayout>,
}

pub(super) fn unexpected<T>(what: &str, got: A) -> Res<T> {
    tracing::warn!(?got, "kdfs: unexpected answer to {what}");
    Err(libc::EIO)
}

impl Ops {
    pub async fn call(&self, node: NodeId, q: Q) -> Res<A> {
        self.call_on(node, 0, q).await
    }

    /// [`Ops::call`] on connection `lane` to the node.
    pub async fn call_on(&self, node: NodeId, lane: u8, q: Q) -> Res<A> {
        match self.local_store.answer(node, q) {
            Ok(answer) => answer,
            Err(q) => {
                let q = if node == self.local {
                    self.with_krgd_handle(q).await?
                } else {
                    q
                };
                self.send(node, lane, q).await
            }
        }
    }

    /// `q` to `node`'s krgd on connection `lane`, as this mount's.
    pub(super) async fn send(&self, node: NodeId, lane: u8, q: Q) -> Res<A> {
        self.cache.watch(&self.cluster, node);
        let q = self.locks.held_by(node, q);
        let q = self.cache.wrap(node, q);
        self.cluster.call_on(node, lane, q, CALL_TIMEOUT).await
    }

    /// A lookup this node's store answers in place (no round trip, no
    /// await: the FUSE thread answers it), or `None` when it needs another
    /// node (the directory, or the inode it names, is elsewhere).
    pub fn lookup_here(&self, dir: InodeId, name: &[u8]) -> Option<Res<Attr>> {
        if inode_node(dir) != self.local {
            return None;
        }
        let q = Q::Lookup {
            dir,
            name: name.to_vec(),
        };
        match self.local_store.answer(self.local, q) {
            Ok(Ok(A::Entry { attr: Some(a), .. })) => Some(Ok(a)),
            Ok(Err(e)) => Some(Err(e)),
            _ => None,
        }
    }

    /// The attributes of an inode of this node, read in place.
    pub fn getattr_here(&self, ino: InodeId) -> Option<Res<Attr>> {
        if inode_node(ino) != self.local {
            return None;
        }
        match self.local_store.answer(self.local, Q::GetAttr { ino }) {
            Ok(Ok(A::Attr(a))) => Some(Ok(a)),
            Ok(Err(e)) => Some(Err(e)),
            _ => None,
        }
    }

    pub async fn getattr(&self, ino: InodeId) -> Res<Attr> {
        match self.call(inode_node(ino), Q::GetAttr { ino }).await? {
            A::Attr(a) => Ok(a),
            other => unexpected("getattr", other),
        }
    }

    pub async fn lookup(&self, dir: InodeId, name: &[u8]) -> Res<Attr> {
        match self
            .call(
                inode_node(dir),
                Q::Lookup {
                    dir,
                    name: name.to_vec(),
                },
            )
            .await?
        {
            A::Entry { attr: Some(a), .. } => Ok(a),
            A::Entry { ino, .. } => self.getattr(ino).await,
            other => unexpected("lookup", other),
        }
    }

    async fn entry(&self, dir: InodeId, name: &[u8]) -> Res<(InodeId, FileKind)> {
        match self
            .call(
                inode_node(dir),
                Q::Lookup {
                    dir,
                    name: name.to_vec(),
                },
            )
            .await?
        {
            A::Entry { ino, kind, .. } => Ok((ino, kind)),
            other => unexpected("lookup", other),
        }
    }

    /// A setattr this mount does in place (a regular file of its node, and
    /// it is the node's sole mount: see [`LocalStore`]), or `None`.
    pub fn setattr_here(&self, ino: InodeId, set: &SetAttr) -> Option<Res<Attr>> {
        self.local_store.setattr(ino, set)
    }

    pub async fn setattr(&self, ino: InodeId, set: SetAttr) -> Res<Attr> {
        match self.call(inode_node(ino), Q::SetAttr { ino, set }).await? {
            A::Attr(a) => Ok(a),
            other => unexpected("setattr", other),
        }
    }

    pub async fn readlink(&self, ino: InodeId) -> Res<Vec<u8>> {
        match self.call(inode_node(ino), Q::Readlink { ino }).await? {
            A::Target(t) => Ok(t),
            other => unexpected("readlink", other),
        }
    }

    /// Make a new inode named `name` in `dir`. The inode is placed on this
    /// client's node (data locality); its entry goes to the directory's owner.
    pub async fn make(&self, dir: InodeId, name: &[u8], new: NewInode, umask: u32) -> Res<Attr> {
        self.make_open(dir, name, new, umask, None)
            .await
            .map(|m| m.attr)
    }

    /// [`Ops::make`], also opening the new inode when `open` is given
    /// (`Some(true)`: for writing) — one round trip less for creat(2). In a
    /// directory with a striping policy, a file is striped and a
    /// subdirectory inherits the policy. Its mode is the one asked less
    /// `umask`, or what the directory's default ACL gives (see
    /// [`inherit`](super::inherit)).
    pub async fn make_open(
        &self,
        dir: InodeId,
        name: &[u8],
        mut new: NewInode,
        umask: u32,
        open: Option<bool>,
    ) -> Res<Made> {
        let inherited = self.inherit(dir, &mut new, umask).await?;
        let (mut attr, fh, policy) = self.make_inode_in(dir, name, new, open).await?;
        self.set_inherited(attr.ino, inherited).await;
        let layout = self.apply_stripe(&mut attr, policy).await;
        Ok(Made { attr, fh, layout })
    }

    async fn make_inode_in(
        &self,
        dir: InodeId,
        name: &[u8],
        mut new: NewInode,
        open: Option<bool>,
    ) -> Res<(Attr, Option<u64>, Option<krg_proto::kdfs::StripePolicy>)> {
        let dir_node = inode_node(dir);
        if dir_node == self.local {
            return match self
                .call(
                    dir_node,
                    Q::Create {
                        dir,
                        name: name.to_vec(),
                        new,
                        open,
                    },
                )
                .await?
            {
                A::Created { attr, fh, stripe } => Ok((attr, fh, stripe)),
                other => unexpected("create", other),
            };
        }
        // The entry and the inode live on different nodes. Check the name is
        // free first (cheap, the common failure), inherit a set-group-id
        // directory's group as local file systems do, then make the inode and
        // enter it; a lost race on the name undoes the inode.
        let (parent, (policy, replicas)) = futures::join!(self.getattr(dir), self.dir_policy(dir));
        let parent = parent?;
        if parent.kind != FileKind::Dir {
            return Err(libc::ENOTDIR);
        }
        match self.entry(dir, name).await {
            Ok(_) => return Err(libc::EEXIST),
            Err(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        if parent.perm & (libc::S_ISGID as u16) != 0 {
            new.gid = parent.gid;
            if new.kind == FileKind::Dir {
                new.perm |= libc::S_ISGID as u16;
            }
        }
        let (attr, fh) = match self
            .call(
                self.local,
                Q::MakeInode {
                    new,
                    open,
                    replicas,
                },
            )
            .await?
        {
            A::Created { attr, fh, .. } => (attr, fh),
            other => return unexpected("make inode", other),
        };
        crash::point("client-make");
        let add = Q::AddEntry {
            dir,
            name: name.to_vec(),
            ino: attr.ino,
            kind: attr.kind,
            replace: false,
        };
        if let Err(e) = self.call(dir_node, add).await {
            if let Some(fh) = fh {
                let _ = self
                    .call(self.local, Q::Release { ino: attr.ino, fh })
                    .await;
            }
            self.drop_inode(attr.ino, attr.kind).await;
            return Err(e);
        }
        Ok((attr, fh, policy))
    }

    /// Release an inode whose entry was removed or never made.
    async fn drop_inode(&self, ino: InodeId, kind: FileKind) {
        let q = if kind == FileKind::Dir {
            Q::RemoveDir { ino }
        } else {
            Q::DecLink { ino }
        };
        if let Err(e) = self.call(inode_node(ino), q).await {
            tracing::warn!(
                ino,
                errno = e,
                "kdfs: could not release an unlinked inode (it leaks until fsck)"
            );
        }
    }

    pub async fn unlink(&self, dir: InodeId, name: &[u8]) -> Res<()> {
        self.make_handles_known(dir, name).await;
        let q = Q::Unlink {
            dir,
            name: name.to_vec(),
        };
        match self.call(inode_node(dir), q).await? {
            // The directory's node owns the inode too: it dropped the link.
            A::Unlinked {
                link_dropped: true, ..
            } => Ok(()),
            A::Unlinked { entry: e, .. } => {
                crash::point("client-unlink");
                self.drop_inode(e.ino, e.kind).await;
                Ok(())
            }
            other => unexpected("unlink", other),
        }
    }

    pub async fn rmdir(&self, dir: InodeId, name: &[u8]) -> Res<()> {
        let (ino, kind) = self.entry(dir, name).await?;
        if kind != FileKind::Dir {
            return Err(libc::ENOTDIR);
        }
        // Remove the directory object first: the local rmdir(2) is the atomic
        // emptiness check. Then its entry.
        match self.call(inode_node(ino), Q::RemoveDir { ino }).await {
            Ok(_) | Err(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        // (krgd forgets its loan too; no file is left in it)
        let _ = self.cache.loans.take(ino);
        crash::point("client-rmdir");
        let q = Q::RemoveEntry {
            dir,
            name: name.to_vec(),
            what: RemoveWhat::Dir,
            expect: Some(ino),
        };
        self.call(inode_node(dir), q).await.map(|_| ())
    }

    pub async fn link(&self, ino: InodeId, dir: InodeId, name: &[u8]) -> Res<Attr> {
        let attr = match self.call(inode_node(ino), Q::IncLink { ino }).await? {
            A::Attr(a) => a,
            other => return unexpected("link", other),
        };
        crash::point("client-link");
        let add = Q::AddEntry {
            dir,
            name: name.to_vec(),
            ino,
            kind: attr.kind,
            replace: false,
        };
        if let Err(e) = self.call(inode_node(dir), add).await {
            self.drop_inode(ino, attr.kind).await;
            return Err(e);
        }
        Ok(attr)
    }

    pub async fn rename(
        &self,
        src: InodeId,
        name: &[u8],
        dst: InodeId,
        new_name: &[u8],
        flags: u32,
    ) -> Res<()> {
        let (ino, kind) = self.entry(src, name).await?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if !exchange {
            // A directory may only replace an empty directory; the check
            // needs the target's owner, which may be a third node.
            match self.entry(dst, new_name).await {
                Ok((old, FileKind::Dir)) if old != ino && kind == FileKind::Dir => {
                    match self
                        .call(inode_node(old), Q::IsEmptyDir { ino: old })
                        .await?
                    {
                        A::Empty(true) => {}
                        A::Empty(false) => return Err(libc::ENOTEMPTY),
                        other => return unexpected("rename", other),
                    }
                }
                Ok(_) | Err(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        let replaced = if inode_node(src) == inode_node(dst) {
            let q = Q::Rename {
                src_dir: src,
                src_name: name.to_vec(),
                dst_dir: dst,
                dst_name: new_name.to_vec(),
                flags,
            };
            match self.call(inode_node(src), q).await? {
                A::Removed(r) => r,
                other => return unexpected("rename", other),
            }
        } else {
            if exchange {
                return Err(libc::EINVAL);
            }
            self.rename_across(ino, kind, src, name, dst, new_name, flags)
                .await?
        };
        if let Some(old) = replaced {
            self.drop_inode(old.ino, old.kind).await;
        }
        // A rename changes the moved inode's ctime; the directory owner did
        // it already when it also owns the inode.
        if inode_node(ino) != inode_node(src) || inode_node(src) != inode_node(dst) {
            let _ = self.call(inode_node(ino), Q::Touch { ino }).await;
        }
        Ok(())
    }

    /// Rename between directories owned by two nodes: enter the new name
    /// first, then remove the old one, so that an observer sees the file
    /// under at least one of its names at every moment.
    #[allow(clippy::too_many_arguments)]
    async fn rename_across(
        &self,
        ino: InodeId,
        kind: FileKind,
        src: InodeId,
        name: &[u8],
        dst: InodeId,
        new_name: &[u8],
        flags: u32,
    ) -> Res<Option<DirEntry>> {
        let replace = flags & libc::RENAME_NOREPLACE == 0;
        let add = Q::AddEntry {
            dir: dst,
            name: new_name.to_vec(),
            ino,
            kind,
            replace,
        };
        let replaced = match self.call(inode_node(dst), add).await? {
            A::Removed(r) => r,
            other => return unexpected("rename", other),
        };
        crash::point("client-rename");
        let what = if kind == FileKind::Dir {
            RemoveWhat::Dir
        } else {
            RemoveWhat::NonDir
        };
        let rm = Q::RemoveEntry {
            dir: src,
            name: name.to_vec(),
            what,
            expect: Some(ino),
        };
        if let Err(e) = self.call(inode_node(src), rm).await {
            tracing::warn!(
                errno = e,
                "kdfs: rename could not remove the old name; the file now has both"
            );
            return Err(e);
        }
        Ok(replaced)
    }

    /// Open file `ino`: its handle, and its layout when it is striped.
    pub async fn open(&self, ino: InodeId, write: bool) -> Res<(u64, Option<StripeLayout>)> {
        match self.call(inode_node(ino), Q::Open { ino, write }).await? {
            A::Handle(fh) => Ok((fh, None)),
            A::StripedHandle { fh, layout } => Ok((fh, Some(layout))),
            other => unexpected("open", other),
        }
    }

    pub async fn release(&self, ino: InodeId, fh: u64) -> Res<()> {
        self.local_store.released(ino, fh);
        self.striped.released(ino, fh);
        match self.krgd_release(ino, fh) {
            Some(fh) => self.simple(inode_node(ino), Q::Release { ino, fh }).await,
            None => Ok(()),
        }
    }

    /// Release a handle through which nothing was locked: the local file
    /// goes now, the owner hears of it with the next batch.
    pub fn release_soon(&self, ino: InodeId, fh: u64) {
        self.local_store.released(ino, fh);
        self.striped.released(ino, fh);
        if let Some(fh) = self.krgd_release(ino, fh) {
            self.releases.push(ino, fh);
        }
    }

    pub async fn simple(&self, node: NodeId, q: Q) -> Res<()> {
        self.call(node, q).await.map(|_| ())
    }

    pub async fn opendir(&self, ino: InodeId) -> Res<u64> {
        match self.call(inode_node(ino), Q::OpenDir { ino }).await? {
            A::Handle(h) => Ok(h),
            other => unexpected("opendir", other),
        }
    }

    pub async fn readdir(
        &self,
        ino: InodeId,
        fh: u64,
        offset: u64,
        max: u32,
    ) -> Res<Vec<DirEntry>> {
        match self
            .call(inode_node(ino), Q::ReadDir { fh, offset, max })
            .await?
        {
            A::Entries(e) => Ok(e),
            other => unexpected("readdir", other),
        }
    }

    /// Sum of every reachable node's space.
    pub async fn statfs(&self) -> Res<[u64; 5]> {
        let mut sum = [0u64; 5];
        let mut any = false;
        for node in self.cluster.nodes() {
            if let Ok(A::Statfs {
                blocks,
                bfree,
                bavail,
                files,
                ffree,
                ..
            }) = self.call(node, Q::Statfs).await
            {
                any = true;
                for (s, v) in sum.iter_mut().zip([blocks, bfree, bavail, files, ffree]) {
                    *s = s.saturating_add(v);
                }
            }
        }
        if any {
            Ok(sum)
        } else {
            Err(libc::ENOTCONN)
        }
    }
}
