//! Inode objects: every local inode is one object `DIR/inodes/<hex number>`
//! of the same type (regular file, directory, symlink, fifo, device,
//! socket), so that mode, owner, size, times and data are kept by the local
//! file system itself and a `getattr` is one `lstat`. What the local file
//! system cannot know is kept in `trusted.` xattrs: the kDFS link count of a
//! non-directory (its entries may sit on other nodes), the number of
//! subdirectories of a directory, a directory's striping policy and a
//! striped file's layout.
//!
//! Every call is relative to the descriptor of `inodes/` opened (and checked
//! private) at attach, and none follows a symlink: an object that is a
//! symlink is a kDFS symlink, never a way elsewhere. This layer knows
//! objects only: no entries, no locks, no handles.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Mutex;

use krg_proto::kdfs::{
    inode_local, inode_node, Attr, FileKind, InodeId, NewInode, SetAttr, SetTime, StripeLayout,
    StripePolicy, Time,
};
use krg_proto::NodeId;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{self, fstatat, mkdirat, mknodat, FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::error::{Res, StoreError};
use super::sys;

pub(crate) const NLINK_XATTR: &str = "trusted.kdfs.nlink";
pub(crate) const NSUB_XATTR: &str = "trusted.kdfs.nsub";
/// A directory's [`StripePolicy`] (postcard).
pub(crate) const POLICY_XATTR: &str = "trusted.kdfs.stripe";
/// A striped file's [`StripeLayout`] (postcard).
pub(crate) const LAYOUT_XATTR: &str = "trusted.kdfs.layout";

/// The name of local inode `local`'s object in `inodes/`.
pub(crate) fn object_name(local: u64) -> String {
    format!("{local:x}")
}

/// The kind of an object from its `st_mode` (objects are only ever
/// created with a type, so an unknown one is read as a file).
fn kind_of(mode: u32) -> FileKind {
    FileKind::from_mode(mode).unwrap_or(FileKind::File)
}

fn time(sec: i64, nsec: i64) -> Time {
    Time {
        sec,
        nsec: nsec as u32,
    }
}

fn timespec(t: Option<SetTime>) -> TimeSpec {
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(SetTime::Now) => TimeSpec::UTIME_NOW,
        Some(SetTime::At(Time { sec, nsec })) => {
            TimeSpec::new(sec, i64::from(nsec.min(999_999_999)))
        }
    }
}

