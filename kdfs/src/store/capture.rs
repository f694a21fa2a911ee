//! What a change did to this store, as state for its mirror
//! ([`MirrorChange`]): the objects, entries and bytes a request touched,
//! read back after it was served. The mirror applies state, never the
//! operation, so the order of two changes to one object is all that
//! matters (krgd sends them in the order it read them).

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use krg_proto::kdfs::{
    inode_local, inode_node, FileKind, InodeId, KdfsRequest, KdfsResponse, MetaFile, MirrorChange,
    ObjectState, Time,
};
use nix::errno::Errno;
use nix::fcntl::{readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};

use super::error::{Res, StoreError};
use super::{object_name, sys, Store};
use crate::format::{INO_NEXT, ROOT_META, SUPERBLOCK};

/// Objects and entries one request touched (ids of any node; only this
/// store's are captured).
#[derive(Default)]
struct Touched {
    inodes: Vec<InodeId>,
    entries: Vec<(InodeId, Vec<u8>)>,
}

impl Touched {
    fn inode(&mut self, ino: InodeId) {
        if !self.inodes.contains(&ino) {
            self.inodes.push(ino);
        }
    }

    fn entry(&mut self, dir: InodeId, name: &[u8]) {
        self.inode(dir);
        self.entries.push((dir, name.to_vec()));
    }
}

/// The inode a response names, if any.
fn answered_inode(resp: &KdfsResponse) -> Option<InodeId> {
    match resp {
        KdfsResponse::Attr(a) | KdfsResponse::Created { attr: a, .. } => Some(a.ino),
        KdfsResponse::Entry { ino, .. } => Some(*ino),
        KdfsResponse::Removed(Some(e)) => Some(e.ino),
        KdfsResponse::Unlinked { entry, .. } => Some(entry.ino),
        _ => None,
    }
}

impl Store {
    /// What `req`, answered `resp` by this store, changed here. Empty for
    /// a request that changes nothing mirrored (reads, locks) or that
    /// failed.
    pub fn mirror_changes(&self, req: &KdfsRequest, resp: &KdfsResponse) -> Res<Vec<MirrorChange>> {
        use KdfsRequest as Q;
        if matches!(resp, KdfsResponse::Errno(_)) {
            return Ok(Vec::new());
        }
        let mut t = Touched::default();
        let mut out = Vec::new();
        match req {
            Q::AddEntry { dir, name, .. }
            | Q::RemoveEntry { dir, name, .. }
            | Q::Unlink { dir, name } => t.entry(*dir, name),
            Q::ReplaceEntry {
                dir,
                name,
                old,
                new,
                ..
            } => {
                t.entry(*dir, name);
                t.inode(*old);
                t.inode(*new);
            }
            Q::Rename {
                src_dir,
                src_name,
                dst_dir,
                dst_name,
                ..
            } => {
                t.entry(*src_dir, src_name);
                t.entry(*dst_dir, dst_name);
                if let Ok((e, _)) = self.lookup(*dst_dir, dst_name) {
                    t.inode(e.ino);
                }
            }
            Q::StripeWrite { ino, offset, data } if !self.is_mine(*ino) => {
                out.push(MirrorChange::StripeData {
                    ino: *ino,
                    offset: *offset,
                    data: data.clone(),
                });
                // its data time: what the next full copy compares
                out.push(self.stripe_change(*ino)?);
            }
            // (a striped file's owner keeps its units in the object)
            Q::Write {
                ino, offset, data, ..
            }
            | Q::StripeWrite { ino, offset, data } => {
                if self.is_mine(*ino) {
                    out.push(MirrorChange::Data {
                        local: inode_local(*ino),
                        offset: *offset,
                        data: data.clone(),
                    });
                }
                t.inode(*ino);
            }
            Q::Fsync { ino, .. } | Q::FsyncDir { ino } => {
                t.inode(*ino);
                out.extend(self.objects_of(&t)?);
                if self.is_mine(*ino) {
                    out.push(MirrorChange::Sync {
                        local: Some(inode_local(*ino)),
                    });
                }
                return Ok(out);
            }
            Q::SyncStore => return Ok(vec![MirrorChange::Sync { local: None }]),
            Q::StripeTruncate { ino, .. } => out.push(self.stripe_change(*ino)?),
            Q::StripeDrop { ino } => out.push(MirrorChange::StripeCopy {
                ino: *ino,
                state: None,
            }),
            Q::StripeSync { ino } if self.is_mine(*ino) => {
                return Ok(vec![MirrorChange::Sync {
                    local: Some(inode_local(*ino)),
                }])
            }
            Q::StripeSync { ino } => return Ok(vec![MirrorChange::StripeSync { ino: *ino }]),
            Q::StripeRename { old, .. } if self.is_mine(*old) => return Ok(Vec::new()),
            Q::StripeRename { new, .. } if self.is_mine(*new) => {
                // The units were merged into the file's object, anywhere
                // in it: copied again (only what differs is sent).
                return Err(StoreError::Invalid(
                    "units merged into a striped file's object (the mirror is copied again)",
                ));
            }
            Q::StripeRename { old, new } => {
                return Ok(vec![MirrorChange::StripeLink {
                    old: *old,
                    new: *new,
                }])
            }
            Q::SetRoot { .. } => return self.meta_images(),
            Q::SetAttr { ino, .. }
            | Q::IncLink { ino }
            | Q::DecLink { ino }
            | Q::Touch { ino }
            | Q::RemoveDir { ino }
            | Q::Release { ino, .. }
            | Q::Fallocate { ino, .. }
            | Q::SetXattr { ino, .. }
            | Q::RemoveXattr { ino, .. }
            | Q::SetLayout { ino, .. }
            | Q::ReplaceLayout { ino, .. }
            | Q::Extend { ino, .. }
            | Q::StripeAdopt { ino } => t.inode(*ino),
            Q::SetStripePolicy { dir, .. } => t.inode(*dir),
            Q::SetInodeReplicas { ino, .. } => t.inode(*ino),
            Q::ReleaseMany { handles } => handles.iter().for_each(|(ino, _)| t.inode(*ino)),
            // (a new inode may have reserved a block of numbers: the
            // mirror that takes the store over goes on after them)
            Q::MakeInode { .. } => out.extend(self.ino_next_image()?),
            Q::Create { dir, name, .. } => {
                t.entry(*dir, name);
                out.extend(self.ino_next_image()?);
            }
            _ => return Ok(Vec::new()),
        }
        if let Some(ino) = answered_inode(resp) {
            t.inode(ino);
        }
        // A write's bytes and a directory's entries before the objects'
        // attributes: changing them moves the mirror's data times, which
        // the attributes set back.
        let mut changes = out;
        for (dir, name) in &t.entries {
            if self.is_mine(*dir) {
                changes.push(MirrorChange::Entries {
                    local: inode_local(*dir),
                    entries: vec![(name.clone(), self.entry_target(*dir, name)?)],
                    complete: false,
                });
            }
        }
        changes.extend(self.objects_of(&t)?);
        Ok(changes)
    }

