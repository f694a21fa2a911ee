//! Inode objects: every local inode is one object `DIR/inodes/<hex number>`
//! of the same type (regular file, directory, symlink, fifo, device,
//! socket), so that mode, owner, size, times and data are kept by the local
//! file system itself and a `getattr` is one `lstat`. What the local file
//! system cannot know is kept in `trusted.` xattrs: the kDFS link count of a
//! non-directory (its entries may sit on other nodes) and the number of
//! subdirectories of a directory.
//!
//! This layer knows objects only: no entries, no locks, no handles.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use krg_proto::kdfs::{inode_local, inode_node, Attr, FileKind, InodeId, NewInode, SetAttr, Time};
use krg_proto::NodeId;

use super::error::{Res, StoreError};
use super::sys;

const NLINK_XATTR: &str = "trusted.kdfs.nlink";
const NSUB_XATTR: &str = "trusted.kdfs.nsub";

/// Where local inode `local` lives in a store's inode directory.
pub fn object_path(inodes: &Path, local: u64) -> PathBuf {
    inodes.join(format!("{local:x}"))
}

fn kind_of(ft: fs::FileType) -> FileKind {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else if ft.is_char_device() {
        FileKind::CharDev
    } else if ft.is_block_device() {
        FileKind::BlockDev
    } else if ft.is_socket() {
        FileKind::Socket
    } else {
        FileKind::File
    }
}

fn time(sec: i64, nsec: i64) -> Time {
    Time {
        sec,
        nsec: nsec as u32,
    }
}

/// The inode objects of one node's store.
pub(super) struct Objects {
    node: NodeId,
    inodes: PathBuf,
}

impl Objects {
    pub fn new(node: NodeId, inodes: PathBuf) -> Self {
        Self { node, inodes }
    }

    /// The directory of inode objects.
    pub fn inodes(&self) -> &Path {
        &self.inodes
    }

    /// Path of the object of `ino`, which must be owned here.
    pub fn path(&self, ino: InodeId) -> Res<PathBuf> {
        if inode_node(ino) != self.node {
            return Err(StoreError::NotHere(ino));
        }
        Ok(object_path(&self.inodes, inode_local(ino)))
    }

    /// Path of the object of `dir`, which must be a directory.
    pub fn dir_path(&self, dir: InodeId) -> Res<PathBuf> {
        let p = self.path(dir)?;
        if !fs::symlink_metadata(&p)?.is_dir() {
            return Err(StoreError::NotDir);
        }
        Ok(p)
    }

    pub fn attr(&self, ino: InodeId) -> Res<Attr> {
        self.attr_at(ino, &self.path(ino)?)
    }

    /// Attributes of `ino`, whose object is at `path`.
    pub fn attr_at(&self, ino: InodeId, path: &Path) -> Res<Attr> {
        let m = fs::symlink_metadata(path)?;
        let kind = kind_of(m.file_type());
        let nlink = if kind == FileKind::Dir {
            2 + sys::get_u64_xattr(path, NSUB_XATTR)?.unwrap_or(0)
        } else {
            sys::get_u64_xattr(path, NLINK_XATTR)?.unwrap_or(1)
        };
        Ok(Attr {
            ino,
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: nlink.min(u64::from(u32::MAX)) as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            size: m.size(),
            blocks: m.blocks(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
        })
    }

    /// The target of symlink inode `ino`.
    pub fn readlink(&self, ino: InodeId) -> Res<Vec<u8>> {
        Ok(fs::read_link(self.path(ino)?)?
            .as_os_str()
            .as_bytes()
            .to_vec())
    }

    /// Create the object of new inode `ino` (one link, in no directory yet).
    pub fn make(&self, ino: InodeId, new: &NewInode) -> Res<Attr> {
        let path = self.path(ino)?;
        self.make_object(&path, new)?;
        let finish = || -> Res<()> {
            sys::lchown(&path, Some(new.uid), Some(new.gid))?;
            if new.kind != FileKind::Symlink {
                // After chown, which may clear set-id bits.
                let perm = u32::from(new.perm) & 0o7777;
                fs::set_permissions(&path, fs::Permissions::from_mode(perm))?;
            }
            Ok(())
        };
        if let Err(e) = finish() {
            let _ = self.remove(ino);
            return Err(e);
        }
        self.attr_at(ino, &path)
    }

    /// The bare object, owned by root and private until `make` finishes it.
    fn make_object(&self, path: &Path, new: &NewInode) -> Res<()> {
        match new.kind {
            FileKind::File => {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
            }
            FileKind::Dir => fs::DirBuilder::new().mode(0o700).create(path)?,
            FileKind::Symlink => {
                let target = new
                    .target
                    .as_deref()
                    .ok_or(StoreError::Invalid("a symlink needs a target"))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(target), path)?;
            }
            FileKind::Fifo => sys::mknod(path, libc::S_IFIFO | 0o600, 0)?,
            FileKind::Socket => sys::mknod(path, libc::S_IFSOCK | 0o600, 0)?,
            FileKind::CharDev => sys::mknod(path, libc::S_IFCHR | 0o600, new.rdev)?,
            FileKind::BlockDev => sys::mknod(path, libc::S_IFBLK | 0o600, new.rdev)?,
        }
        Ok(())
    }

