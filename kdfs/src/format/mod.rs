//! On-disk format of a node's kDFS directory.
//!
//! ```text
//! DIR/kdfs.sb      superblock (every node)
//! DIR/root.meta    root meta-file (root node only): id of the root directory
//! DIR/ino.next     next free local inode number (reserved in blocks)
//! DIR/inodes/      one object per local inode, named by its number in hex
//! DIR/generation   a mirrored store's generation
//! DIR/mirrors/N/   the copy of node N's store kept here (its mirror)
//! ```
//!
//! `mkfs` (in `mkfs.rs`) makes a store.
//!
//! Both meta-files are `MAGIC(8) | version u32 LE | len u32 LE | postcard
//! payload | crc32 u32 LE` (the CRC covers everything before it), written to a
//! temporary name, fsync'ed and renamed into place, so a crash leaves either
//! the old or the new file, and a damaged one is refused.
//!
//! `DIR` and `DIR/inodes` are owned by root and mode 0700: the objects keep
//! the modes of kDFS files, but not the directories above them, so a store
//! other users can reach lets them read any file and forge directory
//! entries. mkfs makes them so and [`StoreDir::check_private`] refuses
//! anything else. Meta-files are read and written relative to the
//! directory's descriptor ([`StoreDir`]), never through a path that could
//! be swapped meanwhile.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use krg_proto::kdfs::InodeId;
use krg_proto::NodeId;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::KdfsError;

mod mkfs;
mod users;
pub use mkfs::{mkfs, MkfsOptions, FIRST_INO};
pub use users::other_users;

pub const SUPERBLOCK: &str = "kdfs.sb";
pub const ROOT_META: &str = "root.meta";
pub const INO_NEXT: &str = "ino.next";
/// The store's generation (a mirrored store's: see `mirror`).
pub const GENERATION: &str = "generation";
pub const INODES: &str = "inodes";
/// Other nodes' striped files: this node's units of each (see `store::striping`).
pub const STRIPES: &str = "stripes";

/// The one owner of a store's directories: krgd, which serves them, runs
/// as root.
pub const STORE_OWNER: u32 = 0;

const SB_MAGIC: &[u8; 8] = b"KDFS-SB\0";
const ROOT_MAGIC: &[u8; 8] = b"KDFS-RT\0";
const NEXT_MAGIC: &[u8; 8] = b"KDFS-NX\0";
const GEN_MAGIC: &[u8; 8] = b"KDFS-GN\0";

/// Layout version written by this code; older layouts stay readable.
/// 2: the superblock says how many copies the store keeps (`replicas`).
pub const LAYOUT_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    /// Id of the file system; 0 on a non-root node until its first attach
    /// binds it to the root node's file system.
    pub fs_id: u128,
    pub node: NodeId,
    pub root_node: NodeId,
    pub layout: u32,
    /// Seconds since the epoch at mkfs.
    pub created: u64,
    /// Copies of this store's files: 1, or 2 (the second on its mirror,
    /// the next member; see `mirror`). Layout 1 had no field: 1.
    pub replicas: u8,
}

/// The superblock of layout 1.
#[derive(Deserialize)]
struct SuperblockV1 {
    fs_id: u128,
    node: NodeId,
    root_node: NodeId,
    layout: u32,
    created: u64,
}

/// The most copies a store keeps.
pub const MAX_REPLICAS: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootMeta {
    pub fs_id: u128,
    pub root: InodeId,
}

