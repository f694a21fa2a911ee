//! Directory operations: lookup, create, entries added, removed and renamed,
//! rmdir and listings, each under the lock stripe of the directories it
//! changes. Entries are [`Entry`] symlinks inside the directory's object, so
//! adding, replacing and removing one are single atomic local operations
//! (symlink, rename, unlink), and a rename between two directories of this
//! node is one `renameat2`.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use krg_proto::kdfs::{inode_node, Attr, DirEntry, FileKind, InodeId, NewInode, RemoveWhat};
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, renameat, renameat2, AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{fstat, fstatat, futimens, Mode};
use nix::sys::time::TimeSpec;
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};

use super::entry::{check_name, check_replace, decoded, not_written_here, Entry};
use super::error::{Res, StoreError};
use super::Store;

/// The object of a directory, open: its entries are read and changed
/// relative to this descriptor.
struct DirObj {
    ino: InodeId,
    fd: OwnedFd,
}

impl DirObj {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Store {
    fn open_dir_obj(&self, ino: InodeId) -> Res<DirObj> {
        Ok(DirObj {
            ino,
            fd: self.objects.open_dir(ino)?,
        })
    }

    /// Entry `name` of `dir`, if there is one and the store wrote it: a
    /// symlink owned by root, with one link, whose target is exactly an
    /// encoded entry. Anything else there (a user who could once reach the
    /// store planted it, or the disk is damaged) is refused with EIO and
    /// logged: never followed, never removed. The checks and the read are
    /// made on one `O_PATH` descriptor of the symlink itself, so that it
    /// cannot be swapped in between.
    fn read_entry(&self, dir: &DirObj, name: &OsStr) -> Res<Option<Entry>> {
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let link = match openat(dir.fd(), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if let Some(why) = not_written_here(&fstat(&link)?) {
            return Err(StoreError::forged(dir.ino, name, why));
        }
        let target = readlinkat(&link, "")?.into_encoded_bytes();
        decoded(&target)
            .map(Some)
            .map_err(|why| StoreError::forged(dir.ino, name, why))
    }

    /// [`read_entry`](Self::read_entry) for a listing: the same checks, by
    /// name (two system calls instead of four; a listing reads every entry
    /// of the directory). An entry swapped between the two could show in
    /// a listing, but nothing is ever done through one: every use of a
    /// name (lookup, open, unlink, rename) reads it with `read_entry`.
    fn list_entry(&self, dir: &DirObj, name: &OsStr) -> Res<Option<Entry>> {
        let st = match fstatat(dir.fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if let Some(why) = not_written_here(&st) {
            return Err(StoreError::forged(dir.ino, name, why));
        }
        let target = match readlinkat(dir.fd(), name) {
            Ok(t) => t.into_encoded_bytes(),
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::EINVAL) => {
                let why = "replaced by something else than a symlink";
                return Err(StoreError::forged(dir.ino, name, why));
            }
            Err(e) => return Err(e.into()),
        };
        decoded(&target)
            .map(Some)
            .map_err(|why| StoreError::forged(dir.ino, name, why))
    }

    /// Refuse entry `e` of `dir` if its inode is kept here as another kind of
    /// object than the entry says (a missing object is for the caller).
    fn check_kind(&self, dir: &DirObj, name: &OsStr, e: Entry) -> Res<()> {
        if inode_node(e.ino) != self.node() {
            return Ok(());
        }
        match self.objects.kind(e.ino) {
            Ok(k) if k != e.kind => Err(StoreError::forged(
                dir.ino,
                name,
                format!("says {:?} {:x}, which is a {k:?}", e.kind, e.ino),
            )),
            _ => Ok(()),
        }
    }

    /// The entry `name` of `dir` and, when its inode is kept here, its
    /// attributes (saving the client a second request).
    pub(super) fn lookup(&self, dir: InodeId, name: &[u8]) -> Res<(Entry, Option<Attr>)> {
        let name = check_name(name).map_err(|e| match e {
            StoreError::BadName => StoreError::NotFound,
            e => e,
        })?;
        let d = self.open_dir_obj(dir)?;
        let e = self.read_entry(&d, name)?.ok_or(StoreError::NotFound)?;
        let attr = if inode_node(e.ino) == self.node() {
            self.getattr(e.ino).ok()
        } else {
            None
        };
        if attr.as_ref().is_some_and(|a| a.kind != e.kind) {
            self.check_kind(&d, name, e)?;
        }
        Ok((e, attr))
    }

    /// Make a new inode and its entry `name` in `dir`, under the directory's
    /// lock. A set-group-id directory gives its group (and, to directories,
    /// its set-gid bit), as on ext4.
    pub(super) fn create(&self, dir: InodeId, name: &[u8], new: &NewInode) -> Res<Attr> {
        self.create_numbered(dir, name, new, None)
    }

    /// [`create`](Self::create), the new inode numbered `ino` when given
    /// (a number of a directory's loan) instead of by the allocator.
    pub(super) fn create_numbered(
        &self,
        dir: InodeId,
        name: &[u8],
        new: &NewInode,
        ino: Option<InodeId>,
    ) -> Res<Attr> {
        let name = check_name(name)?;
        let d = self.open_dir_obj(dir)?;
        let _g = self.stripes.lock(dir);
        if self.read_entry(&d, name)?.is_some() {
            return Err(StoreError::Exists);
        }
        let mut new = new.clone();
        let dm = fstat(d.fd())?;
        if dm.st_mode & libc::S_ISGID != 0 {
            new.gid = dm.st_gid;
            if new.kind == FileKind::Dir {
                new.perm |= libc::S_ISGID as u16;
            }
        }
        let attr = match ino {
            Some(ino) => self.objects.make(ino, &new)?,
            None => self.make_inode(&new)?,
        };
        super::crash::point("create-entry");
        let entry = Entry::new(attr.ino, attr.kind);
        if let Err(e) = symlinkat(entry.encode().as_str(), d.fd(), name) {
            let _ = self.objects.remove(attr.ino);
            return Err(e.into());
        }
        if entry.is_dir() {
            self.objects.adjust_nsub(dir, 1)?;
        }
        Ok(attr)
    }

    /// Enter `ino` as `name` in `dir` (replacing an entry if `replace`);
    /// the replaced entry, if any.
    pub(super) fn add_entry(
        &self,
        dir: InodeId,
        name: &[u8],
        ino: InodeId,
        kind: FileKind,
        replace: bool,
    ) -> Res<Option<DirEntry>> {
        let name = check_name(name)?;
        let d = self.open_dir_obj(dir)?;
        let _g = self.stripes.lock(dir);
        let old = self.read_entry(&d, name)?;
        let new = Entry::new(ino, kind);
        match old {
            None => symlinkat(new.encode().as_str(), d.fd(), name)?,
            Some(_) if !replace => return Err(StoreError::Exists),
            Some(old) => {
                check_replace(kind, old.kind)?;
                if old.ino == ino {
                    return Ok(None);
                }
                self.replace_entry(&d, name, new)?;
            }
        }
        if new.is_dir() && !old.is_some_and(|o| o.is_dir()) {
            self.objects.adjust_nsub(dir, 1)?;
        }
        Ok(old.map(|o| o.named(name.as_bytes())))
    }

    /// Make entry `name` of `dir` name `new` instead of `old` (ENOENT if it
    /// names anything else now), under the directory's lock. Both are of
    /// `kind`, so the subdirectory count does not change; nor do the
    /// directory's times (the name is the same file to its users).
    pub(super) fn replace_entry_if(
        &self,
        dir: InodeId,
        name: &[u8],
        old: InodeId,
        new: InodeId,
        kind: FileKind,
    ) -> Res<()> {
        let name = check_name(name)?;
        let d = self.open_dir_obj(dir)?;
        let _g = self.stripes.lock(dir);
        match self.read_entry(&d, name)? {
            Some(e) if e.ino == old && e.kind == kind => {
                let times = fstat(d.fd())?;
                self.replace_entry(&d, name, Entry::new(new, kind))?;
                let at = TimeSpec::new(times.st_atime, times.st_atime_nsec);
                let mt = TimeSpec::new(times.st_mtime, times.st_mtime_nsec);
                Ok(futimens(d.fd(), &at, &mt)?)
            }
            _ => Err(StoreError::NotFound),
        }
    }

    /// Atomically make `name` in `d` stand for `new`: a symlink made aside
    /// in `inodes/` and renamed over it.
    fn replace_entry(&self, d: &DirObj, name: &OsStr, new: Entry) -> Res<()> {
        let tmp = self.objects.temp_symlink(&new.encode())?;
        if let Err(e) = renameat(self.objects.fd(), tmp.as_str(), d.fd(), name) {
            self.objects.remove_temp(&tmp);
            return Err(e.into());
        }
        Ok(())
    }

    /// Remove entry `name` of `dir` if it is `what` (and names `expect`).
    pub(super) fn remove_entry(
        &self,
        dir: InodeId,
        name: &[u8],
        what: RemoveWhat,
        expect: Option<InodeId>,
    ) -> Res<DirEntry> {
        let name = check_name(name)?;
        let d = self.open_dir_obj(dir)?;
        let _g = self.stripes.lock(dir);
        let e = self.read_entry(&d, name)?.ok_or(StoreError::NotFound)?;
        match (what, e.is_dir()) {
            (RemoveWhat::NonDir, true) => return Err(StoreError::IsDir),
            (RemoveWhat::Dir, false) => return Err(StoreError::NotDir),
            _ => {}
        }
        if expect.is_some_and(|x| x != e.ino) {
            return Err(StoreError::NotFound);
        }
        // The caller drops a link of what the entry names: it must be so.
        self.check_kind(&d, name, e)?;
        unlinkat(d.fd(), name, UnlinkatFlags::NoRemoveDir)?;
        if e.is_dir() {
            self.objects.adjust_nsub(dir, -1)?;
        }
        Ok(e.named(name.as_bytes()))
    }

    /// Rename within this node: one `renameat2` of the entry. The replaced
    /// entry, if any, for the caller to drop its link.
    pub(super) fn rename(
        &self,
        src_dir: InodeId,
        src_name: &[u8],
        dst_dir: InodeId,
        dst_name: &[u8],
        flags: u32,
    ) -> Res<Option<DirEntry>> {
        let sn = check_name(src_name)?;
        let dn = check_name(dst_name)?;
        let (sd, dd) = (self.open_dir_obj(src_dir)?, self.open_dir_obj(dst_dir)?);
        let g = self.stripes.lock_many(&[src_dir, dst_dir]);
        let moved = self.read_entry(&sd, sn)?.ok_or(StoreError::NotFound)?;
        let old = self.read_entry(&dd, dn)?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            let old = old.ok_or(StoreError::NotFound)?;
            renameat2(sd.fd(), sn, dd.fd(), dn, RenameFlags::RENAME_EXCHANGE)?;
            if src_dir != dst_dir && moved.is_dir() != old.is_dir() {
                let d = if moved.is_dir() { 1 } else { -1 };
                self.objects.adjust_nsub(dst_dir, d)?;
                self.objects.adjust_nsub(src_dir, -d)?;
            }
            return Ok(None);
        }
        if let Some(old) = old {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(StoreError::Exists);
            }
            if old.ino == moved.ino {
                // Two links of one file: POSIX says do nothing.
                return Ok(None);
            }
            check_replace(moved.kind, old.kind)?;
        }
        renameat(sd.fd(), sn, dd.fd(), dn)?;
        let replaced = self.rename_nsub(src_dir, dst_dir, moved, old)?;
        drop(g);
        if inode_node(moved.ino) == self.node() {
            self.touch(moved.ino)?;
        }
        Ok(replaced)
    }

