//! The edge of the store: one [`KdfsRequest`] in, one [`KdfsResponse`] out.
//! Every store error becomes its errno here, and only here
//! ([`StoreError::errno`]).

use krg_proto::kdfs::{Attr, KdfsRequest, KdfsResponse, StripePolicy};

use super::data::{read_at, sync_file, write_at};
use super::error::{Res, StoreError};
use super::{crash, sys, Store};

impl Store {
    /// Requests that only read the local file system and need no state of
    /// the serving krgd (its open-file counts, its locks, its allocator).
    /// Directory handles are a snapshot of the entries, kept by whoever
    /// opened them.
    pub fn is_read_only(req: &KdfsRequest) -> bool {
        use KdfsRequest as Q;
        matches!(
            req,
            Q::GetAttr { .. }
                | Q::Lookup { .. }
                | Q::Readlink { .. }
                | Q::IsEmptyDir { .. }
                | Q::OpenDir { .. }
                | Q::ReadDir { .. }
                | Q::ReleaseDir { .. }
                | Q::GetXattr { .. }
                | Q::ListXattr { .. }
                | Q::GetStripe { .. }
                | Q::GetReplicas { .. }
                | Q::StripeRead { .. }
        )
    }

    /// Serve one request. Blocking: call it from a blocking-capable thread.
    pub fn handle(&self, req: KdfsRequest) -> KdfsResponse {
        self.dispatch(req)
            .unwrap_or_else(|e| KdfsResponse::Errno(e.errno()))
    }

