//! Copying one inode of the leaving node to the target: a file with its
//! data (holes kept), a directory with its entries (its inodes of this
//! node copied first), a symlink, a fifo or a device; then its link count,
//! attributes and extended attributes. A directory's mode and times come
//! at the end of the pass (`Drain::finish`), since adding entries changes
//! its times.

use std::future::Future;
use std::pin::Pin;

use futures::future::join_all;

use krg_proto::kdfs::{
    inode_node, Attr, DirEntry, FileKind, InodeId, KdfsRequest as Q, KdfsResponse as A, NewInode,
    SetAttr, SetTime,
};

use super::{unexpected, Drain, Failed, Res, CHUNK};

/// How many inodes (and entries) are copied at once: each copy is a
/// chain of round trips, which overlap.
pub(super) const PARALLEL: usize = 16;

/// One non-directory inode copied: the copy made (also when a later step
/// failed, for the undo to remove it), and the bytes copied or why not.
struct Leaf {
    copy: Option<InodeId>,
    done: Res<u64>,
}

impl Drain {
    /// The copy of this node's inode `old` on the target, made if needed
    /// (a directory with its entries).
    pub(super) fn copy(
        &mut self,
        old: InodeId,
        kind: FileKind,
    ) -> Pin<Box<dyn Future<Output = Res<InodeId>> + Send + '_>> {
        Box::pin(async move {
            if kind != FileKind::Dir {
                self.copy_leaves(&[(old, kind)]).await?;
            } else if !self.copies.contains_key(&old) {
                self.copy_dir(old).await?;
            }
            self.copies
                .get(&old)
                .copied()
                .ok_or_else(|| Failed::new(format!("inode {old:x} was not copied")))
        })
    }

    /// The copy of each of `entries`' inodes that is this node's (made if
    /// needed: files [`PARALLEL`] at a time, then directories one by one);
    /// another node's inode stands for itself.
    pub(super) async fn copies_of(&mut self, entries: &[DirEntry]) -> Res<Vec<InodeId>> {
        let leaves: Vec<(InodeId, FileKind)> = entries
            .iter()
            .filter(|e| inode_node(e.ino) == self.me && e.kind != FileKind::Dir)
            .map(|e| (e.ino, e.kind))
            .collect();
        self.copy_leaves(&leaves).await?;
        let mut inos = Vec::with_capacity(entries.len());
        for e in entries {
            inos.push(if inode_node(e.ino) == self.me {
                self.copy(e.ino, e.kind).await?
            } else {
                e.ino
            });
        }
        Ok(inos)
    }

    /// Copy the non-directory inodes `inos` not copied yet, [`PARALLEL`]
    /// at a time (an inode named twice is copied once).
    async fn copy_leaves(&mut self, inos: &[(InodeId, FileKind)]) -> Res<()> {
        let mut todo: Vec<(InodeId, FileKind)> = Vec::new();
        for &(ino, kind) in inos {
            if !self.copies.contains_key(&ino) && !todo.iter().any(|(i, _)| *i == ino) {
                todo.push((ino, kind));
            }
        }
        for batch in todo.chunks(PARALLEL) {
            let leaves = join_all(batch.iter().map(|&(ino, kind)| self.copy_leaf(ino, kind))).await;
            let mut failed = None;
            for (&(ino, _), leaf) in batch.iter().zip(leaves) {
                if let Some(copy) = leaf.copy {
                    self.copies.insert(ino, copy);
                }
                match leaf.done {
                    Ok(n) => self.bytes += n,
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Non-directory `old` copied: made, its data, its other links, its
    /// attributes, then its extended attributes.
    async fn copy_leaf(&self, old: InodeId, kind: FileKind) -> Leaf {
        let (attr, copy, fh) = match self.make_copy(old, kind).await {
            Ok(made) => made,
            Err(e) => {
                return Leaf {
                    copy: None,
                    done: Err(e),
                }
            }
        };
        let done = async {
            let bytes = match kind {
                FileKind::File => self.copy_file(old, copy, fh, attr.size).await?,
                _ => 0,
            };
            for _ in 1..attr.nlink {
                self.call(self.to, Q::IncLink { ino: copy }).await?;
            }
            let set = Q::SetAttr {
                ino: copy,
                set: stamp(&attr),
            };
            self.call(self.to, set).await?;
            self.copy_xattrs(old, copy).await?;
            Ok(bytes)
        };
        Leaf {
            copy: Some(copy),
            done: done.await,
        }
    }

    /// Directory `old` copied with its entries; its times come at the end
    /// of the pass (entries added change them).
    async fn copy_dir(&mut self, old: InodeId) -> Res<InodeId> {
        let (attr, copy, _) = self.make_copy(old, FileKind::Dir).await?;
        self.copies.insert(old, copy);
        self.copy_entries(old, copy).await?;
        self.copy_xattrs(old, copy).await?;
        self.stamps.push((copy, attr));
        Ok(copy)
    }

    /// The new inode on the target for `old`, of `kind`, with its owner and
    /// mode (a regular file opened for its data): `old`'s attributes, the
    /// copy and its handle.
    async fn make_copy(&self, old: InodeId, kind: FileKind) -> Res<(Attr, InodeId, Option<u64>)> {
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
        let replicas = None; // (its own count follows: `copy_xattrs`)
        match self
            .call(
                self.to,
                Q::MakeInode {
                    new,
                    open,
                    replicas,
                },
            )
            .await?
        {
            A::Created { attr: made, fh, .. } => Ok((attr, made.ino, fh)),
            other => Err(unexpected(self.to, &other)),
        }
    }

    /// Regular file `old` into `copy`, open as `fh` there: a striped
    /// file's layout first and its other holders' units after
    /// (`stripes.rs`), the data. The bytes copied.
    async fn copy_file(&self, old: InodeId, copy: InodeId, fh: Option<u64>, size: u64) -> Res<u64> {
        let Some(layout) = self.store.stripe_layout(old) else {
            return self.copy_data(old, copy, fh, size).await;
        };
        self.give_copy_layout(copy, &layout).await?;
        let bytes = self.copy_data(old, copy, fh, size).await?;
        self.rename_holders(old, copy, &layout).await?;
        Ok(bytes)
    }

    /// The data of regular file `old` into `copy`, open as `fh` there: the
    /// bytes copied.
    async fn copy_data(&self, old: InodeId, copy: InodeId, fh: Option<u64>, size: u64) -> Res<u64> {
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
            Ok(A::Handle(src) | A::StripedHandle { fh: src, .. }) => {
                let r = self.copy_bytes(old, src, copy, fh, size).await;
                let _ = self.call(self.me, Q::Release { ino: old, fh: src }).await;
                r
            }
            Ok(other) => Err(unexpected(self.me, &other)),
            Err(e) => Err(e),
        };
        let _ = self.call(self.to, Q::Release { ino: copy, fh }).await;
        copied
    }

    /// Bytes `0..size` of `old` (open as `src`) into `copy` (open as
    /// `fh`). Chunks of zeros are not written: the copy keeps holes (and
    /// gets its size with its attributes).
    async fn copy_bytes(
        &self,
        old: InodeId,
        src: u64,
        copy: InodeId,
        fh: u64,
        size: u64,
    ) -> Res<u64> {
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
            offset += len;
        }
        Ok(offset)
    }

    /// The entries of directory `old` into its copy, their inodes of this
    /// node copied first; and its striping policy.
    async fn copy_entries(&mut self, old: InodeId, copy: InodeId) -> Res<()> {
        let entries = self.list(old).await?;
        let inos = self.copies_of(&entries).await?;
        let adds: Vec<Q> = entries
            .into_iter()
            .zip(inos)
            .map(|(e, ino)| Q::AddEntry {
                dir: copy,
                name: e.name,
                ino,
                kind: e.kind,
                replace: false,
            })
            .collect();
        for batch in adds.chunks(PARALLEL) {
            let added = join_all(batch.iter().map(|q| self.call(self.to, q.clone()))).await;
            if let Some(e) = added.into_iter().find_map(Result::err) {
                return Err(e);
            }
        }
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
    async fn copy_xattrs(&self, old: InodeId, copy: InodeId) -> Res<()> {
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
        self.copy_replicas(old, copy).await
    }

    /// `old`'s own count of copies and a directory's replica policy
    /// (`kdfsctl replicas N DIR`), when it has them, onto `copy`.
    async fn copy_replicas(&self, old: InodeId, copy: InodeId) -> Res<()> {
        let (own, policy) = match self.call(self.me, Q::GetReplicas { ino: old }).await? {
            A::Replicas { own, policy } => (own, policy),
            other => return Err(unexpected(self.me, &other)),
        };
        let own = (own != self.store.replicas()).then_some(own);
        if own.is_none() && policy.is_none() {
            return Ok(());
        }
        let set = Q::SetInodeReplicas {
            ino: copy,
            own,
            policy: policy.map(Some),
        };
        self.call(self.to, set).await.map(|_| ())
    }
}

/// The attributes a copy takes from its original `attr`: a file's size
/// (holes at its end were not written), the mode (a symlink has none of
/// its own) and the times; its `ctime` is its own.
pub(super) fn stamp(attr: &Attr) -> SetAttr {
    SetAttr {
        size: (attr.kind == FileKind::File).then_some(attr.size),
        mode: (attr.kind != FileKind::Symlink).then_some(u32::from(attr.perm)),
        atime: Some(SetTime::At(attr.atime)),
        mtime: Some(SetTime::At(attr.mtime)),
        ..SetAttr::default()
    }
}
