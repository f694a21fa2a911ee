//! A mirror on disk: `DIR/mirrors/<owner>/` in this node's store, laid out
//! as the owner's store (its `stripes/` copies of other nodes' striped
//! files included), so that [`Store::view`](crate::store::Store::view)
//! serves it as the owner would. Only [`MirrorCopy::apply`] changes it;
//! every call is relative to descriptors opened here and follows no
//! symlink (entries are symlinks, objects may be).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use krg_proto::kdfs::{
    FileKind, InodeId, MetaFile, MirrorChange, MirrorInventory, MirroredObject, ObjectState,
    StripeState, Time,
};
use krg_proto::NodeId;
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, mkdirat, mknodat, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::format::{open_dir_at, StoreDir, INODES, INO_NEXT, ROOT_META, SUPERBLOCK};
use crate::store::entry::{check_name, Entry};
use crate::store::error::{Res, StoreError};
use crate::store::striping::copy_name as stripe_name;
use crate::store::{object_name, sys};
use crate::KdfsError;

/// Where a store keeps the mirrors of other nodes' stores.
pub const MIRRORS: &str = "mirrors";

/// In a mirror's directory while it is a complete copy (its owner's full
/// copy ended, and no other began since): the owner's generation then.
const COMPLETE: &str = "copy.complete";

/// One owner's mirror in this node's store.
pub struct MirrorCopy {
    owner: NodeId,
    top: StoreDir,
    inodes: OwnedFd,
    stripes: OwnedFd,
}

fn private() -> Mode {
    Mode::from_bits_truncate(0o700)
}

/// `mkdir name` in `dir` (0700) unless it exists; opened.
fn make_dir_at(dir: BorrowedFd, name: &str, shown: &Path) -> Result<OwnedFd, KdfsError> {
    match mkdirat(dir, name, private()) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(KdfsError::io(shown, e.into())),
    }
    let fd = open_dir_at(dir, name, shown)?;
    nix::sys::stat::fchmod(fd.as_fd(), private()).map_err(|e| KdfsError::io(shown, e.into()))?;
    Ok(fd)
}