    fn dispatch(&self, req: KdfsRequest) -> Res<KdfsResponse> {
        use KdfsRequest as Q;
        use KdfsResponse as A;
        Ok(match req {
            Q::Hello => A::Hello {
                fs_id: Some(self.sb.fs_id),
                node: self.node(),
            },
            Q::Root => A::Root(self.root().ok_or(StoreError::NotFound)?),
            Q::Statfs => self.statfs()?,
            Q::GetAttr { ino } => A::Attr(self.getattr(ino)?),
            Q::SetAttr { ino, set } => A::Attr(self.objects.setattr(ino, &set)?),
            Q::Readlink { ino } => A::Target(self.objects.readlink(ino)?),
            Q::Lookup { dir, name } => {
                let (e, attr) = self.lookup(dir, &name)?;
                A::Entry {
                    ino: e.ino,
                    kind: e.kind,
                    attr,
                }
            }
            Q::MakeInode {
                new,
                open,
                replicas,
            } => {
                let attr = self.make_inode(&new)?;
                crash::point("make-inode");
                self.counted_as(&attr, replicas);
                self.created(attr, open, None)?
            }
            Q::Create {
                dir,
                name,
                new,
                open,
            } => {
                let policy = self.objects.policy(dir)?;
                let replicas = self.replica_policy(dir)?;
                let attr = self.create(dir, &name, &new)?;
                self.counted_as(&attr, replicas);
                self.created(attr, open, policy)?
            }
            Q::AddEntry {
                dir,
                name,
                ino,
                kind,
                replace,
            } => {
                let replaced = self.add_entry(dir, &name, ino, kind, replace)?;
                crash::point("add-entry");
                A::Removed(replaced)
            }
            Q::RemoveEntry {
                dir,
                name,
                what,
                expect,
            } => {
                let removed = self.remove_entry(dir, &name, what, expect)?;
                crash::point("remove-entry");
                A::Removed(Some(removed))
            }
            Q::ReplaceEntry {
                dir,
                name,
                old,
                new,
                kind,
            } => self
                .replace_entry_if(dir, &name, old, new, kind)
                .map(|_| A::Done)?,
            Q::Unlink { dir, name } => self.unlink(dir, &name)?,
            Q::Rename {
                src_dir,
                src_name,
                dst_dir,
                dst_name,
                flags,
            } => {
                let replaced = self.rename(src_dir, &src_name, dst_dir, &dst_name, flags)?;
                crash::point("rename");
                A::Removed(replaced)
            }
            Q::IncLink { ino } => {
                let attr = self.change_links(ino, 1)?.ok_or(StoreError::NotFound)?;
                crash::point("inc-link");
                A::Attr(attr)
            }
            Q::DecLink { ino } => self.change_links(ino, -1).map(|_| A::Done)?,
            Q::Touch { ino } => self.touch(ino).map(|_| A::Done)?,
            Q::RemoveDir { ino } => {
                self.remove_dir(ino)?;
                crash::point("remove-dir");
                A::Done
            }
            Q::IsEmptyDir { ino } => A::Empty(self.objects.is_empty_dir(ino)?),
            Q::Open { ino, write } => {
                let fh = self.open_file(ino, write)?;
                match self.objects.layout(ino) {
                    Ok(None) => A::Handle(fh),
                    Ok(Some(layout)) => A::StripedHandle { fh, layout },
                    Err(e) => {
                        let _ = self.release(fh);
                        return Err(e);
                    }
                }
            }
            Q::Read {
                fh, offset, len, ..
            } => A::Data(read_at(&*self.file(fh)?, offset, len.min(16 << 20))?.into()),
            Q::Write {
                fh, offset, data, ..
            } => A::Written(write_at(&*self.file(fh)?, offset, &data.0)?),
            Q::Fsync { fh, datasync, .. } => {
                sync_file(&*self.file(fh)?, datasync).map(|_| A::Done)?
            }
            Q::Release { fh, .. } | Q::ReleaseDir { fh } => self.release(fh).map(|_| A::Done)?,
            Q::ReleaseMany { handles } => {
                // Each handle on its own: one that fails does not keep the
                // others open.
                for (ino, fh) in handles {
                    if let Err(e) = self.release(fh) {
                        tracing::warn!(ino, fh, error = %e, "kdfs: a batched release failed");
                    }
                }
                A::Done
            }
            Q::Fallocate {
                fh,
                offset,
                len,
                mode,
                ..
            } => sys::fallocate(&*self.file(fh)?, mode, offset, len).map(|_| A::Done)?,
            Q::OpenDir { ino } => A::Handle(self.open_dir(ino)?),
            Q::ReadDir { fh, offset, max } => A::Entries(self.read_dir(fh, offset, max)?),
            Q::FsyncDir { ino } => self.fsync_dir(ino).map(|_| A::Done)?,
            Q::SyncStore => nix::unistd::syncfs(self.top.fd()).map(|_| A::Done)?,
            Q::GetXattr { ino, name } => A::Xattr(self.get_xattr(ino, &name)?.into()),
            Q::ListXattr { ino } => A::XattrNames(self.list_xattr(ino)?),
            Q::SetXattr {
                ino,
                name,
                value,
                flags,
            } => self
                .set_xattr(ino, &name, &value.0, flags)
                .map(|_| A::Done)?,
            Q::RemoveXattr { ino, name } => self.remove_xattr(ino, &name).map(|_| A::Done)?,
            Q::GetStripe { ino } => self.get_stripe(ino)?,
            Q::GetReplicas { ino } => self.get_replicas(ino)?,
            Q::SetInodeReplicas { ino, own, policy } => {
                self.set_inode_replicas(ino, own, policy)?
            }
            Q::SetStripePolicy { dir, policy } => self.set_policy(dir, policy).map(|_| A::Done)?,
            Q::SetLayout { ino, layout } => self.set_layout(ino, &layout).map(|_| A::Done)?,
            Q::StripeRead { ino, offset, len } => {
                A::Data(self.stripe_read(ino, offset, len)?.into())
            }
            Q::StripeWrite { ino, offset, data } => {
                A::Written(self.stripe_write(ino, offset, &data.0)?)
            }
            Q::StripeSync { ino } => self.stripe_sync(ino).map(|_| A::Done)?,
            Q::StripeTruncate { ino, size } => self.stripe_truncate(ino, size).map(|_| A::Done)?,
            Q::StripeDrop { ino } => self.stripe_drop(ino).map(|_| A::Done)?,
            Q::Extend { ino, size } => self.extend(ino, size).map(|_| A::Done)?,
            Q::ReplaceLayout { ino, old, new } => {
                self.replace_layout(ino, &old, &new).map(|_| A::Done)?
            }
            Q::StripeRename { old, new } => self.stripe_rename(old, new).map(|_| A::Done)?,
            Q::SetRoot { root_node, root } => self.set_root(root_node, root).map(|_| A::Done)?,
            Q::StripeAdopt { ino } => {
                self.set_stripe_moved(ino, false);
                A::Done
            }
            // The lock manager's, never the store's (krgd routes them there).
            Q::SetLock { .. }
            | Q::GetLock { .. }
            | Q::ReleaseLocks { .. }
            | Q::LockLease { .. }
            | Q::ReclaimLock { .. } => return Err(StoreError::NotSupported),
            // krgd unwraps `As` and `HeldBy` and answers `Watch` itself
            // (kdfs::callback), and `HandOver` (its hand-over of a leaving
            // node's data), and the mirrors' requests (its mirror service).
            Q::As { .. }
            | Q::HeldBy { .. }
            | Q::Watch { .. }
            | Q::Unwatch { .. }
            | Q::HandOver
            | Q::Mirror { .. }
            | Q::FromMirror { .. }
            | Q::Replication
            | Q::SetReplicas { .. }
            | Q::Conversion { .. }
            | Q::Lend { .. } => return Err(StoreError::NotSupported),
        })
    }

