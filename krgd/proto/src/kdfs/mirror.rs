//! Replication of a node's store to its mirror (`mkfs.kdfs --replicas 2`).
//!
//! The node that owns a store sends its mirror the *state* of what each
//! change touched, never the operation: applying a [`MirrorChange`] twice,
//! or one that an earlier full copy already holds, leaves the same mirror.
//! Objects and directories are named by their node-local inode number, as
//! in the store (`inodes/<hex>`).
//!
//! A store has a *generation*, raised each time a node starts serving it
//! (its own node at start, or its mirror taking it over when the node
//! failed); who serves generation g is decided once in the cluster's Raft
//! log, so that two nodes never serve one store.

use serde::{Deserialize, Serialize};

use super::{Bytes, FileKind, InodeId, Time};

/// Everything the store keeps of one object, but its data and, for a
/// directory, its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectState {
    /// Its type.
    pub kind: FileKind,
    /// Permission bits, setuid/setgid/sticky included.
    pub perm: u16,
    /// Owner's uid.
    pub uid: u32,
    /// Group's gid.
    pub gid: u32,
    /// Size of a regular file (the mirror truncates or extends to it).
    pub size: u64,
    /// Last access.
    pub atime: Time,
    /// Last change of the data.
    pub mtime: Time,
    /// Device number of a device node.
    pub rdev: u64,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
    /// Every extended attribute of the object, the store's own counts
    /// (`trusted.kdfs.*`) included: the mirror drops the others.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One change to a mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MirrorChange {
    /// Object `local` is now `state` (made if missing, remade if its kind
    /// changed), or gone (`None`).
    Object {
        /// Its node-local inode number.
        local: u64,
        /// What it is now.
        state: Option<ObjectState>,
    },
    /// Entries of directory `local`: each name now encodes the given entry
    /// (the store's symlink target) or is absent. With `complete`, these
    /// are all its entries: the mirror drops the others.
    Entries {
        /// The directory's node-local inode number.
        local: u64,
        /// Names and what they encode now.
        entries: Vec<(Vec<u8>, Option<String>)>,
        /// These are every entry of the directory.
        complete: bool,
    },
    /// Bytes of regular file `local` at `offset`.
    Data {
        /// The file's node-local inode number.
        local: u64,
        /// Where the bytes go.
        offset: u64,
        /// The bytes.
        data: Bytes,
    },
    /// A store meta-file (`kdfs.sb`, `root.meta`, `ino.next`) as the owner
    /// has it, its image checked by the reader that opens it; `None`:
    /// absent.
    Meta {
        /// Which meta-file.
        name: MetaFile,
        /// Its image.
        image: Option<Vec<u8>>,
    },
    /// Flush object `local` (or, for `None`, the whole mirror) to disk:
    /// an fsync on the owner is one on the mirror too.
    Sync {
        /// The object, or the whole mirror.
        local: Option<u64>,
    },
    /// Bytes of another node's striped file `ino` that the owner holds
    /// (its copy in `stripes/`), at their offset in the file.
    StripeData {
        /// The striped file.
        ino: InodeId,
        /// Where the bytes go.
        offset: u64,
        /// The bytes.
        data: Bytes,
    },
    /// The owner's copy of striped file `ino` (in `stripes/`) is now
    /// `state` (made if missing), or gone (`None`).
    StripeCopy {
        /// The striped file.
        ino: InodeId,
        /// Its copy's length and data time.
        state: Option<StripeState>,
    },
    /// The copy of striped file `old` gets `new`'s name too (its owner
    /// left with it: `StripeRename`).
    StripeLink {
        /// The file's former id.
        old: InodeId,
        /// Its id now.
        new: InodeId,
    },
    /// Flush the copy of striped file `ino` to disk.
    StripeSync {
        /// The striped file.
        ino: InodeId,
    },
}

/// A copy of another node's striped file: a sparse file, the units its
/// holder keeps at their own offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeState {
    /// Its length.
    pub size: u64,
    /// Its last data change.
    pub mtime: Time,
}

/// What a mirror holds (`Begin`'s answer): enough to skip what did not
/// change since it was copied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorInventory {
    /// Its objects.
    pub objects: Vec<MirroredObject>,
    /// Its copies of other nodes' striped files, by file.
    pub stripes: Vec<(InodeId, StripeState)>,
}

