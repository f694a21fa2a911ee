//! The life of an inode: made with one link, given and taken links by
//! entries anywhere in the cluster, opened and released by clients. Its
//! object goes when both its last link and its last open handle are gone,
//! so an unlinked file keeps its data while open (the link count and the
//! open count are compared under the inode's lock stripe).

use std::fs::File;
use std::os::fd::AsFd;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};

use krg_proto::kdfs::{inode_id, inode_local, Attr, InodeId, KdfsResponse, NewInode};

use super::error::{Res, StoreError};
use super::handles::{Handle, Holder};
use super::Store;

impl Store {
    /// Create the object of a new inode (one link, in no directory yet).
    pub(super) fn make_inode(&self, new: &NewInode) -> Res<Attr> {
        let ino = self.alloc.next(&self.top)?;
        self.objects.make(ino, new)
    }

    /// Add `delta` links to non-directory `ino`. At zero links and no open
    /// handle the object is removed (`None`).
    pub(super) fn change_links(&self, ino: InodeId, delta: i64) -> Res<Option<Attr>> {
        let _g = self.stripes.lock(ino);
        if self.objects.is_dir(ino)? {
            return Err(StoreError::NotPermitted);
        }
        let cur = self.objects.nlink(ino)? as i64;
        let next = (cur + delta).max(0) as u64;
        if next == 0 && !self.handles.is_open(inode_local(ino)) {
            self.objects.remove_file(ino)?;
            return Ok(None);
        }
        self.objects.set_nlink(ino, next)?;
        self.objects.attr(ino).map(Some)
    }

    /// Remove the object of `ino` whatever its links (a directory with its
    /// entries): a leaving node's hand-over, once every name of `ino`
    /// names its copy on another node. Its open handles are revoked: a
    /// write through one would be lost (the copy is the file now).
    pub fn discard(&self, ino: InodeId) -> Res<()> {
        let _g = self.stripes.lock(ino);
        if self.objects.is_dir(ino)? {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            let obj = self.objects.open_dir(ino)?;
            let mut list = nix::dir::Dir::openat(obj.as_fd(), ".", flags, Mode::empty())?;
            for e in list.iter() {
                let e = e?;
                let name = e.file_name();
                if !matches!(name.to_bytes(), b"." | b"..") {
                    unlinkat(obj.as_fd(), name, UnlinkatFlags::NoRemoveDir)?;
                }
            }
            return self.objects.remove_dir(ino);
        }
        self.objects.remove_file(ino)?;
        self.handles.revoke(inode_local(ino));
        Ok(())
    }

    /// Bump the ctime of `ino` (a moved inode's, as rename(2) does).
    pub(super) fn touch(&self, ino: InodeId) -> Res<()> {
        let _g = self.stripes.lock(ino);
        self.objects.touch(ino)
    }

    /// Open regular file `ino`; the handle counts as an open of the inode.
    pub(super) fn open_file(&self, ino: InodeId, write: bool) -> Res<u64> {
        let file = self.objects.open_file(ino, write)?;
        Ok(self.handles.add_file(inode_local(ino), file))
    }

    pub(super) fn file(&self, fh: u64) -> Res<std::sync::Arc<File>> {
        self.handles.file(fh)
    }

    /// Record that `resp`'s new handle, if it has one, is held by mount
    /// `holder` (see [`Store::release_held_by`]).
    pub fn opened_for(&self, holder: Holder, resp: &KdfsResponse) {
        let fh = match resp {
            KdfsResponse::Handle(fh) | KdfsResponse::StripedHandle { fh, .. } => *fh,
            KdfsResponse::Created { fh: Some(fh), .. } => *fh,
            _ => return,
        };
        self.handles.held_by(fh, holder);
    }

    /// The mounts that hold handles here (those krgd knows of).
    pub fn handle_holders(&self) -> std::collections::BTreeSet<Holder> {
        self.handles.holders()
    }

    /// Release every handle mount `holder` holds (it died, or its node
    /// failed or left: nothing will release them), as its releases would
    /// have; how many.
    pub fn release_held_by(&self, holder: Holder) -> usize {
        let fhs = self.handles.held_by_mount(holder);
        for &fh in &fhs {
            if let Err(e) = self.release(fh) {
                tracing::warn!(fh, node = holder.0, error = %e, "kdfs: releasing a gone mount's handle failed");
            }
        }
        fhs.len()
    }

    /// Release handle `fh`; the last handle of an unlinked inode removes it.
    pub(super) fn release(&self, fh: u64) -> Res<()> {
        let Some(Handle::File { local, file }) = self.handles.remove(fh) else {
            return Ok(());
        };
        drop(file);
        let ino = inode_id(self.node(), local);
        let _g = self.stripes.lock(ino);
        if self.handles.closed(local) && self.objects.is_unlinked(ino) {
            self.objects.remove_file(ino)?;
        }
        Ok(())
    }
}