/// Encode `value` as a checked meta-file image.
fn encode<T: Serialize>(magic: &[u8; 8], value: &T) -> Result<Vec<u8>, KdfsError> {
    let payload = postcard::to_stdvec(value)
        .map_err(|e| KdfsError::Invalid(format!("cannot encode meta-file: {e}")))?;
    let mut out = Vec::with_capacity(payload.len() + 20);
    out.extend_from_slice(magic);
    out.extend_from_slice(&LAYOUT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decode and check a meta-file image; `path` names it in errors.
fn decode<T: DeserializeOwned>(magic: &[u8; 8], bytes: &[u8], path: &Path) -> Result<T, KdfsError> {
    let bad = |why: &str| KdfsError::corrupt(path, why.to_string());
    if bytes.len() < 20 {
        return Err(bad("too short to be a kDFS meta-file"));
    }
    if &bytes[..8] != magic {
        return Err(bad("bad magic (not a kDFS meta-file of this kind)"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != crc {
        return Err(bad("checksum mismatch (the file is corrupted)"));
    }
    let version = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
    if version == 0 || version > LAYOUT_VERSION {
        return Err(bad(&format!(
            "layout version {version}, this kdfs reads 1..={LAYOUT_VERSION}"
        )));
    }
    let len = u32::from_le_bytes([body[12], body[13], body[14], body[15]]) as usize;
    if len != body.len() - 16 {
        return Err(bad("length field does not match the file size"));
    }
    postcard::from_bytes(&body[16..]).map_err(|e| bad(&format!("undecodable payload: {e}")))
}

fn io_err(path: &Path, e: nix::errno::Errno) -> KdfsError {
    KdfsError::io(path, e.into())
}

/// Open directory `name` in `dir` without following a symlink.
pub fn open_dir_at(dir: BorrowedFd, name: &str, shown: &Path) -> Result<OwnedFd, KdfsError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat(dir, name, flags, Mode::empty()).map_err(|e| io_err(shown, e))
}

/// A store's top directory, opened once: its meta-files are read and
/// written relative to this descriptor, and named by `path` in errors.
pub struct StoreDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl StoreDir {
    /// Open the store directory at `path` (a symlink there is followed: the
    /// administrator named it).
    pub fn open(path: &Path) -> Result<Self, KdfsError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(path, flags, Mode::empty()).map_err(|e| match e {
            nix::errno::Errno::ENOTDIR => {
                KdfsError::Invalid(format!("{} is not a directory", path.display()))
            }
            e => io_err(path, e),
        })?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Open `DIR/inodes`, refusing it unless it is private too.
    pub fn open_inodes(&self) -> Result<OwnedFd, KdfsError> {
        let path = self.path.join(INODES);
        let fd = open_dir_at(self.fd(), INODES, &path).map_err(|e| match e {
            KdfsError::Io { cause, .. } if cause.kind() == std::io::ErrorKind::NotFound => {
                KdfsError::corrupt(&path, "missing inode directory")
            }
            e => e,
        })?;
        check_private(fd.as_fd(), &path)?;
        Ok(fd)
    }

    /// Open `DIR/stripes`, refusing it unless it is private. With
    /// `create` (krgd attaching the store) it is made (root's, 0700) the
    /// first time; without (a read-only view), `None` when there is none.
    pub fn open_stripes(&self, create: bool) -> Result<Option<OwnedFd>, KdfsError> {
        let path = self.path.join(STRIPES);
        if create {
            match mkdirat(self.fd(), STRIPES, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(io_err(&path, e)),
            }
        }
        let fd = match open_dir_at(self.fd(), STRIPES, &path) {
            Ok(fd) => fd,
            Err(KdfsError::Io { cause, .. })
                if !create && cause.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        check_private(fd.as_fd(), &path)?;
        Ok(Some(fd))
    }

    /// Mark the store as in use for as long as this descriptor is open
    /// (krgd serving it, mount.kdfs reading it): a shared `flock` on the
    /// directory, which many users may hold at once and the kernel drops
    /// when the process dies. [`StoreDir::lock_offline`] (fsck.kdfs) is
    /// refused while one is held.
    pub fn lock_in_use(&self) -> Result<(), KdfsError> {
        self.flock(
            libc::LOCK_SH | libc::LOCK_NB,
            "is being checked by fsck.kdfs: wait for it to end",
        )
    }

    /// Take the store for an offline tool (fsck.kdfs): an exclusive
    /// `flock`, refused while a krgd serves it or a mount reads it.
    pub fn lock_offline(&self) -> Result<(), KdfsError> {
        self.flock(
            libc::LOCK_EX | libc::LOCK_NB,
            "is in use (served by a running krgd, or read by mount.kdfs): stop krgd and unmount it first",
        )
    }

    fn flock(&self, how: libc::c_int, busy: &str) -> Result<(), KdfsError> {
        // SAFETY: flock(2) on a descriptor this StoreDir owns; no memory is passed.
        let r = unsafe { libc::flock(self.fd.as_raw_fd(), how) };
        if r == 0 {
            Ok(())
        } else {
            match nix::errno::Errno::last() {
                nix::errno::Errno::EWOULDBLOCK => Err(KdfsError::Invalid(format!(
                    "{} {busy}",
                    self.path.display()
                ))),
                e => Err(io_err(&self.path, e)),
            }
        }
    }

    /// Refuse a store other users could reach (see the module header).
    pub fn check_private(&self) -> Result<(), KdfsError> {
        check_private(self.fd(), &self.path)
    }

    /// Give the directory to root, mode 0700 (mkfs).
    fn make_private(&self) -> Result<(), KdfsError> {
        let root = Some(nix::unistd::Uid::from_raw(STORE_OWNER));
        nix::unistd::fchown(self.fd(), root, Some(nix::unistd::Gid::from_raw(0))).map_err(|e| {
            KdfsError::Invalid(format!(
                "{}: cannot give it to root ({e}): run mkfs.kdfs as root",
                self.path.display()
            ))
        })?;
        // After chown, which may clear set-id bits.
        fchmod(self.fd(), Mode::from_bits_truncate(0o700)).map_err(|e| io_err(&self.path, e))
    }

    fn read_file(&self, name: &str) -> Result<Vec<u8>, KdfsError> {
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(self.fd(), name, flags, Mode::empty()).map_err(|e| match e {
            nix::errno::Errno::ENOENT => KdfsError::corrupt(
                &path,
                "missing (is the directory formatted with mkfs.kdfs?)",
            ),
            e => io_err(&path, e),
        })?;
        let mut bytes = Vec::new();
        File::from(fd)
            .read_to_end(&mut bytes)
            .map_err(|e| KdfsError::io(&path, e))?;
        Ok(bytes)
    }

    /// Write `bytes` to meta-file `name` atomically and durably.
    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), KdfsError> {
        let tmp = format!(".{name}.tmp");
        let shown = self.path.join(&tmp);
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_TRUNC
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC;
        let fd = openat(
            self.fd(),
            tmp.as_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io_err(&shown, e))?;
        let mut f = File::from(fd);
        f.write_all(bytes).map_err(|e| KdfsError::io(&shown, e))?;
        f.sync_all().map_err(|e| KdfsError::io(&shown, e))?;
        nix::fcntl::renameat(self.fd(), tmp.as_str(), self.fd(), name)
            .map_err(|e| io_err(&self.path.join(name), e))?;
        self.sync()
    }

    /// Meta-file `name` as it is on disk; `None`: there is none.
    pub(crate) fn read_optional(&self, name: &str) -> Result<Option<Vec<u8>>, KdfsError> {
        match self.read_file(name) {
            Ok(b) => Ok(Some(b)),
            Err(_) if !self.has(name) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn has(&self, name: &str) -> bool {
        let flags = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        !matches!(
            nix::sys::stat::fstatat(self.fd(), name, flags),
            Err(nix::errno::Errno::ENOENT)
        )
    }

    /// Write meta-file `name` as `image` (a mirror copying its owner's),
    /// or remove it (`None`). The image is checked by whoever reads it.
    pub(crate) fn put_image(&self, name: &str, image: Option<&[u8]>) -> Result<(), KdfsError> {
        match image {
            Some(b) => self.write_atomic(name, b),
            None => match nix::unistd::unlinkat(
                self.fd(),
                name,
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            ) {
                Ok(()) | Err(nix::errno::Errno::ENOENT) => self.sync(),
                Err(e) => Err(io_err(&self.path.join(name), e)),
            },
        }
    }

    /// fsync the directory (its entries).
    pub fn sync(&self) -> Result<(), KdfsError> {
        nix::unistd::fsync(self.fd()).map_err(|e| io_err(&self.path, e))
    }

    fn read_meta<T: DeserializeOwned>(&self, magic: &[u8; 8], name: &str) -> Result<T, KdfsError> {
        decode(magic, &self.read_file(name)?, &self.path.join(name))
    }

    pub fn read_superblock(&self) -> Result<Superblock, KdfsError> {
        let bytes = self.read_file(SUPERBLOCK)?;
        let path = self.path.join(SUPERBLOCK);
        if bytes.get(8..12) == Some(&1u32.to_le_bytes()[..]) {
            let v1: SuperblockV1 = decode(SB_MAGIC, &bytes, &path)?;
            return Ok(Superblock {
                fs_id: v1.fs_id,
                node: v1.node,
                root_node: v1.root_node,
                layout: v1.layout,
                created: v1.created,
                replicas: 1,
            });
        }
        let sb: Superblock = decode(SB_MAGIC, &bytes, &path)?;
        if sb.replicas == 0 || sb.replicas > MAX_REPLICAS {
            return Err(KdfsError::corrupt(
                &path,
                format!("{} replicas (1..={MAX_REPLICAS})", sb.replicas),
            ));
        }
        Ok(sb)
    }

    pub fn write_superblock(&self, sb: &Superblock) -> Result<(), KdfsError> {
        self.write_atomic(SUPERBLOCK, &encode(SB_MAGIC, sb)?)
    }

    pub fn read_root_meta(&self) -> Result<RootMeta, KdfsError> {
        self.read_meta(ROOT_MAGIC, ROOT_META)
    }

    pub fn write_root_meta(&self, meta: &RootMeta) -> Result<(), KdfsError> {
        self.write_atomic(ROOT_META, &encode(ROOT_MAGIC, meta)?)
    }

    /// Remove the root meta-file (this node is no longer the root node);
    /// none is fine.
    pub fn remove_root_meta(&self) -> Result<(), KdfsError> {
        match nix::unistd::unlinkat(
            self.fd(),
            ROOT_META,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => self.sync(),
            Err(e) => Err(io_err(&self.path.join(ROOT_META), e)),
        }
    }

    /// The store's generation; `None` before it was first served mirrored.
    pub fn read_generation(&self) -> Result<Option<u32>, KdfsError> {
        match self.read_optional(GENERATION)? {
            Some(b) => decode(GEN_MAGIC, &b, &self.path.join(GENERATION)).map(Some),
            None => Ok(None),
        }
    }

    pub fn write_generation(&self, generation: u32) -> Result<(), KdfsError> {
        self.write_atomic(GENERATION, &encode(GEN_MAGIC, &generation)?)
    }

    pub fn read_ino_next(&self) -> Result<u64, KdfsError> {
        self.read_meta(NEXT_MAGIC, INO_NEXT)
    }

    pub fn write_ino_next(&self, next: u64) -> Result<(), KdfsError> {
        self.write_atomic(INO_NEXT, &encode(NEXT_MAGIC, &next)?)
    }
}

/// Refuse directory `fd` (at `path`) unless root owns it and nobody else
/// may enter it: one line saying what is wrong and the command that fixes it.
fn check_private(fd: BorrowedFd, path: &Path) -> Result<(), KdfsError> {
    let st = fstat(fd).map_err(|e| io_err(path, e))?;
    let p = path.display();
    if st.st_uid != STORE_OWNER {
        return Err(KdfsError::Invalid(format!(
            "{p}: owned by uid {}, not root: other users could read and forge kDFS objects \
             (a kDFS store must be owned by root, mode 0700): chown root:root {p}",
            st.st_uid
        )));
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KdfsError::Invalid(format!(
            "{p}: mode {mode:04o} lets other users in (a kDFS store must be owned by root, \
             mode 0700): chmod 700 {p}"
        )));
    }
    Ok(())
}

/// The superblock of the store at `dir` (mount.kdfs reads it before attaching).
pub fn read_superblock(dir: &Path) -> Result<Superblock, KdfsError> {
    StoreDir::open(dir)?.read_superblock()
}

#[cfg(test)]
mod tests;
