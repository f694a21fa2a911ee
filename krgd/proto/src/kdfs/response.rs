//! The answers of a krgd's kDFS service to [`KdfsRequest`](super::KdfsRequest)s.

use serde::{Deserialize, Serialize};

use super::{
    Attr, Bytes, DirEntry, FileKind, InodeId, Inval, LockHolder, StripeLayout, StripePolicy,
};

/// Answers to [`KdfsRequest`](super::KdfsRequest)s; `Errno` for any that failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KdfsResponse {
    /// To `Hello`.
    Hello {
        /// The id of the attached store's file system (`None`: no store).
        fs_id: Option<u128>,
        /// The answering node.
        node: crate::NodeId,
    },
    /// To `Root`: the root directory's id.
    Root(InodeId),
    /// To `Statfs`, in 4 KiB blocks.
    Statfs {
        /// Size of the store's file system.
        blocks: u64,
        /// Free blocks.
        bfree: u64,
        /// Free blocks an ordinary user may use.
        bavail: u64,
        /// Inodes of the file system.
        files: u64,
        /// Free inodes.
        ffree: u64,
        /// Block size: 4096.
        bsize: u32,
    },
    /// To `GetAttr`, `SetAttr` and `IncLink`: the (new) attributes.
    Attr(Attr),
    /// A new inode, and its handle when it was opened too.
    Created {
        /// The new inode's attributes.
        attr: Attr,
        /// Its handle, when `open` was asked.
        fh: Option<u64>,
        /// To `Create`: the directory's striping policy (a new file is to
        /// get a layout, a new directory the policy).
        stripe: Option<StripePolicy>,
    },
    /// To `Readlink`: the symlink's target bytes.
    Target(Vec<u8>),
    /// To `Lookup`: the entry found.
    Entry {
        /// The inode it names.
        ino: InodeId,
        /// Its type.
        kind: FileKind,
        /// Its attributes, when the inode is owned here too.
        attr: Option<Attr>,
    },
    /// An entry that was replaced or removed.
    Removed(Option<DirEntry>),
    /// To `IsEmptyDir`.
    Empty(bool),
    /// To `Open` and `OpenDir`: the new handle.
    Handle(u64),
    /// To `Lend`: the directory is lent; the new inodes made under the
    /// loan take the local numbers `first .. first + count`, reserved for
    /// it (never handed out otherwise).
    Lent {
        /// First local inode number.
        first: u64,
        /// How many.
        count: u64,
    },
    /// To `Open` of a striped file: the handle, and where the data is.
    StripedHandle {
        /// The new handle.
        fh: u64,
        /// The file's layout.
        layout: StripeLayout,
    },
    /// To `GetStripe`: a directory's policy, or a file's layout.
    Stripe {
        /// The directory's policy (`None`: files made in it are not striped).
        policy: Option<StripePolicy>,
        /// The file's layout (`None`: not striped).
        layout: Option<StripeLayout>,
        /// A directory's replica policy (see `Replicas`): asked with the
        /// striping policy before a create on another node.
        replicas: Option<u8>,
    },
    /// To `GetReplicas`: how many nodes keep the inode (its own count,
    /// else the file system's), and a directory's policy for new inodes.
    Replicas {
        /// Copies of the inode.
        own: u8,
        /// The count inodes made in this directory get (`None`: the file
        /// system's).
        policy: Option<u8>,
    },
    /// To `Conversion`: the copies the store keeps now, and those a
    /// waiting conversion gives it.
    Conversion {
        /// Copies now.
        copies: u8,
        /// A conversion waiting for the mounts (`None`: none).
        pending: Option<u8>,
    },
    /// To `SetInodeReplicas`: the inode's count before and after (the
    /// mirrors that gain or lose it are copied again).
    ReplicasSet {
        /// Copies before.
        before: u8,
        /// Copies now.
        after: u8,
    },
    /// To `Read`: the bytes read (short at the end of the file).
    Data(Bytes),
    /// To `Write`: how many bytes were written.
    Written(u32),
    /// To `ReadDir`: the next entries (empty at the end).
    Entries(Vec<DirEntry>),
    /// To `GetXattr`: the value.
    Xattr(Bytes),
    /// To `ListXattr`: the names.
    XattrNames(Vec<Vec<u8>>),
    /// To `GetLock`: the conflicting lock, or `None` if it could be taken.
    LockHeld(Option<LockHolder>),
    /// To a waiting `SetLock`: still blocked, ask again.
    LockBusy,
    /// To `LockLease`: the lock manager's epoch, drawn at each start of
    /// its krgd; a new one means the locks it held are forgotten, and
    /// their holders reclaim them (`ReclaimLock`).
    LockEpoch(u64),
    /// The request succeeded and has nothing to return.
    Done,
    /// The operation failed with this errno.
    Errno(i32),
    /// To `Watch`: forget `items`; acknowledge with `acked: seq`.
    Invalidate {
        /// Sequence number of the last item.
        seq: u64,
        /// What to forget (empty: nothing happened).
        items: Vec<Inval>,
    },
    /// To `Unlink`: the entry removed, and whether its link was dropped here
    /// (else the client drops it at the inode's owner).
    Unlinked {
        /// The entry that was removed.
        entry: DirEntry,
        /// The inode is owned here and lost that link.
        link_dropped: bool,
    },
    /// To `HandOver`: whether the hand-over has ended (see the log of the
    /// leaving node for what it moved).
    HandedOver {
        /// The hand-over pass ended.
        done: bool,
    },
    /// To `MirrorRequest::Begin`: what the mirror holds of the owner's store.
    Mirrored(super::MirrorInventory),
    /// To `Replication`.
    Replication(super::ReplicaState),
    /// To `MirrorRequest::Restore`: the store was copied back, as the
    /// mirror had it at `generation`.
    Restored {
        /// The generation the mirror's copy was (or was served as).
        generation: u32,
    },
}
