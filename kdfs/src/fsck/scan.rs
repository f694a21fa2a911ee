//! Reading one store offline into a [`Scanned`] model: its meta-files, every
//! object of `inodes/` with its kind and count attribute, and every entry of
//! every directory object, each either valid (as the store writes it) or bad
//! with the reason. Nothing is changed here; nothing is followed.
//!
//! A [`Scanned`] store is a model with the descriptors the repairs use
//! ([`Live`]), or a model another node exported (`fsck.kdfs --export`),
//! checked along but never repaired here.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use krg_proto::kdfs::{
    inode_id, inode_local, inode_node, FileKind, InodeId, StripeLayout, LOCAL_BITS,
};
use krg_proto::NodeId;
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode};

use serde::{Deserialize, Serialize};

use crate::format::{
    self, RootMeta, StoreDir, Superblock, FIRST_INO, INODES, STORE_OWNER, STRIPES,
};
use crate::store::entry::{decoded, not_written_here, Entry};
use crate::store::{object_name, sys, LAYOUT_XATTR, NLINK_XATTR, NSUB_XATTR};
use crate::KdfsError;

/// A count attribute as read: absent, a value, or unreadable (the reason).
pub type Count = Result<Option<u64>, String>;

/// One object of `inodes/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Obj {
    pub kind: FileKind,
    /// `trusted.kdfs.nlink` (non-directories) or `trusted.kdfs.nsub`
    /// (directories).
    pub count: Count,
    /// A striped file's holders (its layout's nodes); empty otherwise.
    #[serde(default)]
    pub holders: Vec<krg_proto::NodeId>,
}

/// A valid entry of a directory object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ent {
    pub dir: InodeId,
    pub name: OsString,
    pub entry: Entry,
    /// When the entry's symlink was made (its mtime): the newer of two
    /// names of one directory is the one a rename made.
    pub made: (i64, i64),
}

/// Something in a directory object the store did not write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BadEnt {
    pub dir: InodeId,
    pub name: OsString,
    pub why: String,
}

/// The descriptors of a store being checked here.
pub struct Live {
    pub top: StoreDir,
    pub inodes: OwnedFd,
    /// `DIR/stripes`, when there is one.
    pub stripes: Option<OwnedFd>,
}

/// One store: read here (`live`), or as another node exported it.
pub struct Scanned {
    pub model: Model,
    pub live: Option<Live>,
}

impl std::ops::Deref for Scanned {
    type Target = Model;
    fn deref(&self) -> &Model {
        &self.model
    }
}

/// One store, as read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Model {
    /// Its directory (on the node it is on).
    pub path: PathBuf,
    pub sb: Superblock,
    /// The root meta-file (root node only): its content, or why not.
    pub root_meta: Option<Result<RootMeta, String>>,
    /// `ino.next`, or why it cannot be read.
    pub ino_next: Result<u64, String>,
    /// What makes `DIR` or `DIR/inodes` reachable by other users.
    pub not_private: Vec<String>,
    /// Objects by local inode number.
    pub objects: BTreeMap<u64, Obj>,
    /// Objects that could not be examined: (name in `inodes/`, why).
    pub unreadable: Vec<(String, String)>,
    /// Names in `inodes/` that are no object kDFS makes: (name, why).
    pub strays: Vec<(OsString, String)>,
    /// Temporary entry symlinks (`.tmp-*`) an interrupted replace left.
    pub temps: Vec<OsString>,
    pub entries: Vec<Ent>,
    pub bad_entries: Vec<BadEnt>,
    /// Names in `stripes/`: this node's copies of other nodes' striped files.
    #[serde(default)]
    pub copies: Vec<OsString>,
}

impl Model {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn node(&self) -> u32 {
        self.sb.node
    }

    pub fn ino(&self, local: u64) -> InodeId {
        inode_id(self.sb.node, local)
    }