    /// Remove the object of `ino`, whatever its type.
    pub fn remove(&self, ino: InodeId) -> Res<()> {
        let path = self.path(ino)?;
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir(&path)?,
            _ => fs::remove_file(&path)?,
        }
        Ok(())
    }

    /// Remove the object of `ino`, which must be a non-directory.
    pub fn remove_file(&self, ino: InodeId) -> Res<()> {
        Ok(fs::remove_file(self.path(ino)?)?)
    }

    /// Remove the object of directory `dir` if it is empty (ENOTEMPTY else).
    pub fn remove_dir(&self, dir: InodeId) -> Res<()> {
        Ok(fs::remove_dir(self.dir_path(dir)?)?)
    }

    /// Is directory `dir` without entries?
    pub fn is_empty_dir(&self, dir: InodeId) -> Res<bool> {
        Ok(fs::read_dir(self.dir_path(dir)?)?.next().is_none())
    }

    /// Is the object of `ino` a directory?
    pub fn is_dir(&self, ino: InodeId) -> Res<bool> {
        Ok(fs::symlink_metadata(self.path(ino)?)?.is_dir())
    }

    /// The kDFS link count of non-directory `ino` (1 when never set).
    pub fn nlink(&self, ino: InodeId) -> Res<u64> {
        Ok(sys::get_u64_xattr(&self.path(ino)?, NLINK_XATTR)?.unwrap_or(1))
    }

    /// Was `ino` left with no link (kept only while open)?
    pub fn is_unlinked(&self, ino: InodeId) -> bool {
        self.path(ino)
            .is_ok_and(|p| matches!(sys::get_u64_xattr(&p, NLINK_XATTR), Ok(Some(0))))
    }

    /// Set the kDFS link count of non-directory `ino` (this updates ctime).
    pub fn set_nlink(&self, ino: InodeId, n: u64) -> Res<()> {
        Ok(sys::set_u64_xattr(&self.path(ino)?, NLINK_XATTR, n)?)
    }

    /// Add `delta` to the subdirectory count of directory `dir`.
    pub fn adjust_nsub(&self, dir: InodeId, delta: i64) -> Res<()> {
        let p = self.path(dir)?;
        let cur = sys::get_u64_xattr(&p, NSUB_XATTR)?.unwrap_or(0) as i64;
        Ok(sys::set_u64_xattr(
            &p,
            NSUB_XATTR,
            (cur + delta).max(0) as u64,
        )?)
    }

    /// Bump the ctime of `ino` by rewriting its count xattr.
    pub fn touch(&self, ino: InodeId) -> Res<()> {
        let p = self.path(ino)?;
        let (name, default) = if fs::symlink_metadata(&p)?.is_dir() {
            (NSUB_XATTR, 0)
        } else {
            (NLINK_XATTR, 1)
        };
        let cur = sys::get_u64_xattr(&p, name)?.unwrap_or(default);
        Ok(sys::set_u64_xattr(&p, name, cur)?)
    }

    pub fn setattr(&self, ino: InodeId, set: &SetAttr) -> Res<Attr> {
        let p = self.path(ino)?;
        if let Some(size) = set.size {
            OpenOptions::new().write(true).open(&p)?.set_len(size)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::lchown(&p, set.uid, set.gid)?;
        }
        if let Some(mode) = set.mode {
            if fs::symlink_metadata(&p)?.file_type().is_symlink() {
                return Err(StoreError::NotSupported);
            }
            fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            sys::set_times(&p, set.atime, set.mtime)?;
        }
        self.attr_at(ino, &p)
    }

    /// Open regular file `ino` (read, and write if asked).
    pub fn open_file(&self, ino: InodeId, write: bool) -> Res<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.path(ino)?)?;
        if !file.metadata()?.is_file() {
            return Err(StoreError::Invalid("not a regular file"));
        }
        Ok(file)
    }

    /// fsync the inode directory (after entries of a directory were synced).
    pub fn sync(&self) -> Res<()> {
        Ok(File::open(&self.inodes)?.sync_all()?)
    }

    /// Remove what a crash left: temporary entries, and inodes that lost
    /// their last link while open.
    pub fn sweep_orphans(&self) {
        let Ok(rd) = fs::read_dir(&self.inodes) else {
            return;
        };
        for e in rd.flatten() {
            let path = e.path();
            if e.file_name().as_bytes().starts_with(b".tmp-") {
                let _ = fs::remove_file(&path);
                continue;
            }
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(true);
            if !is_dir && matches!(sys::get_u64_xattr(&path, NLINK_XATTR), Ok(Some(0))) {
                tracing::info!(path = %path.display(), "removing orphan inode");
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// A symlink standing for entry `target`, made outside any directory
    /// so that it can be renamed into place atomically.
    pub fn temp_symlink(&self, target: &str) -> io::Result<PathBuf> {
        let tmp = self
            .inodes
            .join(format!(".tmp-{:016x}", rand::random::<u64>()));
        std::os::unix::fs::symlink(target, &tmp)?;
        Ok(tmp)
    }
}