/// The meta-files of a store a mirror keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaFile {
    /// `kdfs.sb`.
    Superblock,
    /// `root.meta` (the root node's).
    RootMeta,
    /// `ino.next`.
    InoNext,
}

/// What a mirror holds of one object: enough to skip copying a regular
/// file's data again when it has not changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirroredObject {
    /// Its node-local inode number.
    pub local: u64,
    /// Its type.
    pub kind: FileKind,
    /// Its size.
    pub size: u64,
    /// Its last data change.
    pub mtime: Time,
    /// Its own count of copies, if it has one (`kdfsctl replicas N DIR`):
    /// a copy that keeps only the inodes of more copies hands a store
    /// back without dropping the others.
    pub replicas: Option<u8>,
}

/// Requests between a store's owner and its mirror.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MirrorRequest {
    /// Start (or restart) mirroring: the mirror forgets the session it had
    /// with this owner and answers what it holds
    /// ([`super::KdfsResponse::Mirrored`]); its copy serves nothing until
    /// `Synced`.
    Begin {
        /// Drawn by the sender for this copy.
        session: u64,
        /// The store's generation (see [`MirrorRequest::HandBack`]).
        generation: u32,
    },
    /// Changes of the owner's store, in the owner's order (`seq` counts
    /// from 1 within the session). A gap, or another session, answers
    /// `ESTALE`: the owner copies everything again.
    Apply {
        /// The owner's session.
        session: u64,
        /// Number of this batch in the session.
        seq: u64,
        /// The changes, in order.
        changes: Vec<MirrorChange>,
    },
    /// To the mirror that took node `store`'s store over while it was
    /// down, from that node back: stop serving it and copy it back (a
    /// session to the node, `Begin` to `Synced`), then answer. The mirror
    /// had it as generation `generation`.
    HandBack {
        /// The generation the mirror took it over as.
        generation: u32,
    },
    /// From a node whose store was never served (formatted again after
    /// its disk was lost), to its mirror: copy back the store it keeps of
    /// file system `fs_id`, served (taken over) or a complete copy, then
    /// answer `Restored`; `ENOENT`: it keeps none.
    Restore {
        /// The file system the node's store belongs to.
        fs_id: u128,
    },
    /// The full copy of this session is complete: from now on the copy
    /// may serve the owner's files while the owner is down.
    Synced {
        /// The owner's session.
        session: u64,
        /// The last batch sent.
        seq: u64,
    },
}

/// How a node's store and the copies it keeps stand (`kdfsctl status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// Copies its store keeps (1: not mirrored).
    pub replicas: u8,
    /// It serves its own store now (a mirrored store: once claimed).
    pub serving: bool,
    /// Its store's generation (mirrored stores).
    pub generation: u32,
    /// The nodes mirroring its store, first to last.
    pub mirrors: Vec<MirrorLink>,
    /// Nodes whose stores it keeps a full, current copy of.
    pub copies_of: Vec<crate::NodeId>,
    /// Nodes whose inodes of more copies than the file system's it keeps
    /// a current copy of (a later mirror: `kdfsctl replicas N DIR`).
    pub partial_copies_of: Vec<crate::NodeId>,
    /// Nodes whose stores it serves, having taken them over.
    pub serves_for: Vec<crate::NodeId>,
    /// A conversion to more copies waiting for its node's mounts.
    pub converting: Option<Converting>,
}

/// A conversion to more copies waiting for a node's mounts (`kdfsctl
/// replicas 2` while mounted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Converting {
    /// The copies asked.
    pub copies: u8,
    /// The handles its mounts said last still use passthrough (the store
    /// is converted when there are none).
    pub in_place: u32,
}

/// One mirror of a store, as the node sending it the changes sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorLink {
    /// The mirror.
    pub node: crate::NodeId,
    /// It holds a full, current copy.
    pub synced: bool,
    /// How far the full copy to it is, while one runs.
    pub copying: Option<CopyProgress>,
}

/// How far a full copy of a store is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyProgress {
    /// Objects (and copies of striped files) looked at so far.
    pub done: u64,
    /// Objects (and copies of striped files) to look at in all.
    pub of: u64,
    /// Bytes sent so far.
    pub bytes: u64,
}