    /// The root directory this store holds (root node): the one its
    /// meta-file names or, when that is damaged, the first inode, where
    /// mkfs makes it.
    pub fn root(&self) -> Option<InodeId> {
        let is_dir = |local| self.objects.get(&local).map(|o| o.kind) == Some(FileKind::Dir);
        match self.root_meta.as_ref()? {
            Ok(m) if inode_node(m.root) == self.node() && is_dir(inode_local(m.root)) => {
                Some(m.root)
            }
            _ => is_dir(FIRST_INO).then(|| self.ino(FIRST_INO)),
        }
    }
}

fn errno(e: Errno) -> String {
    std::io::Error::from(e).to_string()
}

/// The local inode number an object name stands for, if it is one kDFS
/// makes (lowercase hex, no leading zero, below 2^48, not 0).
fn object_number(name: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(name).ok()?;
    let n = u64::from_str_radix(s, 16).ok()?;
    (n != 0 && n < (1 << LOCAL_BITS) && object_name(n) == s).then_some(n)
}

/// Open and read the store at `path`. Errors here are operational (the
/// directory is no kDFS store, or is in use): nothing can be checked.
pub fn scan(path: &Path) -> Result<Scanned, KdfsError> {
    let top = StoreDir::open(path)?;
    let sb = top.read_superblock()?;
    top.lock_offline()?;
    let shown = path.join(INODES);
    let inodes = format::open_dir_at(top.fd(), INODES, &shown).map_err(|e| match e {
        KdfsError::Io { cause, .. } if cause.kind() == std::io::ErrorKind::NotFound => {
            KdfsError::corrupt(&shown, "missing inode directory (not repairable: reformat)")
        }
        e => e,
    })?;
    let root_meta =
        (sb.root_node == sb.node).then(|| top.read_root_meta().map_err(|e| e.to_string()));
    let ino_next = top.read_ino_next().map_err(|e| e.to_string());
    let not_private = privacy(top.fd(), path)
        .into_iter()
        .chain(privacy(inodes.as_fd(), &shown))
        .collect();
    let mut s = Model {
        path: path.to_path_buf(),
        not_private,
        sb,
        root_meta,
        ino_next,
        objects: BTreeMap::new(),
        unreadable: Vec::new(),
        strays: Vec::new(),
        temps: Vec::new(),
        entries: Vec::new(),
        bad_entries: Vec::new(),
        copies: Vec::new(),
    };
    scan_objects(&mut s, inodes.as_fd())?;
    let (stripes, copies) = scan_copies(&top)
        .map_err(|why| KdfsError::Invalid(format!("{}: {why}", path.join(STRIPES).display())))?;
    s.copies = copies;
    Ok(Scanned {
        model: s,
        live: Some(Live {
            top,
            inodes,
            stripes,
        }),
    })
}

/// What lets other users into directory `fd` (a store must be root's, 0700).
fn privacy(fd: BorrowedFd, path: &Path) -> Option<String> {
    let st = fstat(fd).ok()?;
    let mode = st.st_mode & 0o7777;
    (st.st_uid != STORE_OWNER || mode & 0o077 != 0).then(|| {
        format!(
            "{}: owned by uid {}, mode {mode:04o} (a store must be root's, mode 0700)",
            path.display(),
            st.st_uid
        )
    })
}

pub(super) fn list(dir: BorrowedFd) -> Result<Vec<OsString>, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut d = nix::dir::Dir::openat(dir, ".", flags, Mode::empty())?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_owned());
        }
    }
    Ok(names)
}

fn scan_objects(s: &mut Model, inodes: BorrowedFd) -> Result<(), KdfsError> {
    let shown = s.path().join(INODES);
    let names = list(inodes).map_err(|e| KdfsError::io(&shown, e.into()))?;
    for name in names {
        let bytes = name.as_bytes();
        let st = match fstatat(inodes, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(e) => {
                s.unreadable.push((name.to_string_lossy().into(), errno(e)));
                continue;
            }
        };
        let kind = FileKind::from_mode(st.st_mode);
        if bytes.starts_with(b".tmp-") && kind == Some(FileKind::Symlink) {
            s.temps.push(name);
            continue;
        }
        let (Some(local), Some(kind)) = (object_number(bytes), kind) else {
            let why = if kind.is_none() {
                "not a kind of file kDFS makes"
            } else {
                "not named as an inode number"
            };
            s.strays.push((name, why.to_string()));
            continue;
        };
        let key = if kind == FileKind::Dir {
            NSUB_XATTR
        } else {
            NLINK_XATTR
        };
        let count = sys::get_u64_xattr(inodes, &name, key).map_err(|e| format!("{key}: {e}"));
        let holders = if kind == FileKind::File {
            holders(inodes, &name)
        } else {
            Vec::new()
        };
        s.objects.insert(
            local,
            Obj {
                kind,
                count,
                holders,
            },
        );
        if kind == FileKind::Dir {
            scan_dir(s, inodes, local, &name);
        }
    }
    Ok(())
}

