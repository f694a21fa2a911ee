//! Striped files, the store's side (the layout itself: `krg_proto::kdfs::
//! stripe`). A directory's policy and a file's layout are xattrs of their
//! objects (`objects`). The units a node holds of a striped file are kept
//! at their own offsets, in a sparse file: for the file's owner, in the
//! file's object itself (whose size is the file's size); for the other
//! holders, in `DIR/stripes/<inode id, 16 hex digits>`, made at the first
//! write there. The FUSE client sends each holder the pieces it holds.
//! A holder that leaves hands its units to another node, and the owner's
//! layout names that node instead (`replace_layout`).

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use krg_proto::kdfs::{
    inode_node, FileKind, InodeId, KdfsResponse, MirrorChange, StripeLayout, StripePolicy,
    StripeState, Time,
};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{linkat, lseek, unlinkat, UnlinkatFlags, Whence};

use super::data::{read_at, sync_file, write_at};
use super::error::{Res, StoreError};
use super::Store;

/// The name of striped file `ino`'s copy in `stripes/`.
pub(crate) fn copy_name(ino: InodeId) -> String {
    format!("{ino:016x}")
}

impl Store {
    /// A directory's policy, or a file's layout.
    pub(super) fn get_stripe(&self, ino: InodeId) -> Res<KdfsResponse> {
        Ok(match self.objects.kind(ino)? {
            FileKind::Dir => KdfsResponse::Stripe {
                policy: self.objects.policy(ino)?,
                layout: None,
                replicas: self.replica_policy(ino)?,
            },
            FileKind::File => KdfsResponse::Stripe {
                policy: None,
                layout: self.objects.layout(ino)?,
                replicas: None,
            },
            _ => KdfsResponse::Stripe {
                policy: None,
                layout: None,
                replicas: None,
            },
        })
    }

    pub(super) fn set_policy(&self, dir: InodeId, policy: Option<StripePolicy>) -> Res<()> {
        if !self.objects.is_dir(dir)? {
            return Err(StoreError::NotDir);
        }
        if let Some(p) = &policy {
            p.check()
                .map_err(|_| StoreError::Invalid("striping policy"))?;
        }
        self.objects.set_policy(dir, policy.as_ref())
    }

    /// Give a new, empty regular file of this node its layout.
    pub(super) fn set_layout(&self, ino: InodeId, layout: &StripeLayout) -> Res<()> {
        // A node may appear twice: a leaving owner's copy of a file is
        // made with the layout the file had, the new owner in its place.
        layout
            .check()
            .map_err(|_| StoreError::Invalid("stripe layout"))?;
        if layout.nodes.first() != Some(&self.node()) {
            return Err(StoreError::Invalid("a layout starts at the file's owner"));
        }
        let attr = self.objects.attr(ino)?;
        if attr.kind != FileKind::File {
            return Err(StoreError::Invalid("not a regular file"));
        }
        if attr.size != 0 {
            return Err(StoreError::Invalid("only an empty file gets a layout"));
        }
        self.objects.set_layout(ino, layout)
    }

    /// The layout of `ino` (owned here) if it is striped: what a truncate
    /// must cut on the other holders first.
    pub fn stripe_layout(&self, ino: InodeId) -> Option<StripeLayout> {
        if inode_node(ino) != self.node() {
            return None;
        }
        self.objects.layout(ino).ok().flatten()
    }

    /// The striped files removed since the last call: their other holders
    /// are to drop their copies (krgd tells them).
    pub fn take_gone_stripes(&self) -> Vec<(InodeId, StripeLayout)> {
        self.objects.take_gone()
    }

    /// This node's copy of striped file `ino`: its object when owned here
    /// (which must be striped), else its file in `stripes/` (`None`: none
    /// yet, unless `create`).
    fn stripe_copy(&self, ino: InodeId, write: bool, create: bool) -> Res<Option<File>> {
        if inode_node(ino) == self.node() {
            if self.objects.layout(ino)?.is_none() {
                return Err(StoreError::Invalid("not a striped file"));
            }
            return self.objects.open_file(ino, write).map(Some);
        }
        if self.stripe_moved(ino) {
            return Err(StoreError::Moved(ino));
        }
        self.stripe_copy_of(ino, write, create)
    }

