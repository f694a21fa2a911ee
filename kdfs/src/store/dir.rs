//! Directory operations: lookup, create, entries added, removed and renamed,
//! rmdir and listings, each under the lock stripe of the directories it
//! changes. Entries are [`Entry`] symlinks inside the directory's object, so
//! adding, replacing and removing one are single atomic local operations
//! (symlink, rename, unlink), and a rename between two directories of this
//! node is one `renameat2`.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use krg_proto::kdfs::{inode_node, Attr, DirEntry, FileKind, InodeId, NewInode, RemoveWhat};

use super::entry::{check_name, check_replace, Entry};
use super::error::{Res, StoreError};
use super::{sys, Store};

impl Store {
    /// The entry `name` of the directory whose object is at `dir_path`.
    fn read_entry(&self, dir_path: &Path, name: &OsStr) -> Res<Option<Entry>> {
        match fs::read_link(dir_path.join(name)) {
            Ok(t) => Entry::decode(t.as_os_str().as_bytes())
                .map(Some)
                .ok_or_else(|| StoreError::Damaged("undecodable entry".into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The entry `name` of `dir` and, when its inode is kept here, its
    /// attributes (saving the client a second request).
    pub(super) fn lookup(&self, dir: InodeId, name: &[u8]) -> Res<(Entry, Option<Attr>)> {
        let name = check_name(name).map_err(|e| match e {
            StoreError::BadName => StoreError::NotFound,
            e => e,
        })?;
        let dp = self.objects.dir_path(dir)?;
        let e = self.read_entry(&dp, name)?.ok_or(StoreError::NotFound)?;
        let attr = if inode_node(e.ino) == self.node() {
            self.getattr(e.ino).ok()
        } else {
            None
        };
        Ok((e, attr))
    }

    /// Make a new inode and its entry `name` in `dir`, under the directory's
    /// lock. A set-group-id directory gives its group (and, to directories,
    /// its set-gid bit), as on ext4.
    pub(super) fn create(&self, dir: InodeId, name: &[u8], new: &NewInode) -> Res<Attr> {
        let name = check_name(name)?;
        let dp = self.objects.dir_path(dir)?;
        let _g = self.stripes.lock(dir);
        if self.read_entry(&dp, name)?.is_some() {
            return Err(StoreError::Exists);
        }
        let mut new = new.clone();
        let dm = fs::metadata(&dp)?;
        if dm.mode() & libc::S_ISGID != 0 {
            new.gid = dm.gid();
            if new.kind == FileKind::Dir {
                new.perm |= libc::S_ISGID as u16;
            }
        }
        let attr = self.make_inode(&new)?;
        let entry = Entry::new(attr.ino, attr.kind);
        if let Err(e) = std::os::unix::fs::symlink(entry.encode(), dp.join(name)) {
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
        let dp = self.objects.dir_path(dir)?;
        let _g = self.stripes.lock(dir);
        let old = self.read_entry(&dp, name)?;
        let new = Entry::new(ino, kind);
        let path = dp.join(name);
        match old {
            None => std::os::unix::fs::symlink(new.encode(), &path)?,
            Some(_) if !replace => return Err(StoreError::Exists),
            Some(old) => {
                check_replace(kind, old.kind)?;
                if old.ino == ino {
                    return Ok(None);
                }
                let tmp = self.objects.temp_symlink(&new.encode())?;
                if let Err(e) = fs::rename(&tmp, &path) {
                    let _ = fs::remove_file(&tmp);
                    return Err(e.into());
                }
            }
        }
        if new.is_dir() && !old.is_some_and(|o| o.is_dir()) {
            self.objects.adjust_nsub(dir, 1)?;
        }
        Ok(old.map(|o| o.named(name.as_bytes())))
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
        let dp = self.objects.dir_path(dir)?;
        let _g = self.stripes.lock(dir);
        let e = self.read_entry(&dp, name)?.ok_or(StoreError::NotFound)?;
        match (what, e.is_dir()) {
            (RemoveWhat::NonDir, true) => return Err(StoreError::IsDir),
            (RemoveWhat::Dir, false) => return Err(StoreError::NotDir),
            _ => {}
        }
        if expect.is_some_and(|x| x != e.ino) {
            return Err(StoreError::NotFound);
        }
        fs::remove_file(dp.join(name))?;
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
        let sp = self.objects.dir_path(src_dir)?;
        let dp = self.objects.dir_path(dst_dir)?;
        let g = self.stripes.lock_many(&[src_dir, dst_dir]);
        let moved = self.read_entry(&sp, sn)?.ok_or(StoreError::NotFound)?;
        let old = self.read_entry(&dp, dn)?;
        let (from, to) = (sp.join(sn), dp.join(dn));
        if flags & libc::RENAME_EXCHANGE != 0 {
            let old = old.ok_or(StoreError::NotFound)?;
            sys::rename2(&from, &to, libc::RENAME_EXCHANGE)?;
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
        fs::rename(&from, &to)?;
        let replaced = self.rename_nsub(src_dir, dst_dir, moved, old)?;
        drop(g);
        if inode_node(moved.ino) == self.node() {
            self.touch(moved.ino)?;
        }
        Ok(replaced)
    }

    /// Subdirectory counts after `moved` went from `src_dir` to `dst_dir`,
    /// replacing `old`.
    fn rename_nsub(
        &self,
        src_dir: InodeId,
        dst_dir: InodeId,
        moved: Entry,
        old: Option<Entry>,
    ) -> Res<Option<DirEntry>> {
        if moved.is_dir() && src_dir != dst_dir {
            self.objects.adjust_nsub(src_dir, -1)?;
            if !old.is_some_and(|o| o.is_dir()) {
                self.objects.adjust_nsub(dst_dir, 1)?;
            }
        }
        Ok(old.map(|o| o.named(b"")))
    }

    /// rmdir of directory `ino`'s object: ENOTEMPTY is the local rmdir's own
    /// (atomic) check.
    pub(super) fn remove_dir(&self, ino: InodeId) -> Res<()> {
        if Some(ino) == self.root {
            return Err(StoreError::Busy);
        }
        self.objects.remove_dir(ino)
    }

    /// The entries of `dir`, as a handle on a snapshot.
    pub(super) fn open_dir(&self, dir: InodeId) -> Res<u64> {
        let p = self.objects.dir_path(dir)?;
        let mut entries = Vec::new();
        for e in fs::read_dir(&p)? {
            let name = e?.file_name();
            // An entry removed since readdir saw it is simply skipped.
            if let Ok(Some(entry)) = self.read_entry(&p, &name) {
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
        fs::File::open(self.objects.dir_path(dir)?)?.sync_all()?;
        self.objects.sync()
    }
}