/// Every entry of directory object `name` (local inode `local`).
fn scan_dir(s: &mut Model, inodes: BorrowedFd, local: u64, name: &OsStr) {
    let dir = s.ino(local);
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let listed = openat(inodes, name, flags, Mode::empty())
        .and_then(|fd| list(fd.as_fd()).map(|names| (fd, names)));
    let (fd, names) = match listed {
        Ok(x) => x,
        Err(e) => {
            s.unreadable.push((name.to_string_lossy().into(), errno(e)));
            return;
        }
    };
    for entry_name in names {
        match read_entry(fd.as_fd(), &entry_name) {
            Ok((entry, made)) => s.entries.push(Ent {
                dir,
                name: entry_name,
                entry,
                made,
            }),
            Err(why) => s.bad_entries.push(BadEnt {
                dir,
                name: entry_name,
                why,
            }),
        }
    }
}

/// Entry `name` of directory object `dir`, if it is what the store writes
/// (the store's own checks: a symlink, root's, one link, exactly an encoded
/// entry); else why not.
pub fn read_entry(dir: BorrowedFd, name: &OsStr) -> Result<(Entry, (i64, i64)), String> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let link = openat(dir, name, flags, Mode::empty()).map_err(errno)?;
    let st = fstat(&link).map_err(errno)?;
    if let Some(why) = not_written_here(&st) {
        return Err(why);
    }
    let target = readlinkat(&link, "").map_err(errno)?.into_encoded_bytes();
    decoded(&target).map(|e| (e, (st.st_mtime, st.st_mtime_nsec)))
}

/// Where a store's objects are, for messages.
pub fn object_path(s: &Model, name: &str) -> PathBuf {
    s.path().join(INODES).join(name)
}

/// The nodes holding units of object `name` of `inodes/` (empty: not a
/// striped file, or a layout that cannot be read — the store answers EIO
/// on it, and its copies elsewhere are then kept).
pub fn holders(inodes: BorrowedFd, name: &OsStr) -> Vec<NodeId> {
    let Ok(key) = CString::new(LAYOUT_XATTR) else {
        return Vec::new();
    };
    sys::get_xattr(inodes, name, &key)
        .ok()
        .and_then(|v| postcard::from_bytes::<StripeLayout>(&v).ok())
        .map(|l| l.nodes)
        .unwrap_or_default()
}

/// `DIR/stripes` (none before the store was first attached) and its names.
pub fn scan_copies(top: &StoreDir) -> Result<(Option<OwnedFd>, Vec<OsString>), String> {
    let shown = top.path().join(STRIPES);
    let fd = match format::open_dir_at(top.fd(), STRIPES, &shown) {
        Ok(fd) => fd,
        Err(crate::KdfsError::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {
            return Ok((None, Vec::new()))
        }
        Err(e) => return Err(e.to_string()),
    };
    let names = list(fd.as_fd()).map_err(|e: Errno| e.to_string())?;
    Ok((Some(fd), names))
}

#[cfg(test)]
mod tests {
    use super::object_number;

    #[test]
    fn object_names_are_canonical_hex() {
        assert_eq!(object_number(b"1"), Some(1));
        assert_eq!(object_number(b"a3"), Some(0xa3));
        for bad in [&b"0"[..], b"01", b"A3", b"x", b"", b"1000000000000", b"-1"] {
            assert_eq!(object_number(bad), None, "{bad:?}");
        }
    }
}