/// Open flags that never follow a symlink nor leak into a child.
fn no_follow(flags: OFlag) -> OFlag {
    flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// The inode objects of one node's store.
pub(super) struct Objects {
    node: NodeId,
    /// `DIR/inodes`, opened at attach.
    fd: OwnedFd,
    /// Its path, for logs.
    path: PathBuf,
    /// Striped files removed since [`Objects::take_gone`]: their holders
    /// are to forget their units.
    gone: Mutex<Vec<(InodeId, StripeLayout)>>,
}

impl Objects {
    pub fn new(node: NodeId, fd: OwnedFd, path: PathBuf) -> Self {
        Self {
            node,
            fd,
            path,
            gone: Mutex::default(),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The object name of `ino`, which must be owned here.
    pub fn name(&self, ino: InodeId) -> Res<String> {
        if inode_node(ino) != self.node {
            return Err(StoreError::NotHere(ino));
        }
        Ok(object_name(inode_local(ino)))
    }

    fn stat(&self, ino: InodeId) -> Res<FileStat> {
        let name = self.name(ino)?;
        Ok(fstatat(
            self.fd(),
            name.as_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?)
    }

    /// What kind of object `ino` is.
    /// Try to take an exclusive `flock` on the inode directory (held by
    /// this descriptor until it closes); `false` when another holds one.
    pub fn try_lock_exclusive(&self) -> bool {
        // SAFETY: flock(2) on the descriptor this Objects owns; no memory is passed.
        unsafe { libc::flock(self.fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }

    pub fn kind(&self, ino: InodeId) -> Res<FileKind> {
        Ok(kind_of(self.stat(ino)?.st_mode))
    }

    /// Is the object of `ino` a directory?
    pub fn is_dir(&self, ino: InodeId) -> Res<bool> {
        Ok(self.kind(ino)? == FileKind::Dir)
    }

    /// Open the object of `dir`, which must be a directory (ENOTDIR else).
    pub fn open_dir(&self, dir: InodeId) -> Res<OwnedFd> {
        let name = self.name(dir)?;
        let flags = no_follow(OFlag::O_RDONLY | OFlag::O_DIRECTORY);
        Ok(openat(self.fd(), name.as_str(), flags, Mode::empty())?)
    }

    fn get_count(&self, name: &str, key: &str) -> Res<Option<u64>> {
        Ok(sys::get_u64_xattr(self.fd(), OsStr::new(name), key)?)
    }

    fn set_count(&self, name: &str, key: &str, value: u64) -> Res<()> {
        Ok(sys::set_u64_xattr(self.fd(), OsStr::new(name), key, value)?)
    }

    pub fn attr(&self, ino: InodeId) -> Res<Attr> {
        let name = self.name(ino)?;
        let m = fstatat(self.fd(), name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let kind = kind_of(m.st_mode);
        let nlink = if kind == FileKind::Dir {
            2 + self.get_count(&name, NSUB_XATTR)?.unwrap_or(0)
        } else {
            self.get_count(&name, NLINK_XATTR)?.unwrap_or(1)
        };
        Ok(Attr {
            ino,
            kind,
            perm: (m.st_mode & 0o7777) as u16,
            nlink: nlink.min(u64::from(u32::MAX)) as u32,
            uid: m.st_uid,
            gid: m.st_gid,
            rdev: m.st_rdev as u32,
            size: m.st_size as u64,
            blocks: m.st_blocks as u64,
            atime: time(m.st_atime, m.st_atime_nsec),
            mtime: time(m.st_mtime, m.st_mtime_nsec),
            ctime: time(m.st_ctime, m.st_ctime_nsec),
        })
    }

    /// The target of symlink inode `ino`.
    pub fn readlink(&self, ino: InodeId) -> Res<Vec<u8>> {
        let name = self.name(ino)?;
        Ok(readlinkat(self.fd(), name.as_str())?.into_encoded_bytes())
    }

    /// Create the object of new inode `ino` (one link, in no directory yet).
    pub fn make(&self, ino: InodeId, new: &NewInode) -> Res<Attr> {
        let name = self.name(ino)?;
        self.make_object(&name, new)?;
        let finish = || -> Res<()> {
            let (uid, gid) = (Uid::from_raw(new.uid), Gid::from_raw(new.gid));
            let nofollow = AtFlags::AT_SYMLINK_NOFOLLOW;
            fchownat(self.fd(), name.as_str(), Some(uid), Some(gid), nofollow)?;
            if new.kind != FileKind::Symlink {
                // After chown, which may clear set-id bits.
                self.chmod(&name, u32::from(new.perm))?;
            }
            Ok(())
        };
        if let Err(e) = finish() {
            let _ = self.remove(ino);
            return Err(e);
        }
        self.attr(ino)
    }

    /// The bare object, owned by root and private until `make` finishes it.
    fn make_object(&self, name: &str, new: &NewInode) -> Res<()> {
        let private = Mode::from_bits_truncate(0o600);
        let node = |kind: SFlag, rdev: u32| {
            mknodat(self.fd(), name, kind, private, libc::dev_t::from(rdev))
        };
        match new.kind {
            FileKind::File => {
                let flags = no_follow(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL);
                drop(openat(self.fd(), name, flags, private)?);
            }
            FileKind::Dir => mkdirat(self.fd(), name, Mode::from_bits_truncate(0o700))?,
            FileKind::Symlink => {
                let target = new
                    .target
                    .as_deref()
                    .ok_or(StoreError::Invalid("a symlink needs a target"))?;
                symlinkat(OsStr::from_bytes(target), self.fd(), name)?;
            }
            FileKind::Fifo => node(SFlag::S_IFIFO, 0)?,
            FileKind::Socket => node(SFlag::S_IFSOCK, 0)?,
            FileKind::CharDev => node(SFlag::S_IFCHR, new.rdev)?,
            FileKind::BlockDev => node(SFlag::S_IFBLK, new.rdev)?,
        }
        Ok(())
    }

    /// chmod of object `name`, which is not a symlink (refused if it is).
    fn chmod(&self, name: &str, mode: u32) -> Res<()> {
        let mode = (mode & 0o7777) as libc::mode_t;
        Ok(sys::chmod_nofollow(self.fd(), OsStr::new(name), mode)?)
    }

    /// After a chmod of object `name` to `mode`: its access ACL, if it has
    /// one, takes the mode's owner, mask (or group) and other bits, as on
    /// a local file system. The kernel checks permissions against the ACL:
    /// a `chmod 600` that left the mask alone would leave named users
    /// their rights.
    fn acl_follows(&self, name: &str, mode: u32) -> Res<()> {
        let key = super::xattr::access_acl_key()?;
        let acl = match sys::get_xattr(self.fd(), OsStr::new(name), &key) {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match crate::acl::chmod(&acl, mode) {
            Some(new) if new != acl => {
                Ok(sys::set_xattr(self.fd(), OsStr::new(name), &key, &new, 0)?)
            }
            Some(_) => Ok(()),
            None => Err(StoreError::Damaged(format!(
                "{}: malformed access ACL",
                self.path.join(name).display()
            ))),
        }
    }

    /// Remove the object of `ino`, whatever its type.
    pub fn remove(&self, ino: InodeId) -> Res<()> {
        let how = match self.is_dir(ino) {
            Ok(true) => UnlinkatFlags::RemoveDir,
            _ => UnlinkatFlags::NoRemoveDir,
        };
        Ok(unlinkat(self.fd(), self.name(ino)?.as_str(), how)?)
    }

    /// Remove the object of `ino`, which must be a non-directory.
    pub fn remove_file(&self, ino: InodeId) -> Res<()> {
        let name = self.name(ino)?;
        let layout = self.layout(ino).ok().flatten();
        unlinkat(self.fd(), name.as_str(), UnlinkatFlags::NoRemoveDir)?;
        if let Some(l) = layout {
            self.note_gone(ino, l);
        }
        Ok(())
    }

    fn note_gone(&self, ino: InodeId, layout: StripeLayout) {
        self.gone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((ino, layout));
    }

    /// The striped files removed since the last call, with their layouts.
    pub fn take_gone(&self) -> Vec<(InodeId, StripeLayout)> {
        std::mem::take(&mut *self.gone.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A postcard value kept in xattr `key` of `ino`'s object (`None`:
    /// absent). One the store did not write is damage.
    pub(super) fn get_value<T: serde::de::DeserializeOwned>(
        &self,
        ino: InodeId,
        key: &str,
    ) -> Res<Option<T>> {
        let name = self.name(ino)?;
        let k = CString::new(key).map_err(|_| StoreError::Invalid("xattr name"))?;
        match sys::get_xattr(self.fd(), OsStr::new(&name), &k) {
            Ok(v) => postcard::from_bytes(&v).map(Some).map_err(|e| {
                StoreError::Damaged(format!(
                    "{}: bad {key}: {e}",
                    self.path.join(&name).display()
                ))
            }),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Keep `value` in xattr `key` of `ino`'s object (`None`: remove it);
    /// with `create`, fail with EEXIST if it is set already.
    pub(super) fn set_value<T: serde::Serialize>(
        &self,
        ino: InodeId,
        key: &str,
        value: Option<&T>,
        create: bool,
    ) -> Res<()> {
        let name = self.name(ino)?;
        let k = CString::new(key).map_err(|_| StoreError::Invalid("xattr name"))?;
        let Some(v) = value else {
            return match sys::remove_xattr(self.fd(), OsStr::new(&name), &k) {
                Err(e) if e.raw_os_error() != Some(libc::ENODATA) => Err(e.into()),
                _ => Ok(()),
            };
        };
        let bytes = postcard::to_allocvec(v).map_err(|_| StoreError::Invalid("encoding"))?;
        let flags = if create { libc::XATTR_CREATE } else { 0 };
        match sys::set_xattr(self.fd(), OsStr::new(&name), &k, &bytes, flags) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(StoreError::Exists),
            r => Ok(r?),
        }
    }

    /// The layout of striped file `ino` (`None`: not striped).
    pub fn layout(&self, ino: InodeId) -> Res<Option<StripeLayout>> {
        let l: Option<StripeLayout> = self.get_value(ino, LAYOUT_XATTR)?;
        match l {
            Some(l) if l.check().is_err() || l.nodes.first() != Some(&self.node) => Err(
                StoreError::Damaged(format!("inode {ino:x}: a layout the store did not write")),
            ),
            l => Ok(l),
        }
    }

    /// Give file `ino` its layout, once.
    pub fn set_layout(&self, ino: InodeId, layout: &StripeLayout) -> Res<()> {
        self.set_value(ino, LAYOUT_XATTR, Some(layout), true)
    }

    /// Change striped file `ino`'s layout (a holder that left replaced).
    pub fn replace_layout(&self, ino: InodeId, layout: &StripeLayout) -> Res<()> {
        self.set_value(ino, LAYOUT_XATTR, Some(layout), false)
    }

    /// The striping policy of directory `dir` (`None`: none).
    pub fn policy(&self, dir: InodeId) -> Res<Option<StripePolicy>> {
        let p: Option<StripePolicy> = self.get_value(dir, POLICY_XATTR)?;
        match p {
            Some(p) if p.check().is_err() => Err(StoreError::Damaged(format!(
                "directory {dir:x}: a striping policy the store did not write"
            ))),
            p => Ok(p),
        }
    }

    /// Set or remove the striping policy of directory `dir`.
    pub fn set_policy(&self, dir: InodeId, policy: Option<&StripePolicy>) -> Res<()> {
        self.set_value(dir, POLICY_XATTR, policy, false)
    }

    /// Remove the object of directory `dir` if it is empty (ENOTEMPTY else:
    /// the local rmdir's own, atomic, check).
    pub fn remove_dir(&self, dir: InodeId) -> Res<()> {
        let name = self.name(dir)?;
        Ok(unlinkat(
            self.fd(),
            name.as_str(),
            UnlinkatFlags::RemoveDir,
        )?)
    }

    /// Is directory `dir` without entries?
    pub fn is_empty_dir(&self, dir: InodeId) -> Res<bool> {
        let mut d = nix::dir::Dir::from_fd(self.open_dir(dir)?)?;
        for e in d.iter() {
            let e = e?;
            if !matches!(e.file_name().to_bytes(), b"." | b"..") {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The kDFS link count of non-directory `ino` (1 when never set).
    pub fn nlink(&self, ino: InodeId) -> Res<u64> {
        Ok(self.get_count(&self.name(ino)?, NLINK_XATTR)?.unwrap_or(1))
    }

    /// Was `ino` left with no link (kept only while open)?
    pub fn is_unlinked(&self, ino: InodeId) -> bool {
        self.name(ino)
            .is_ok_and(|n| matches!(self.get_count(&n, NLINK_XATTR), Ok(Some(0))))
    }

    /// Set the kDFS link count of non-directory `ino` (this updates ctime).
    pub fn set_nlink(&self, ino: InodeId, n: u64) -> Res<()> {
        self.set_count(&self.name(ino)?, NLINK_XATTR, n)
    }

    /// Add `delta` to the subdirectory count of directory `dir`.
    pub fn adjust_nsub(&self, dir: InodeId, delta: i64) -> Res<()> {
        let name = self.name(dir)?;
        let cur = self.get_count(&name, NSUB_XATTR)?.unwrap_or(0) as i64;
        self.set_count(&name, NSUB_XATTR, (cur + delta).max(0) as u64)
    }

    /// Bump the ctime of `ino` by rewriting its count xattr.
    pub fn touch(&self, ino: InodeId) -> Res<()> {
        let name = self.name(ino)?;
        let (key, default) = if self.is_dir(ino)? {
            (NSUB_XATTR, 0)
        } else {
            (NLINK_XATTR, 1)
        };
        let cur = self.get_count(&name, key)?.unwrap_or(default);
        self.set_count(&name, key, cur)
    }

    pub fn setattr(&self, ino: InodeId, set: &SetAttr) -> Res<Attr> {
        let name = self.name(ino)?;
        if let Some(size) = set.size {
            let flags = no_follow(OFlag::O_WRONLY);
            File::from(openat(self.fd(), name.as_str(), flags, Mode::empty())?).set_len(size)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            let (uid, gid) = (set.uid.map(Uid::from_raw), set.gid.map(Gid::from_raw));
            fchownat(
                self.fd(),
                name.as_str(),
                uid,
                gid,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
        }
        if let Some(mode) = set.mode {
            if self.kind(ino)? == FileKind::Symlink {
                return Err(StoreError::NotSupported);
            }
            self.chmod(&name, mode)?;
            self.acl_follows(&name, mode)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let (a, m) = (timespec(set.atime), timespec(set.mtime));
            let nofollow = stat::UtimensatFlags::NoFollowSymlink;
            stat::utimensat(self.fd(), name.as_str(), &a, &m, nofollow)?;
        }
        self.attr(ino)
    }

    /// Open regular file `ino` (read, and write if asked). Anything else is
    /// refused before it is opened: opening a fifo or a device has effects.
    pub fn open_file(&self, ino: InodeId, write: bool) -> Res<File> {
        if self.kind(ino)? != FileKind::File {
            return Err(StoreError::Invalid("not a regular file"));
        }
        let mode = if write {
            OFlag::O_RDWR
        } else {
            OFlag::O_RDONLY
        };
        let name = self.name(ino)?;
        let file = File::from(openat(
            self.fd(),
            name.as_str(),
            no_follow(mode),
            Mode::empty(),
        )?);
        Ok(file)
    }

    /// fsync the inode directory (after entries of a directory were synced).
    pub fn sync(&self) -> Res<()> {
        Ok(nix::unistd::fsync(self.fd())?)
    }

    /// Remove what a crash left: temporary entries, and inodes that lost
    /// their last link while open.
    pub fn sweep_orphans(&self) {
        let flags = no_follow(OFlag::O_RDONLY | OFlag::O_DIRECTORY);
        let Ok(mut d) = nix::dir::Dir::openat(self.fd(), ".", flags, Mode::empty()) else {
            return;
        };
        let names: Vec<String> = d
            .iter()
            .flatten()
            .filter_map(|e| e.file_name().to_str().ok().map(String::from))
            .collect();
        for name in names {
            let is_dir = || {
                fstatat(self.fd(), name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_or(true, |m| kind_of(m.st_mode) == FileKind::Dir)
            };
            let orphan = name.starts_with(".tmp-")
                || (!is_dir() && matches!(self.get_count(&name, NLINK_XATTR), Ok(Some(0))));
            if orphan {
                tracing::info!(path = %self.path.join(&name).display(), "removing orphan inode");
                let ino = u64::from_str_radix(&name, 16)
                    .ok()
                    .map(|local| krg_proto::kdfs::inode_id(self.node, local));
                let layout = ino.and_then(|i| self.layout(i).ok().flatten().map(|l| (i, l)));
                if unlinkat(self.fd(), name.as_str(), UnlinkatFlags::NoRemoveDir).is_ok() {
                    if let Some((i, l)) = layout {
                        self.note_gone(i, l);
                    }
                }
            }
        }
    }

    /// A symlink standing for entry `target`, made in `inodes/` (no user
    /// can enter it) so that it can be renamed into place atomically; its name.
    pub fn temp_symlink(&self, target: &str) -> Res<String> {
        let tmp = format!(".tmp-{:016x}", rand::random::<u64>());
        symlinkat(target, self.fd(), tmp.as_str())?;
        Ok(tmp)
    }

    /// Remove a temporary symlink that could not be renamed into place.
    pub fn remove_temp(&self, tmp: &str) {
        let _ = unlinkat(self.fd(), tmp, UnlinkatFlags::NoRemoveDir);
    }
}
