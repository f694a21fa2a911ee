//! What kDFS says of inodes and members: kinds, attributes and their
//! changes, new inodes, directory entries, members.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::InodeId;
use crate::NodeId;

/// The type of an inode, as the `S_IFMT` bits of its mode say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device node.
    CharDev,
    /// A block device node.
    BlockDev,
    /// A Unix socket node.
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
    /// Whole seconds since the epoch (negative before 1970).
    pub sec: i64,
    /// Nanoseconds within the second (0..1e9).
    pub nsec: u32,
}

/// An inode's attributes, as stat(2) reports them, from the node that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    /// The inode's cluster-wide id.
    pub ino: InodeId,
    /// Its type.
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky (no type bits).
    pub perm: u16,
    /// Number of directory entries naming it, cluster-wide.
    pub nlink: u32,
    /// Owner's uid.
    pub uid: u32,
    /// Group's gid.
    pub gid: u32,
    /// Device number of a device node (0 otherwise).
    pub rdev: u32,
    /// Size in bytes (a symlink: its target's length).
    pub size: u64,
    /// 512-byte blocks allocated on the owner's disk.
    pub blocks: u64,
    /// Last access.
    pub atime: Time,
    /// Last change of the data.
    pub mtime: Time,
    /// Last change of the inode (attributes, links, data).
    pub ctime: Time,
}

/// A time a `setattr` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    /// The owning node's current time (utimensat's `UTIME_NOW`).
    Now,
    /// This time.
    At(Time),
}

/// Changes of a `setattr`; `None` leaves the field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    /// New permission bits (chmod; type bits ignored).
    pub mode: Option<u32>,
    /// New owner (chown).
    pub uid: Option<u32>,
    /// New group (chown).
    pub gid: Option<u32>,
    /// New size in bytes (truncate).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
}

/// What a new inode is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewInode {
    /// Its type.
    pub kind: FileKind,
    /// Permission bits (umask already applied).
    pub perm: u16,
    /// Owner: the uid of the process that creates it.
    pub uid: u32,
    /// Group: the creator's gid, or the directory's (setgid directories).
    pub gid: u32,
    /// Device number of a device node (mknod), else 0.
    pub rdev: u32,
    /// Target of a symlink.
    pub target: Option<Vec<u8>>,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The name, as bytes (no `/`, no NUL).
    pub name: Vec<u8>,
    /// The inode it names, possibly owned by another node.
    pub ino: InodeId,
    /// The inode's type, kept in the entry for readdir.
    pub kind: FileKind,
}

/// Which kind of entry an unlink/rmdir accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoveWhat {
    /// unlink(2): anything but a directory (EISDIR otherwise).
    NonDir,
    /// rmdir(2): a directory only (ENOTDIR otherwise).
    Dir,
}

/// A member as kDFS needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfsNode {
    /// The member's node id (the top 16 bits of its inodes' ids).
    pub id: NodeId,
    /// Where its krgd accepts peer connections.
    pub addr: SocketAddr,
    /// Whether it answers (a failed member's inodes answer ENOTCONN).
    pub online: bool,
    /// The cluster marks it failed (its mirror, if any, serves its store).
    pub failed: bool,
}