    /// Subdirectory counts after `moved` went from `src_dir` to `dst_dir`,
    /// replacing `old`: a directory moved leaves `src_dir`'s count and
    /// joins `dst_dir`'s, and a directory it replaced leaves `dst_dir`'s —
    /// also when both are one directory (found by the random operations in
    /// bursts: `mv e d` of two subdirectories left their parent counting
    /// both).
    fn rename_nsub(
        &self,
        src_dir: InodeId,
        dst_dir: InodeId,
        moved: Entry,
        old: Option<Entry>,
    ) -> Res<Option<DirEntry>> {
        let moved_dir = i64::from(moved.is_dir());
        let old_dir = i64::from(old.is_some_and(|o| o.is_dir()));
        let (src, dst) = if src_dir == dst_dir {
            (0, -old_dir)
        } else {
            (-moved_dir, moved_dir - old_dir)
        };
        for (dir, delta) in [(src_dir, src), (dst_dir, dst)] {
            if delta != 0 {
                self.objects.adjust_nsub(dir, delta)?;
            }
        }
        Ok(old.map(|o| o.named(b"")))
    }

    /// rmdir of directory `ino`'s object: ENOTEMPTY is the local rmdir's own
    /// (atomic) check.
    pub(super) fn remove_dir(&self, ino: InodeId) -> Res<()> {
        if Some(ino) == self.root() {
            return Err(StoreError::Busy);
        }
        self.objects.remove_dir(ino)
    }