    fn is_mine(&self, ino: InodeId) -> bool {
        inode_node(ino) == self.node()
    }

    fn objects_of(&self, t: &Touched) -> Res<Vec<MirrorChange>> {
        let mut v = Vec::new();
        for ino in t.inodes.iter().filter(|i| self.is_mine(**i)) {
            let local = inode_local(*ino);
            v.push(MirrorChange::Object {
                local,
                state: self.object_state(local)?,
            });
        }
        Ok(v)
    }

    /// Object `local` as the mirror keeps it; `None`: there is none.
    pub fn object_state(&self, local: u64) -> Res<Option<ObjectState>> {
        let name = object_name(local);
        let fd = self.objects.fd();
        let m = match fstatat(fd, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(m) => m,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let kind = FileKind::from_mode(m.st_mode).unwrap_or(FileKind::File);
        let target = match kind {
            FileKind::Symlink => Some(readlinkat(fd, name.as_str())?.into_encoded_bytes()),
            _ => None,
        };
        let os = OsStr::new(&name);
        let mut xattrs = Vec::new();
        for key in sys::list_xattr(fd, os)?
            .split(|b| *b == 0)
            .filter(|k| !k.is_empty())
        {
            let k = std::ffi::CString::new(key).map_err(|_| StoreError::Invalid("xattr name"))?;
            match sys::get_xattr(fd, os, &k) {
                Ok(value) => xattrs.push((key.to_vec(), value)),
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(ObjectState {
            kind,
            perm: (m.st_mode & 0o7777) as u16,
            uid: m.st_uid,
            gid: m.st_gid,
            size: m.st_size as u64,
            atime: Time {
                sec: m.st_atime,
                nsec: m.st_atime_nsec as u32,
            },
            mtime: Time {
                sec: m.st_mtime,
                nsec: m.st_mtime_nsec as u32,
            },
            rdev: m.st_rdev,
            target,
            xattrs,
        }))
    }

    /// What entry `name` of directory `dir` encodes now, if it exists.
    fn entry_target(&self, dir: InodeId, name: &[u8]) -> Res<Option<String>> {
        let fd = match self.objects.open_dir(dir) {
            Ok(fd) => fd,
            Err(StoreError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        read_target(&fd, OsStr::from_bytes(name))
    }

    /// Every entry of directory `local`, as the mirror keeps them.
    pub fn all_entries(&self, local: u64) -> Res<Vec<(Vec<u8>, Option<String>)>> {
        let ino = krg_proto::kdfs::inode_id(self.node(), local);
        let fd = self.objects.open_dir(ino)?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
        let mut d = nix::dir::Dir::openat(fd.as_fd(), ".", flags, Mode::empty())?;
        let mut v = Vec::new();
        for e in d.iter() {
            let name = e?.file_name().to_bytes().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            if let Some(t) = read_target(&fd, OsStr::from_bytes(&name))? {
                v.push((name, Some(t)));
            }
        }
        Ok(v)
    }

    /// The node-local numbers of every object of this store.
    pub fn object_locals(&self) -> Res<Vec<u64>> {
        list_objects(self.objects.fd())
    }

    /// The generation this store was last served as: a fresh store starts
    /// at a random one, so that a reformatted node never meets a decision
    /// about its former store (`mirror`).
    pub fn generation(&self) -> Res<u32> {
        match self.top.read_generation()? {
            Some(g) => Ok(g),
            None => {
                let g = rand::random::<u32>() >> 2;
                self.set_generation(g)?;
                Ok(g)
            }
        }
    }

    /// Whether this store was ever served as a mirrored store (it has a
    /// generation): one formatted again after its disk was lost has not.
    pub fn served_before(&self) -> Res<bool> {
        Ok(self.top.read_generation()?.is_some())
    }

    pub fn set_generation(&self, generation: u32) -> Res<()> {
        Ok(self.top.write_generation(generation)?)
    }

    /// The store's meta-files, as they are on disk.
    pub fn meta_images(&self) -> Res<Vec<MirrorChange>> {
        let mut v = Vec::new();
        for (name, file) in [
            (MetaFile::Superblock, SUPERBLOCK),
            (MetaFile::RootMeta, ROOT_META),
            (MetaFile::InoNext, INO_NEXT),
        ] {
            let image = self.top.read_optional(file)?;
            v.push(MirrorChange::Meta { name, image });
        }
        Ok(v)
    }

    fn ino_next_image(&self) -> Res<Option<MirrorChange>> {
        Ok(Some(MirrorChange::Meta {
            name: MetaFile::InoNext,
            image: self.top.read_optional(INO_NEXT)?,
        }))
    }

    /// Where regular file `local` holds data (its holes skipped).
    pub fn object_extents(&self, local: u64) -> Res<Vec<(u64, u64)>> {
        let ino = krg_proto::kdfs::inode_id(self.node(), local);
        super::striping::data_extents(&self.objects.open_file(ino, false)?)
    }

    /// Up to `len` bytes of regular file `local` at `offset` (fewer at its end).
    pub fn object_data(&self, local: u64, offset: u64, len: u32) -> Res<Vec<u8>> {
        let ino = krg_proto::kdfs::inode_id(self.node(), local);
        let file = self.objects.open_file(ino, false)?;
        super::read_at(&file, offset, len)
    }
}

/// The entry a symlink of a directory object encodes; `None`: no such name.
fn read_target(dir: &OwnedFd, name: &OsStr) -> Res<Option<String>> {
    match readlinkat(dir.as_fd(), name) {
        Ok(t) => Ok(t.into_string().ok()),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Store {
    /// Copies of this store's files (1: not mirrored).
    pub fn replicas(&self) -> u8 {
        self.replicas.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Keep `copies` copies of the store's files from now on: written in
    /// the superblock, then in effect (its open handles go on).
    pub fn set_replicas(&self, copies: u8) -> Res<()> {
        // (under the root's lock: `set_root` writes the superblock too)
        let root = self.root.lock().unwrap_or_else(|p| p.into_inner());
        let sb = crate::format::Superblock {
            root_node: root.0,
            replicas: copies,
            layout: self.sb.layout.max(crate::format::LAYOUT_VERSION),
            ..self.sb.clone()
        };
        self.top.write_superblock(&sb)?;
        self.replicas
            .store(copies, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// The store's top directory (a mirror kept in it opens its own).
    pub(crate) fn top_dir(&self) -> &crate::format::StoreDir {
        &self.top
    }
}

/// The objects of an `inodes/` directory, by node-local number.
pub(crate) fn list_objects(inodes: std::os::fd::BorrowedFd) -> Res<Vec<u64>> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
    let mut d = nix::dir::Dir::openat(inodes, ".", flags, Mode::empty())?;
    let mut v = Vec::new();
    for e in d.iter() {
        let e = e?;
        if let Some(local) = e
            .file_name()
            .to_str()
            .ok()
            .and_then(|n| u64::from_str_radix(n, 16).ok())
        {
            v.push(local);
        }
    }
    Ok(v)
}
