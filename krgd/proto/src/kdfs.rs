//! kDFS messages: local tools (mkfs.kdfs, mount.kdfs) asking their krgd, and
//! the FUSE client asking the krgd that stores an inode.
//!
//! An inode is named cluster-wide by an [`InodeId`]: the owning node's id in
//! the top 16 bits, the inode number local to that node in the low 48 bits.
//! Whoever holds an id knows which krgd to ask.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Cluster-wide inode id: `node << 48 | local`.
pub type InodeId = u64;

/// Bits of an [`InodeId`] holding the node-local inode number.
pub const LOCAL_BITS: u32 = 48;

/// Largest node id a kDFS can hold (16 bits; 0 is not a valid node id).
pub const MAX_KDFS_NODE: NodeId = 0xffff;

/// The node that owns inode `id`.
pub fn inode_node(id: InodeId) -> NodeId {
    (id >> LOCAL_BITS) as NodeId
}

/// The node-local inode number of `id`.
pub fn inode_local(id: InodeId) -> u64 {
    id & ((1u64 << LOCAL_BITS) - 1)
}

/// Build an id from its parts (`local` is truncated to 48 bits).
pub fn inode_id(node: NodeId, local: u64) -> InodeId {
    (u64::from(node) << LOCAL_BITS) | (local & ((1u64 << LOCAL_BITS) - 1))
}

/// File data on the wire: serialized as one byte string, not as a sequence
/// of a million one-byte elements (which costs more than the copy itself).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
    Socket,
}

impl FileKind {
    /// The kind a `st_mode` (or a mknod mode) names; a mode without a type
    /// is a regular file, as mknod(2) reads it.
    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFCHR => FileKind::CharDev,
            libc::S_IFBLK => FileKind::BlockDev,
            libc::S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }
}

/// Seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub ino: InodeId,
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky (no type bits).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    pub blocks: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    Now,
    At(Time),
}

/// Changes of a `setattr`; `None` leaves the field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// What a new inode is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewInode {
    pub kind: FileKind,
    /// Permission bits (umask already applied).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    /// Target of a symlink.
    pub target: Option<Vec<u8>>,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: InodeId,
    pub kind: FileKind,
}

/// Which kind of entry an unlink/rmdir accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoveWhat {
    NonDir,
    Dir,
}

/// A member as kDFS needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfsNode {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub online: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KdfsAdminRequest {
    /// This node's id, session and address, the members the krgd knows of,
    /// and the directory it serves.
    Info,
    /// Serve the formatted kDFS directory `dir` to the cluster. `fs_id` is the
    /// file system's id learnt from the root node: a store formatted on a
    /// non-root node is bound to it at its first attach.
    Attach { dir: String, fs_id: Option<u128> },
    /// Stop serving the attached directory.
    Detach,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KdfsAdminReply {
    Info {
        node: NodeId,
        session: crate::SessionId,
        addr: SocketAddr,
        /// False while no cluster has been started.
        cluster_started: bool,
        members: Vec<KdfsNode>,
        attached: Option<String>,
    },
    Attached {
        fs_id: u128,
        root_node: NodeId,
    },
    Detached,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KdfsRequest {
    /// Is a kDFS store attached on this node, and which file system?
    Hello,
    /// The root directory's id (root node only).
    Root,
    Statfs,
    GetAttr {
        ino: InodeId,
    },
    SetAttr {
        ino: InodeId,
        set: SetAttr,
    },
    Readlink {
        ino: InodeId,
    },
    /// Find `name` in directory `dir` (owned here). The answer carries the
    /// attributes too when the inode is also owned here.
    Lookup {
        dir: InodeId,
        name: Vec<u8>,
    },
    /// Make an inode here with one link not yet entered in any directory;
    /// with `open`, also open it (`Some(true)`: for writing) in the same step.
    MakeInode {
        new: NewInode,
        open: Option<bool>,
    },
    /// Make an inode here and enter it as `name` in `dir` (also here).
    Create {
        dir: InodeId,
        name: Vec<u8>,
        new: NewInode,
        open: Option<bool>,
    },
    /// Enter `ino` as `name` in `dir`; with `replace`, an existing non-directory
    /// (or empty-checked directory) entry is replaced and returned.
    AddEntry {
        dir: InodeId,
        name: Vec<u8>,
        ino: InodeId,
        kind: FileKind,
        replace: bool,
    },
    /// Remove `name` from `dir`, checking its kind and (if given) its inode.
    RemoveEntry {
        dir: InodeId,
        name: Vec<u8>,
        what: RemoveWhat,
        expect: Option<InodeId>,
    },
    /// Rename an entry between two directories both owned here.
    Rename {
        src_dir: InodeId,
        src_name: Vec<u8>,
        dst_dir: InodeId,
        dst_name: Vec<u8>,
        flags: u32,
    },
    /// Add one link to `ino` (a non-directory owned here).
    IncLink {
        ino: InodeId,
    },
    /// Drop one link of `ino`; the inode is freed at zero links and no open handle.
    DecLink {
        ino: InodeId,
    },
    /// Update the ctime of `ino` (a rename moved it).
    Touch {
        ino: InodeId,
    },
    /// Remove the directory inode `ino` if it is empty (ENOTEMPTY otherwise).
    RemoveDir {
        ino: InodeId,
    },
    /// Whether directory `ino` is empty.
    IsEmptyDir {
        ino: InodeId,
    },
    Open {
        ino: InodeId,
        write: bool,
    },
    Read {
        ino: InodeId,
        fh: u64,
        offset: u64,
        len: u32,
    },
    Write {
        ino: InodeId,
        fh: u64,
        offset: u64,
        data: Bytes,
    },
    Fsync {
        ino: InodeId,
        fh: u64,
        datasync: bool,
    },
    Release {
        ino: InodeId,
        fh: u64,
    },
    Fallocate {
        ino: InodeId,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
    },
    OpenDir {
        ino: InodeId,
    },
    ReadDir {
        fh: u64,
        offset: u64,
        max: u32,
    },
    ReleaseDir {
        fh: u64,
    },
    FsyncDir {
        ino: InodeId,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KdfsResponse {
    Hello {
        fs_id: Option<u128>,
        node: crate::NodeId,
    },
    Root(InodeId),
    Statfs {
        blocks: u64,
        bfree: u64,
        bavail: u64,
        files: u64,
        ffree: u64,
        bsize: u32,
    },
    Attr(Attr),
    /// A new inode, and its handle when it was opened too.
    Created {
        attr: Attr,
        fh: Option<u64>,
    },
    Target(Vec<u8>),
    Entry {
        ino: InodeId,
        kind: FileKind,
        attr: Option<Attr>,
    },
    /// An entry that was replaced or removed.
    Removed(Option<DirEntry>),
    Empty(bool),
    Handle(u64),
    Data(Bytes),
    Written(u32),
    Entries(Vec<DirEntry>),
    Done,
    /// The operation failed with this errno.
    Errno(i32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_travel_as_one_byte_string() {
        let data = Bytes(vec![7u8; 1000]);
        let enc = postcard::to_stdvec(&data).unwrap();
        assert_eq!(enc.len(), 1002, "length varint + raw bytes");
        let back: Bytes = postcard::from_bytes(&enc).unwrap();
        assert_eq!(back, data);
        assert!(postcard::from_bytes::<Bytes>(&[0xff, 0xff, 0x01]).is_err());
    }

    #[test]
    fn inode_ids_split_and_join() {
        let id = inode_id(3, 0xabc);
        assert_eq!((inode_node(id), inode_local(id)), (3, 0xabc));
    }
}