    /// The file in `stripes/` of another node's striped file `ino`.
    fn stripe_copy_of(&self, ino: InodeId, write: bool, create: bool) -> Res<Option<File>> {
        let dir = self.stripes_dir()?;
        let mut flags = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        flags |= if write {
            OFlag::O_RDWR
        } else {
            OFlag::O_RDONLY
        };
        if create {
            flags |= OFlag::O_CREAT;
        }
        let name = copy_name(ino);
        match openat(
            dir.as_fd(),
            name.as_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(nix::errno::Errno::ENOENT) if !create => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The other nodes' striped files this node keeps units of (its
    /// `stripes/` copies).
    pub fn stripe_copies(&self) -> Res<Vec<InodeId>> {
        let Some(dir) = &self.stripes_dir else {
            return Ok(Vec::new());
        };
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut list = nix::dir::Dir::openat(dir.as_fd(), ".", flags, Mode::empty())?;
        Ok(list
            .iter()
            .flatten()
            .filter_map(|e| {
                let name = std::str::from_utf8(e.file_name().to_bytes()).ok()?;
                let ino = u64::from_str_radix(name, 16).ok()?;
                (name == copy_name(ino)).then_some(ino)
            })
            .collect())
    }

    /// Give striped file `ino` (owned here) layout `new` in place of
    /// `old`: a holder's units went to another node. The same unit, count
    /// and owner; EAGAIN when the layout is no longer `old`.
    pub(super) fn replace_layout(
        &self,
        ino: InodeId,
        old: &StripeLayout,
        new: &StripeLayout,
    ) -> Res<()> {
        if inode_node(ino) != self.node() {
            return Err(StoreError::NotHere(ino));
        }
        let same_shape = new.unit == old.unit
            && new.nodes.len() == old.nodes.len()
            && new.nodes.first() == Some(&self.node());
        if !same_shape || new.check().is_err() {
            return Err(StoreError::Invalid(
                "a new layout keeps the unit, the count and the owner",
            ));
        }
        let _g = self.stripes.lock(ino);
        if self.objects.layout(ino)?.as_ref() != Some(old) {
            return Err(StoreError::LayoutChanged(ino));
        }
        self.objects.replace_layout(ino, new)
    }

    /// Mark (or unmark, when a hand-over is undone) this node's units of
    /// `ino` as handed to another holder: their I/O here answers ESTALE.
    pub fn set_stripe_moved(&self, ino: InodeId, moved: bool) {
        let mut set = self.moved_stripes.lock().unwrap_or_else(|p| p.into_inner());
        if moved {
            set.insert(ino);
        } else {
            set.remove(&ino);
        }
    }

    fn stripe_moved(&self, ino: InodeId) -> bool {
        self.moved_stripes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&ino)
    }

    /// This node's units of striped file `old` become `new`'s (the file
    /// moved with its leaving owner): `old`'s I/O answers ESTALE from now,
    /// `new`'s no longer does; the copy of `old` gets `new`'s name too, or,
    /// when this node owns `new`, is merged into its object. The copy of
    /// `old` stays until the owner drops it (for an undo, or a pass started
    /// again). When this node owns `old` (that undo), only the marks change.
    pub(super) fn stripe_rename(&self, old: InodeId, new: InodeId) -> Res<()> {
        self.set_stripe_moved(old, true);
        self.set_stripe_moved(new, false);
        if inode_node(old) == self.node() {
            return Ok(());
        }
        if inode_node(new) == self.node() {
            let Some(src) = self.stripe_copy_of(old, false, false)? else {
                return Ok(()); // nothing written here yet
            };
            let dst = self
                .stripe_copy(new, true, false)?
                .ok_or(StoreError::NotFound)?;
            return merge_units(&src, &dst);
        }
        // A second name, not a rename: until `old` is gone for good (its
        // owner drops it once the pass is over), a pass started again
        // after a crash finds the units under `old` still.
        let dir = self.stripes_dir()?;
        match linkat(
            dir.as_fd(),
            copy_name(old).as_str(),
            dir.as_fd(),
            copy_name(new).as_str(),
            nix::fcntl::AtFlags::empty(), // the name itself, never followed
        ) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove this node's copy of `ino`, handed over (it stays marked).
    pub fn discard_moved_stripe(&self, ino: InodeId) -> Res<()> {
        if !self.stripe_moved(ino) {
            return Err(StoreError::Invalid("not a handed-over stripe copy"));
        }
        self.unlink_copy(ino)
    }

    fn stripes_dir(&self) -> Res<&OwnedFd> {
        self.stripes_dir.as_ref().ok_or(StoreError::Invalid(
            "no stripes directory (the store was never attached)",
        ))
    }

    /// This node's bytes of `offset..offset+len`; short where its copy ends
    /// (the client reads the rest as zeros, up to the file's size).
    pub(super) fn stripe_read(&self, ino: InodeId, offset: u64, len: u32) -> Res<Vec<u8>> {
        Ok(self.stripe_read_held(ino, offset, len)?.unwrap_or_default())
    }

    /// The same, `None` when this node has no copy: never written here, or
    /// handed to another node (which only krgd knows: the client's own
    /// reads ask it then).
    pub fn stripe_read_held(&self, ino: InodeId, offset: u64, len: u32) -> Res<Option<Vec<u8>>> {
        match self.stripe_copy(ino, false, false)? {
            Some(f) => read_at(&f, offset, len.min(16 << 20)).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn stripe_write(&self, ino: InodeId, offset: u64, data: &[u8]) -> Res<u32> {
        let f = self
            .stripe_copy(ino, true, true)?
            .ok_or(StoreError::NotFound)?;
        write_at(&f, offset, data)
    }

    pub(super) fn stripe_sync(&self, ino: InodeId) -> Res<()> {
        match self.stripe_copy(ino, false, false)? {
            Some(f) => sync_file(&f, false),
            None => Ok(()),
        }
    }

    /// Cut another node's file's copy here at `size`.
    pub(super) fn stripe_truncate(&self, ino: InodeId, size: u64) -> Res<()> {
        if inode_node(ino) == self.node() {
            return Err(StoreError::Invalid("the owner truncates through setattr"));
        }
        if let Some(f) = self.stripe_copy(ino, true, false)? {
            if f.metadata()?.len() > size {
                f.set_len(size)?;
            }
        }
        Ok(())
    }

    /// Forget the copy here of another node's striped file.
    pub(super) fn stripe_drop(&self, ino: InodeId) -> Res<()> {
        if inode_node(ino) == self.node() {
            return Err(StoreError::Invalid("the owner removes its file by unlink"));
        }
        self.unlink_copy(ino)
    }

    fn unlink_copy(&self, ino: InodeId) -> Res<()> {
        let name = copy_name(ino);
        match unlinkat(
            self.stripes_dir()?.as_fd(),
            name.as_str(),
            UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Make striped file `ino` at least `size` bytes long (never shorter:
    /// concurrent extensions are serialised by the inode's lock).
    pub(super) fn extend(&self, ino: InodeId, size: u64) -> Res<()> {
        if inode_node(ino) != self.node() {
            return Err(StoreError::NotHere(ino));
        }
        let _g = self.stripes.lock(ino);
        let f = self
            .stripe_copy(ino, true, false)?
            .ok_or(StoreError::NotFound)?;
        if f.metadata()?.len() < size {
            f.set_len(size)?;
        }
        Ok(())
    }
}

/// The units in copy `src` written into `dst` at the same offsets: its
/// data extents, without their blocks of zeros, so that nothing of `dst`'s
/// own units (at other offsets) is overwritten.
fn merge_units(src: &File, dst: &File) -> Res<()> {
    const BLOCK: usize = 4096;
    for (start, end) in data_extents(src)? {
        let mut off = start;
        while off < end {
            let want = (end - off).min(1 << 20) as u32;
            let data = read_at(src, off, want)?;
            if data.is_empty() {
                break;
            }
            for (i, block) in data.chunks(BLOCK).enumerate() {
                if block.iter().any(|b| *b != 0) {
                    write_at(dst, off + (i * BLOCK) as u64, block)?;
                }
            }
            off += data.len() as u64;
        }
    }
    Ok(())
}

/// What the mirror is told of this node's copies of other nodes' striped
/// files (`mirror`): their state, bytes and extents.
impl Store {
    /// The copy of another node's striped file `ino` kept here; `None`:
    /// there is none.
    pub fn stripe_state(&self, ino: InodeId) -> Res<Option<StripeState>> {
        match self.stripe_copy_of(ino, false, false)? {
            Some(f) => Ok(Some(stripe_state_of(&f)?)),
            None => Ok(None),
        }
    }

    /// The change telling the mirror what the copy of `ino` is now.
    pub fn stripe_change(&self, ino: InodeId) -> Res<MirrorChange> {
        Ok(MirrorChange::StripeCopy {
            ino,
            state: self.stripe_state(ino)?,
        })
    }

    /// Up to `len` bytes of the copy of `ino` at `offset` (empty if none).
    pub fn stripe_copy_data(&self, ino: InodeId, offset: u64, len: u32) -> Res<Vec<u8>> {
        match self.stripe_copy_of(ino, false, false)? {
            Some(f) => read_at(&f, offset, len),
            None => Ok(Vec::new()),
        }
    }

    /// Where the copy of `ino` holds data (its holes skipped): `(start,
    /// end)` ranges.
    pub fn stripe_extents(&self, ino: InodeId) -> Res<Vec<(u64, u64)>> {
        let Some(f) = self.stripe_copy_of(ino, false, false)? else {
            return Ok(Vec::new());
        };
        data_extents(&f)
    }
}

/// A copy's length and data time.
pub(crate) fn stripe_state_of(f: &File) -> Res<StripeState> {
    let m = nix::sys::stat::fstat(f.as_fd())?;
    Ok(StripeState {
        size: m.st_size as u64,
        mtime: Time {
            sec: m.st_mtime,
            nsec: m.st_mtime_nsec as u32,
        },
    })
}

/// The ranges of `f` that hold data (`SEEK_DATA`/`SEEK_HOLE`).
pub(crate) fn data_extents(f: &File) -> Res<Vec<(u64, u64)>> {
    let len = i64::try_from(f.metadata()?.len()).unwrap_or(i64::MAX);
    let mut v = Vec::new();
    let mut at = 0i64;
    while at < len {
        let start = match lseek(f.as_fd(), at, Whence::SeekData) {
            Ok(o) => o,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole is left
            Err(e) => return Err(e.into()),
        };
        let end = lseek(f.as_fd(), start, Whence::SeekHole)?;
        v.push((start as u64, end as u64));
        at = end;
    }
    Ok(v)
}
