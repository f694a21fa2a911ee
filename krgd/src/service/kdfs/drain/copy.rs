//! Copying one inode of the leaving node to the target: a file with its
//! data (holes kept), a directory with its entries (its inodes of this
//! node copied first), a symlink, a fifo or a device; then its link count
//! and extended attributes. Modes and times come at the end of the pass
//! (`Drain::finish`), since adding entries changes a directory's.

use std::future::Future;
use std::pin::Pin;

use krg_proto::kdfs::{
    inode_node, Attr, FileKind, InodeId, KdfsRequest as Q, KdfsResponse as A, NewInode, SetAttr,
    SetTime,
};

use super::{unexpected, Drain, Failed, Res, CHUNK};

impl Drain {
    /// The copy of this node's inode `old` on the target, made if needed
    /// (a directory with its entries).
    pub(super) fn copy(
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
            if kind == FileKind::Dir {
                // Its times once the pass is over: entries added change them.
                self.stamps.push((copy, attr));
            } else {
                for _ in 1..attr.nlink {
                    self.call(self.to, Q::IncLink { ino: copy }).await?;
                }
                let set = Q::SetAttr {
                    ino: copy,
                    set: stamp(&attr),
                };
                self.call(self.to, set).await?;
            }
            self.copy_xattrs(old, copy).await?;
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
        let _ = self.call(self.to, Q::Release { ino: copy, fh }).await;
        copied
    }

    /// Bytes `0..size` of `old` (open as `src`) into `copy` (open as
    /// `fh`). Chunks of zeros are not written: the copy keeps holes (and
    /// gets its size with its attributes).
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