    /// unlink(2): the entry goes, then — when its inode is owned here —
    /// one of its links, as the client would have asked next (the same
    /// order, so a crash between the two leaves what fsck knows).
    fn unlink(&self, dir: krg_proto::kdfs::InodeId, name: &[u8]) -> Res<KdfsResponse> {
        use krg_proto::kdfs::{inode_node, RemoveWhat};
        let entry = self.remove_entry(dir, name, RemoveWhat::NonDir, None)?;
        crash::point("remove-entry");
        let link_dropped = inode_node(entry.ino) == self.node();
        if link_dropped {
            // The name is gone: the unlink happened. A link that could not
            // be dropped leaks the inode until fsck, as when the client
            // drops it in a second request.
            if let Err(e) = self.change_links(entry.ino, -1) {
                tracing::warn!(ino = entry.ino, error = %e,
                    "kdfs: could not drop the link of an unlinked inode (it leaks until fsck)");
            }
        }
        Ok(KdfsResponse::Unlinked {
            entry,
            link_dropped,
        })
    }

    /// A new inode takes its directory's replica policy. Not given (a
    /// count out of range from a client, or the disk refused), it keeps
    /// the file system's count: logged, not an error of the create.
    fn counted_as(&self, attr: &Attr, replicas: Option<u8>) {
        let Some(n) = replicas else { return };
        if let Err(e) = self.give_replicas(attr.ino, attr.kind, n) {
            tracing::warn!(ino = attr.ino, count = n, error = %e,
                "kdfs: a new inode did not get its directory's replica count");
        }
    }

    /// A created inode's answer, opened first if the client asked.
    /// `stripe`: the directory's policy, for the client to apply.
    fn created(
        &self,
        attr: Attr,
        open: Option<bool>,
        stripe: Option<StripePolicy>,
    ) -> Res<KdfsResponse> {
        let fh = match open {
            Some(write) => Some(self.open_file(attr.ino, write)?),
            None => None,
        };
        Ok(KdfsResponse::Created { attr, fh, stripe })
    }

    /// Space of the local file system, in 4 KiB blocks.
    fn statfs(&self) -> Res<KdfsResponse> {
        let st = nix::sys::statvfs::fstatvfs(self.top.fd())?;
        let frsize = if st.fragment_size() > 0 {
            st.fragment_size()
        } else {
            st.block_size()
        };
        Ok(KdfsResponse::Statfs {
            blocks: st.blocks() * frsize / 4096,
            bfree: st.blocks_free() * frsize / 4096,
            bavail: st.blocks_available() * frsize / 4096,
            files: st.files(),
            ffree: st.files_free(),
            bsize: 4096,
        })
    }
}