fn no_follow(flags: OFlag) -> OFlag {
    flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn timespec(t: Time) -> TimeSpec {
    TimeSpec::new(t.sec, i64::from(t.nsec))
}

impl MirrorCopy {
    /// The mirror of `owner` in the store at `store_dir` (which this
    /// node's krgd serves, and checked private), made if missing.
    pub fn open(store_dir: &StoreDir, owner: NodeId) -> Result<Self, KdfsError> {
        let base = store_dir.path().join(MIRRORS);
        let mirrors = make_dir_at(store_dir.fd(), MIRRORS, &base)?;
        let path = base.join(owner.to_string());
        drop(make_dir_at(mirrors.as_fd(), &owner.to_string(), &path)?);
        let top = StoreDir::open(&path)?;
        let inodes = make_dir_at(top.fd(), INODES, &path.join(INODES))?;
        Self::with_stripes(owner, top, inodes)
    }

    fn with_stripes(owner: NodeId, top: StoreDir, inodes: OwnedFd) -> Result<Self, KdfsError> {
        let stripes = top.open_stripes(true)?.ok_or_else(|| {
            KdfsError::Invalid(format!("{}: no stripes directory", top.path().display()))
        })?;
        Ok(Self {
            owner,
            top,
            inodes,
            stripes,
        })
    }

    /// Node `owner`'s own store at `top`, as a copy to write into: the
    /// store its mirror served while the node was down, copied back
    /// before the node serves it again (nothing else uses it meanwhile).
    pub fn own(top: &StoreDir, owner: NodeId) -> Result<Self, KdfsError> {
        let top = StoreDir::open(top.path())?;
        let inodes = open_dir_at(top.fd(), INODES, &top.path().join(INODES))?;
        Self::with_stripes(owner, top, inodes)
    }

    /// The mirror of `owner`'s store kept in `host` (this node's served
    /// store), made if missing.
    pub fn kept_in(host: &crate::store::Store, owner: NodeId) -> Result<Self, KdfsError> {
        Self::open(host.top_dir(), owner)
    }

    /// `store` itself as a copy to write into (see [`MirrorCopy::own`]).
    pub fn own_of(store: &crate::store::Store) -> Result<Self, KdfsError> {
        Self::own(store.top_dir(), store.superblock().node)
    }

    /// Where the copy is (a directory [`Store::view`](crate::store::Store::view) opens).
    pub fn path(&self) -> PathBuf {
        self.top.path().to_path_buf()
    }

    pub fn owner(&self) -> NodeId {
        self.owner
    }

    /// The mirror of `owner` kept in `host`, if there is one (none is made).
    pub fn existing_in(host: &crate::store::Store, owner: NodeId) -> Option<Self> {
        let path = host.top_dir().path().join(MIRRORS).join(owner.to_string());
        if !path.join(SUPERBLOCK).exists() {
            return None;
        }
        Self::open(host.top_dir(), owner).ok()
    }

    /// Record that the copy is complete, as generation `generation` of its
    /// owner's store (`None`: a full copy begins, it is not).
    pub fn set_complete(&self, generation: Option<u32>) -> Result<(), KdfsError> {
        let image = generation.map(|g| format!("{g}\n").into_bytes());
        self.top.put_image(COMPLETE, image.as_deref())
    }

    /// The generation the copy was complete as, if it is.
    pub fn complete(&self) -> Option<u32> {
        let image = self.top.read_optional(COMPLETE).ok()??;
        std::str::from_utf8(&image).ok()?.trim().parse().ok()
    }

    /// What the copy holds: each object's kind, size and data time, and
    /// each copy of a striped file's length and data time.
    pub fn inventory(&self) -> Res<MirrorInventory> {
        Ok(MirrorInventory {
            objects: self.objects()?,
            stripes: self.stripe_copies()?,
        })
    }

    fn objects(&self) -> Res<Vec<MirroredObject>> {
        let mut v = Vec::new();
        for local in crate::store::list_objects(self.inodes.as_fd())? {
            let name = object_name(local);
            let flags = AtFlags::AT_SYMLINK_NOFOLLOW;
            let Ok(m) = fstatat(self.inodes.as_fd(), name.as_str(), flags) else {
                continue;
            };
            v.push(MirroredObject {
                local,
                kind: FileKind::from_mode(m.st_mode).unwrap_or(FileKind::File),
                size: m.st_size as u64,
                mtime: Time {
                    sec: m.st_mtime,
                    nsec: m.st_mtime_nsec as u32,
                },
                replicas: self.own_count(&name),
            });
        }
        Ok(v)
    }

    /// Object `name`'s own count of copies, if it has one.
    fn own_count(&self, name: &str) -> Option<u8> {
        let key = CString::new(crate::store::OWN_XATTR).ok()?;
        let v = sys::get_xattr(self.inodes.as_fd(), OsStr::new(name), &key).ok()?;
        crate::store::count_in(&v)
    }

    /// Apply `changes` in order. `strict`: a change to an object or a
    /// directory the copy lacks is an error (the copy missed something:
    /// the owner copies everything again); otherwise it is skipped (a full
    /// copy under way brings it later).
    pub fn apply(&self, changes: &[MirrorChange], strict: bool) -> Res<()> {
        for c in changes {
            match self.apply_one(c) {
                Err(StoreError::NotFound) if !strict => {}
                r => r?,
            }
        }
        Ok(())
    }

    fn apply_one(&self, c: &MirrorChange) -> Res<()> {
        match c {
            MirrorChange::Object { local, state: None } => self.remove_object(&object_name(*local)),
            MirrorChange::Object {
                local,
                state: Some(st),
            } => self.put_object(&object_name(*local), st),
            MirrorChange::Entries {
                local,
                entries,
                complete,
            } => self.put_entries(&object_name(*local), entries, *complete),
            MirrorChange::Data {
                local,
                offset,
                data,
            } => {
                let f = self.open_file(&object_name(*local))?;
                f.write_all_at(&data.0, *offset)?;
                Ok(())
            }
            MirrorChange::Meta { name, image } => {
                let file = match name {
                    MetaFile::Superblock => SUPERBLOCK,
                    MetaFile::RootMeta => ROOT_META,
                    MetaFile::InoNext => INO_NEXT,
                };
                Ok(self.top.put_image(file, image.as_deref())?)
            }
            MirrorChange::Sync { local: Some(l) } => {
                let flags = no_follow(OFlag::O_RDONLY);
                let fd = openat(
                    self.inodes.as_fd(),
                    object_name(*l).as_str(),
                    flags,
                    Mode::empty(),
                )
                .map_err(missing)?;
                Ok(nix::unistd::fsync(fd.as_fd())?)
            }
            MirrorChange::Sync { local: None } => {
                nix::unistd::syncfs(self.inodes.as_fd())?;
                Ok(())
            }
            MirrorChange::StripeData { ino, offset, data } => {
                let f = self.open_stripe(*ino, true)?;
                f.write_all_at(&data.0, *offset)?;
                Ok(())
            }
            MirrorChange::StripeCopy { ino, state: None } => ignore_missing(unlinkat(
                self.stripes.as_fd(),
                stripe_name(*ino).as_str(),
                UnlinkatFlags::NoRemoveDir,
            )),
            MirrorChange::StripeCopy {
                ino,
                state: Some(st),
            } => {
                let f = self.open_stripe(*ino, true)?;
                f.set_len(st.size)?;
                let omit = TimeSpec::UTIME_OMIT;
                Ok(nix::sys::stat::futimens(
                    f.as_fd(),
                    &omit,
                    &timespec(st.mtime),
                )?)
            }
            MirrorChange::StripeLink { old, new } => {
                let (old, new) = (stripe_name(*old), stripe_name(*new));
                let fd = self.stripes.as_fd();
                match nix::unistd::linkat(fd, old.as_str(), fd, new.as_str(), AtFlags::empty()) {
                    Ok(()) | Err(Errno::ENOENT) | Err(Errno::EEXIST) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            MirrorChange::StripeSync { ino } => match self.open_stripe(*ino, false) {
                Ok(f) => Ok(nix::unistd::fsync(f.as_fd())?),
                Err(StoreError::NotFound) => Ok(()),
                Err(e) => Err(e),
            },
        }
    }

    /// The copy of striped file `ino` in the mirror's `stripes/`, made
    /// (empty) if missing when `create`.
    fn open_stripe(&self, ino: InodeId, create: bool) -> Res<File> {
        let mut flags = no_follow(OFlag::O_WRONLY);
        if create {
            flags |= OFlag::O_CREAT;
        }
        let name = stripe_name(ino);
        let fd = openat(
            self.stripes.as_fd(),
            name.as_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(missing)?;
        Ok(File::from(fd))
    }

    /// The copies of striped files the mirror holds.
    fn stripe_copies(&self) -> Res<Vec<(InodeId, StripeState)>> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut d = nix::dir::Dir::openat(self.stripes.as_fd(), ".", flags, Mode::empty())?;
        let mut v = Vec::new();
        for e in d.iter() {
            let e = e?;
            let Some(ino) = e
                .file_name()
                .to_str()
                .ok()
                .and_then(|n| u64::from_str_radix(n, 16).ok())
                .filter(|i| e.file_name().to_bytes() == stripe_name(*i).as_bytes())
            else {
                continue;
            };
            let name = stripe_name(ino);
            let nofollow = AtFlags::AT_SYMLINK_NOFOLLOW;
            let Ok(m) = fstatat(self.stripes.as_fd(), name.as_str(), nofollow) else {
                continue;
            };
            let state = StripeState {
                size: m.st_size as u64,
                mtime: Time {
                    sec: m.st_mtime,
                    nsec: m.st_mtime_nsec as u32,
                },
            };
            v.push((ino, state));
        }
        Ok(v)
    }

    fn kind(&self, name: &str) -> Res<Option<FileKind>> {
        match fstatat(self.inodes.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(m) => Ok(FileKind::from_mode(m.st_mode)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn open_file(&self, name: &str) -> Res<File> {
        if self.kind(name)? != Some(FileKind::File) {
            return Err(StoreError::NotFound);
        }
        let fd = openat(
            self.inodes.as_fd(),
            name,
            no_follow(OFlag::O_WRONLY),
            Mode::empty(),
        )
        .map_err(missing)?;
        Ok(File::from(fd))
    }

    /// Remove object `name` (a directory with its entries); none is fine.
    fn remove_object(&self, name: &str) -> Res<()> {
        match self.kind(name)? {
            None => Ok(()),
            Some(FileKind::Dir) => {
                self.put_entries(name, &[], true)?;
                ignore_missing(unlinkat(
                    self.inodes.as_fd(),
                    name,
                    UnlinkatFlags::RemoveDir,
                ))
            }
            Some(_) => ignore_missing(unlinkat(
                self.inodes.as_fd(),
                name,
                UnlinkatFlags::NoRemoveDir,
            )),
        }
    }

    /// Make object `name` what `st` says: made (or remade, if its kind or
    /// a symlink's target differs), then owner, mode, size, xattrs, times.
    fn put_object(&self, name: &str, st: &ObjectState) -> Res<()> {
        let fd = self.inodes.as_fd();
        let same_link = || -> Res<bool> {
            Ok(readlinkat(fd, name)?.as_bytes() == st.target.as_deref().unwrap_or_default())
        };
        let have = self.kind(name)?;
        let fits = have == Some(st.kind) && (st.kind != FileKind::Symlink || same_link()?);
        if have.is_some() && !fits {
            self.remove_object(name)?;
        }
        if !fits {
            self.make_object(name, st)?;
        }
        let nofollow = AtFlags::AT_SYMLINK_NOFOLLOW;
        fchownat(
            fd,
            name,
            Some(Uid::from_raw(st.uid)),
            Some(Gid::from_raw(st.gid)),
            nofollow,
        )?;
        if st.kind != FileKind::Symlink {
            sys::chmod_nofollow(fd, OsStr::new(name), libc::mode_t::from(st.perm))?;
        }
        if st.kind == FileKind::File {
            self.open_file(name)?.set_len(st.size)?;
        }
        self.put_xattrs(name, &st.xattrs)?;
        let (a, m) = (timespec(st.atime), timespec(st.mtime));
        utimensat(fd, name, &a, &m, UtimensatFlags::NoFollowSymlink)?;
        Ok(())
    }

    fn make_object(&self, name: &str, st: &ObjectState) -> Res<()> {
        let fd = self.inodes.as_fd();
        let node = |kind: SFlag| mknodat(fd, name, kind, Mode::from_bits_truncate(0o600), st.rdev);
        match st.kind {
            FileKind::File => {
                let flags = no_follow(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL);
                drop(openat(fd, name, flags, Mode::from_bits_truncate(0o600))?);
            }
            FileKind::Dir => mkdirat(fd, name, private())?,
            FileKind::Symlink => {
                let target = st
                    .target
                    .as_deref()
                    .ok_or(StoreError::Invalid("a symlink needs a target"))?;
                symlinkat(OsStr::from_bytes(target), fd, name)?;
            }
            FileKind::Fifo => node(SFlag::S_IFIFO)?,
            FileKind::Socket => node(SFlag::S_IFSOCK)?,
            FileKind::CharDev => node(SFlag::S_IFCHR)?,
            FileKind::BlockDev => node(SFlag::S_IFBLK)?,
        }
        Ok(())
    }

    /// The object's xattrs become exactly `want`.
    fn put_xattrs(&self, name: &str, want: &[(Vec<u8>, Vec<u8>)]) -> Res<()> {
        let (fd, os) = (self.inodes.as_fd(), OsStr::new(name));
        let key = |k: &[u8]| CString::new(k).map_err(|_| StoreError::Invalid("xattr name"));
        for old in sys::list_xattr(fd, os)?
            .split(|b| *b == 0)
            .filter(|k| !k.is_empty())
        {
            if !want.iter().any(|(k, _)| k == old) {
                match sys::remove_xattr(fd, os, &key(old)?) {
                    Err(e) if e.raw_os_error() != Some(libc::ENODATA) => return Err(e.into()),
                    _ => {}
                }
            }
        }
        for (k, v) in want {
            let k = key(k)?;
            if sys::get_xattr(fd, os, &k).ok().as_deref() != Some(v.as_slice()) {
                sys::set_xattr(fd, os, &k, v, 0)?;
            }
        }
        Ok(())
    }

    /// Set (or remove) entries of directory object `name`; with `complete`,
    /// remove every other entry too.
    fn put_entries(
        &self,
        name: &str,
        entries: &[(Vec<u8>, Option<String>)],
        complete: bool,
    ) -> Res<()> {
        if self.kind(name)? != Some(FileKind::Dir) {
            return Err(StoreError::NotFound);
        }
        let flags = no_follow(OFlag::O_RDONLY | OFlag::O_DIRECTORY);
        let dir = openat(self.inodes.as_fd(), name, flags, Mode::empty()).map_err(missing)?;
        for (entry, target) in entries {
            let entry = check_name(entry)?;
            match target {
                Some(t) => self.put_entry(dir.as_fd(), entry, t)?,
                None => ignore_missing(unlinkat(dir.as_fd(), entry, UnlinkatFlags::NoRemoveDir))?,
            }
        }
        if complete {
            let mut d = nix::dir::Dir::openat(dir.as_fd(), ".", flags, Mode::empty())?;
            let names: Vec<Vec<u8>> = d
                .iter()
                .flatten()
                .map(|e| e.file_name().to_bytes().to_vec())
                .filter(|n| n != b"." && n != b"..")
                .collect();
            for n in names
                .iter()
                .filter(|n| !entries.iter().any(|(e, _)| e == *n))
            {
                ignore_missing(unlinkat(
                    dir.as_fd(),
                    OsStr::from_bytes(n),
                    UnlinkatFlags::NoRemoveDir,
                ))?;
            }
        }
        Ok(())
    }

    /// Entry `entry` of `dir` encodes `target`, atomically (a symlink made
    /// aside, renamed over).
    fn put_entry(&self, dir: BorrowedFd, entry: &OsStr, target: &str) -> Res<()> {
        if Entry::decode(target.as_bytes()).is_none() {
            return Err(StoreError::Invalid("not an encoded entry"));
        }
        if readlinkat(dir, entry).is_ok_and(|t| t.as_bytes() == target.as_bytes()) {
            return Ok(());
        }
        let tmp = format!(".tmp-{:016x}", rand::random::<u64>());
        symlinkat(target, self.inodes.as_fd(), tmp.as_str())?;
        if let Err(e) = renameat(self.inodes.as_fd(), tmp.as_str(), dir, entry) {
            let _ = unlinkat(
                self.inodes.as_fd(),
                tmp.as_str(),
                UnlinkatFlags::NoRemoveDir,
            );
            return Err(e.into());
        }
        Ok(())
    }
}

/// ENOENT as the copy lacking something.
fn missing(e: Errno) -> StoreError {
    match e {
        Errno::ENOENT => StoreError::NotFound,
        e => e.into(),
    }
}

fn ignore_missing(r: nix::Result<()>) -> Res<()> {
    match r {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