    /// The entries of `dir`, as a handle on a snapshot. Entries the store
    /// did not write are left out (and logged).
    pub(super) fn open_dir(&self, dir: InodeId) -> Res<u64> {
        let d = self.open_dir_obj(dir)?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        // A description of its own: the listing's offset is not shared.
        let mut list = nix::dir::Dir::openat(d.fd(), ".", flags, Mode::empty())?;
        let mut entries = Vec::new();
        for e in list.iter() {
            let name = OsStr::from_bytes(e?.file_name().to_bytes()).to_owned();
            if matches!(name.as_bytes(), b"." | b"..") {
                continue;
            }
            // An entry removed since readdir saw it is simply skipped.
            if let Ok(Some(entry)) = self.list_entry(&d, &name) {
                entries.push(entry.named(name.as_bytes()));
            }
        }
        Ok(self.handles.add_dir(entries))
    }

    /// Up to `max` entries of directory handle `fh`, from `offset`.
    pub(super) fn read_dir(&self, fh: u64, offset: u64, max: u32) -> Res<Vec<DirEntry>> {
        let entries = self.handles.dir(fh)?;
        let start = (offset as usize).min(entries.len());
        let end = start.saturating_add(max as usize).min(entries.len());
        Ok(entries[start..end].to_vec())
    }

    /// fsync the entries of `dir` and the inode table.
    pub(super) fn fsync_dir(&self, dir: InodeId) -> Res<()> {
        nix::unistd::fsync(self.open_dir_obj(dir)?.fd())?;
        self.objects.sync()
    }
}
