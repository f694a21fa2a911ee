//! kDFS messages: local tools (mkfs.kdfs, mount.kdfs) asking their krgd, and
//! the FUSE client asking the krgd that stores an inode.
//!
//! An inode is named cluster-wide by an [`InodeId`]: the owning node's id in
//! the top 16 bits, the inode number local to that node in the low 48 bits.
//! Whoever holds an id knows which krgd to ask.
//!
//! Files: `ids` (inode ids), `admin` (the local tools' requests to their
//! krgd), `attr` (inode kinds, attributes, directory entries, members),
//! `bytes` (file data on the wire), `cache` (coherence of the mounts'
//! kernel caches), `lock` (cluster-wide locks), `stripe` (striped files'
//! policies, layouts and pieces), `mirror` (a store's copy on its mirror
//! node), `response` (the answers); this file holds the peer requests.

use serde::{Deserialize, Serialize};

mod admin;
mod attr;
mod bytes;
mod cache;
mod ids;
mod lock;
mod mirror;
mod response;
mod stripe;

pub use admin::{KdfsAdminReply, KdfsAdminRequest};
pub use attr::{Attr, DirEntry, FileKind, KdfsNode, NewInode, RemoveWhat, SetAttr, SetTime, Time};
pub use bytes::Bytes;
pub use cache::Inval;
pub use ids::{inode_id, inode_local, inode_node, InodeId, LOCAL_BITS, MAX_KDFS_NODE};
pub use lock::{LockHolder, LockKind, LockSpec};
pub use mirror::{
    Converting, CopyProgress, MetaFile, MirrorChange, MirrorInventory, MirrorLink, MirrorRequest,
    MirroredObject, ObjectState, ReplicaState, StripeState,
};
pub use response::KdfsResponse;
pub use stripe::{Piece, StripeError, StripeLayout, StripePolicy};

/// Requests for the kDFS service of the krgd that owns an inode, from the
/// FUSE client (mount.kdfs) or another krgd. Names are bytes; handles
/// (`fh`) are those the same krgd returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KdfsRequest {
    /// Is a kDFS store attached on this node, and which file system?
    Hello,
    /// The root directory's id (root node only).
    Root,
    /// Space and inodes of the store's local file system.
    Statfs,
    /// The attributes of `ino`.
    GetAttr {
        /// An inode owned here.
        ino: InodeId,
    },
    /// Change attributes of `ino` (chmod, chown, truncate, utimens).
    SetAttr {
        /// An inode owned here.
        ino: InodeId,
        /// What to change.
        set: SetAttr,
    },
    /// The target of the symlink `ino`.
    Readlink {
        /// A symlink owned here.
        ino: InodeId,
    },
    /// Find `name` in directory `dir` (owned here). The answer carries the
    /// attributes too when the inode is also owned here.
    Lookup {
        /// The directory.
        dir: InodeId,
        /// The name looked for.
        name: Vec<u8>,
    },
    /// Make an inode here with one link not yet entered in any directory;
    /// with `open`, also open it (`Some(true)`: for writing) in the same step.
    MakeInode {
        /// What to make.
        new: NewInode,
        /// Open it too: `Some(write)`.
        open: Option<bool>,
        /// Its directory's replica policy (`kdfsctl replicas N DIR`): the
        /// copies the new inode keeps, and a new directory's own policy.
        replicas: Option<u8>,
    },
    /// Make an inode here and enter it as `name` in `dir` (also here).
    Create {
        /// The directory, owned here.
        dir: InodeId,
        /// The new entry's name (EEXIST if taken).
        name: Vec<u8>,
        /// What to make.
        new: NewInode,
        /// Open it too: `Some(write)`.
        open: Option<bool>,
    },
    /// Enter `ino` as `name` in `dir`; with `replace`, an existing non-directory
    /// (or empty-checked directory) entry is replaced and returned.
    AddEntry {
        /// The directory, owned here.
        dir: InodeId,
        /// The entry's name.
        name: Vec<u8>,
        /// The inode it names (possibly on another node).
        ino: InodeId,
        /// That inode's type.
        kind: FileKind,
        /// Replace an existing entry instead of failing with EEXIST.
        replace: bool,
    },
    /// Remove `name` from `dir`, checking its kind and (if given) its inode.
    RemoveEntry {
        /// The directory, owned here.
        dir: InodeId,
        /// The entry's name.
        name: Vec<u8>,
        /// unlink or rmdir semantics.
        what: RemoveWhat,
        /// Remove only if the entry still names this inode (else ENOENT).
        expect: Option<InodeId>,
    },
    /// Rename an entry between two directories both owned here.
    Rename {
        /// Directory of the entry to move.
        src_dir: InodeId,
        /// Its name.
        src_name: Vec<u8>,
        /// Directory it moves to.
        dst_dir: InodeId,
        /// Its new name.
        dst_name: Vec<u8>,
        /// renameat2 flags (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
        flags: u32,
    },
    /// Add one link to `ino` (a non-directory owned here).
    IncLink {
        /// The inode, owned here.
        ino: InodeId,
    },
    /// Drop one link of `ino`; the inode is freed at zero links and no open handle.
    DecLink {
        /// The inode, owned here.
        ino: InodeId,
    },
    /// Update the ctime of `ino` (a rename moved it).
    Touch {
        /// The inode, owned here.
        ino: InodeId,
    },
    /// Remove the directory inode `ino` if it is empty (ENOTEMPTY otherwise).
    RemoveDir {
        /// The directory, owned here.
        ino: InodeId,
    },
    /// Whether directory `ino` is empty.
    IsEmptyDir {
        /// The directory, owned here.
        ino: InodeId,
    },
    /// Open the file `ino`; answered with a handle.
    Open {
        /// A file owned here.
        ino: InodeId,
        /// For writing (else read-only).
        write: bool,
    },
    /// Read up to `len` bytes at `offset`; fewer at the end of the file.
    Read {
        /// The file.
        ino: InodeId,
        /// Its handle from `Open`.
        fh: u64,
        /// Byte offset.
        offset: u64,
        /// Bytes wanted (at most 16 MiB).
        len: u32,
    },
    /// Write `data` at `offset`; answered with the bytes written.
    Write {
        /// The file.
        ino: InodeId,
        /// Its handle from `Open` (for writing).
        fh: u64,
        /// Byte offset.
        offset: u64,
        /// The bytes (at most 16 MiB).
        data: Bytes,
    },
    /// Flush the file to the owner's disk.
    Fsync {
        /// The file.
        ino: InodeId,
        /// Its handle.
        fh: u64,
        /// Data only (fdatasync), not the metadata.
        datasync: bool,
    },
    /// Close a handle from `Open` (a file unlinked while open goes now).
    Release {
        /// The file.
        ino: InodeId,
        /// The handle to close.
        fh: u64,
    },
    /// fallocate(2) on the file.
    Fallocate {
        /// The file.
        ino: InodeId,
        /// Its handle (for writing).
        fh: u64,
        /// Byte offset of the range.
        offset: u64,
        /// Length of the range in bytes.
        len: u64,
        /// fallocate's mode flags.
        mode: i32,
    },
    /// Open directory `ino` for reading; answered with a handle that sees
    /// the entries as they were at this call.
    OpenDir {
        /// A directory owned here.
        ino: InodeId,
    },
    /// Entries `offset..offset + max` of an open directory.
    ReadDir {
        /// Handle from `OpenDir`.
        fh: u64,
        /// Index of the first entry wanted.
        offset: u64,
        /// Most entries to return.
        max: u32,
    },
    /// Close a handle from `OpenDir`.
    ReleaseDir {
        /// The handle to close.
        fh: u64,
    },
    /// Flush directory `ino` to the owner's disk.
    FsyncDir {
        /// A directory owned here.
        ino: InodeId,
    },
    /// The value of extended attribute `name` of `ino` (ENODATA if unset).
    GetXattr {
        /// An inode owned here.
        ino: InodeId,
        /// Full name with its namespace (`user.x`, `system.posix_acl_access`).
        name: Vec<u8>,
    },
    /// The names of the extended attributes of `ino`.
    ListXattr {
        /// An inode owned here.
        ino: InodeId,
    },
    /// Set extended attribute `name` of `ino`.
    SetXattr {
        /// An inode owned here.
        ino: InodeId,
        /// Full name with its namespace.
        name: Vec<u8>,
        /// The value (at most 64 KiB).
        value: Bytes,
        /// setxattr(2) flags: `XATTR_CREATE`, `XATTR_REPLACE`.
        flags: i32,
    },
    /// Remove extended attribute `name` of `ino` (ENODATA if unset).
    RemoveXattr {
        /// An inode owned here.
        ino: InodeId,
        /// Full name with its namespace.
        name: Vec<u8>,
    },
    /// Take, change or release a byte-range lock on `ino` (owned here).
    /// Answered `Done`, `Errno(EAGAIN)` on a conflict without `wait`, or
    /// `LockBusy` when a waiting request is still blocked after a few
    /// seconds (the client asks again).
    SetLock {
        /// The file, owned here.
        ino: InodeId,
        /// The file handle it is taken through (released with it).
        fh: u64,
        /// Who, which range, what.
        lock: LockSpec,
        /// Wait for conflicting locks to go (`F_SETLKW`, blocking flock).
        wait: bool,
    },
    /// The first lock of another owner that conflicts with `lock` (F_GETLK).
    GetLock {
        /// The file, owned here.
        ino: InodeId,
        /// The lock that would be asked for.
        lock: LockSpec,
    },
    /// Drop locks of `client`: on `ino` (or every file), of `owner` (or
    /// every owner), taken through `fh` (or any handle).
    ReleaseLocks {
        /// The mount whose locks go.
        client: u64,
        /// Only on this file.
        ino: Option<InodeId>,
        /// Only this lock owner's.
        owner: Option<u64>,
        /// Only those taken through this handle.
        fh: Option<u64>,
    },
    /// `client` is alive: keep its locks (they go after a lease without
    /// one). Answered with the manager's `LockEpoch`.
    LockLease {
        /// The mount.
        client: u64,
    },
    /// Take again a lock this mount held before the owner's krgd started
    /// again (its `LockEpoch` changed): granted unless another's lock
    /// conflicts (ENOLCK). Only reclaims take locks while a restarted
    /// manager waits for them (its grace period).
    ReclaimLock {
        /// The file, owned here.
        ino: InodeId,
        /// The file handle the lock was taken through.
        fh: u64,
        /// Who, which range, what.
        lock: LockSpec,
    },
    /// `req`, from the caching mount `client`: what the answer gives it is
    /// remembered (it is told when that changes), and the changes `req`
    /// makes are not sent back to it (its kernel saw them).
    As {
        /// The mount (its random 64-bit client number).
        client: u64,
        /// The request itself (never another `As`).
        req: Box<KdfsRequest>,
    },
    /// A caching mount waits for what it must forget (answered
    /// `Invalidate`, at once if there is something, else after about a
    /// second with nothing: the mount is alive). The first `Watch` of a
    /// mount registers it and is answered at once.
    Watch {
        /// The mount.
        client: u64,
        /// Every invalidation up to this sequence number is done.
        acked: u64,
        /// How long its kernel keeps what it is given, in milliseconds.
        ttl_ms: u64,
    },
    /// Close many handles from `Open` at once (a mount batches the releases
    /// the kernel sends after `close(2)` returned): `(inode, handle)` pairs.
    ReleaseMany {
        /// The handles to close, with their inodes.
        handles: Vec<(InodeId, u64)>,
    },
    /// unlink(2) of `name` in `dir`: remove the entry and, when its inode is
    /// owned here too, drop that link in the same request.
    Unlink {
        /// The directory, owned here.
        dir: InodeId,
        /// The entry's name (EISDIR for a directory).
        name: Vec<u8>,
    },
    /// The striping policy of directory `ino`, or the layout of file `ino`.
    GetStripe {
        /// An inode owned here.
        ino: InodeId,
    },
    /// Set (or, with `None`, remove) the striping policy of directory `dir`.
    SetStripePolicy {
        /// A directory owned here.
        dir: InodeId,
        /// The policy its new files get.
        policy: Option<StripePolicy>,
    },
    /// How many nodes keep inode `ino`, and a directory's policy for the
    /// inodes made in it (`KdfsResponse::Replicas`).
    GetReplicas {
        /// An inode owned here.
        ino: InodeId,
    },
    /// Change how many nodes keep inode `ino` (`own`), and a directory's
    /// policy for new inodes (`policy`: `Some(None)` removes it), each 1
    /// to 3 (EINVAL else; ENOTDIR for a policy on a non-directory).
    /// Answers `ReplicasSet`.
    SetInodeReplicas {
        /// An inode owned here.
        ino: InodeId,
        /// Its own count (`None`: unchanged).
        own: Option<u8>,
        /// The directory's policy (`None`: unchanged).
        policy: Option<Option<u8>>,
    },
    /// Give regular file `ino`, just made here and still empty, its layout
    /// (whose first node must be this one).
    SetLayout {
        /// A file owned here.
        ino: InodeId,
        /// Where its units go.
        layout: StripeLayout,
    },
    /// Read this node's units of striped file `ino` in `offset..offset+len`
    /// (at most 16 MiB): short where this node's copy ends.
    StripeRead {
        /// The striped file (owned here, or held here as a stripe).
        ino: InodeId,
        /// Byte offset in the file.
        offset: u64,
        /// Bytes wanted.
        len: u32,
    },
    /// Write units of striped file `ino` that this node holds.
    StripeWrite {
        /// The striped file.
        ino: InodeId,
        /// Byte offset in the file.
        offset: u64,
        /// The bytes (at most 16 MiB).
        data: Bytes,
    },
    /// Flush this node's units of striped file `ino` to its disk.
    StripeSync {
        /// The striped file.
        ino: InodeId,
    },
    /// Cut this node's copy of striped file `ino` (held here, owned
    /// elsewhere) at `size` bytes.
    StripeTruncate {
        /// The striped file.
        ino: InodeId,
        /// The file's new size.
        size: u64,
    },
    /// Forget this node's copy of striped file `ino` (its inode is gone).
    StripeDrop {
        /// The striped file, owned elsewhere.
        ino: InodeId,
    },
    /// Make striped file `ino` (owned here) at least `size` bytes long: a
    /// write reached that far on some holder.
    Extend {
        /// The file, owned here.
        ino: InodeId,
        /// Its size at least.
        size: u64,
    },
    /// Caching mount `client` is going away (unmounted: its kernel holds
    /// nothing any more): forget its registration and grants, so that no
    /// change waits for it (answered `Done`).
    Unwatch {
        /// The mount.
        client: u64,
    },
    /// Make entry `name` of `dir` name `new` instead of `old`, atomically,
    /// only if it still names `old` (ENOENT otherwise): how a leaving
    /// node's hand-over points names at the copies of its inodes.
    ReplaceEntry {
        /// The directory (owned by the node asked).
        dir: InodeId,
        /// The entry's name.
        name: Vec<u8>,
        /// What the entry must still name.
        old: InodeId,
        /// What it names afterwards.
        new: InodeId,
        /// The kind of both (a copy is of its original's kind).
        kind: FileKind,
    },
    /// From the leader to a leaving node: move your kDFS data to the other
    /// members (the first ask starts it). Answered `HandedOver`.
    HandOver,
    /// Make everything written to the store durable (`syncfs`): one for a
    /// whole hand-over's copies instead of an fsync per file. `Done`.
    SyncStore,
    /// To the owner of striped file `ino`, from a leaving node's hand-over:
    /// give it layout `new` instead of `old`, only if it still has `old`
    /// (EAGAIN otherwise). The leaving node's units went to another holder
    /// first. `Done`.
    ReplaceLayout {
        /// The striped file (owned by the node asked).
        ino: InodeId,
        /// The layout it must still have.
        old: StripeLayout,
        /// Its layout afterwards: the same unit and owner, one holder
        /// replaced.
        new: StripeLayout,
    },
    /// To a holder of striped file `old`, from its leaving owner's
    /// hand-over (the file moved and is `new` now): its units of `old` are
    /// `new`'s from now on — its copy renamed, or merged into `new`'s
    /// object when it owns `new` — and its I/O on `old` answers ESTALE.
    /// When it owns `old` (an undo of such a merge), only that: `new`'s
    /// copy was kept. `Done`.
    StripeRename {
        /// The file's id before.
        old: InodeId,
        /// Its id after.
        new: InodeId,
    },
    /// From a leaving root node's hand-over, to every store of the file
    /// system: its root directory is `root` on node `root_node` now. The
    /// new root node is given `root` (one of its directories); the others
    /// `None`. Recorded in the superblock (and the root meta-file). `Done`.
    SetRoot {
        /// The node holding the root directory.
        root_node: crate::NodeId,
        /// The root directory, to that node.
        root: Option<InodeId>,
    },
    /// From a leaving node's hand-over, to the node about to take its
    /// units of striped file `ino`: it holds units of it from now on (it
    /// may have handed its own over earlier, when it left, and answered
    /// ESTALE for the file since). `Done`.
    StripeAdopt {
        /// The striped file.
        ino: InodeId,
    },
    /// `req`, which opens a handle ([`KdfsRequest::opens_handle`]), for
    /// mount `client`: the handle is that mount's, closed by the owner
    /// once the mount's lease ran out (`LockLease`: it died) as its
    /// release would have. Inside an `As` when both apply.
    HeldBy {
        /// The mount (its lock client number, which its leases renew).
        client: u64,
        /// The opening request (never another `HeldBy`, nor an `As`).
        req: Box<KdfsRequest>,
    },
    /// From the krgd that serves node `store`'s store to a krgd that keeps
    /// a copy of it: its mirror, or (`HandBack`) the node itself.
    Mirror {
        /// The sender.
        from: crate::NodeId,
        /// Whose store the copy is of.
        store: crate::NodeId,
        /// What it asks.
        req: MirrorRequest,
    },
    /// How this node's store and the copies it keeps stand; answered
    /// with `Replication`.
    Replication,
    /// Keep `copies` copies of this node's store from now on (`kdfsctl
    /// replicas`): its superblock says so, and its mirroring starts with a
    /// full copy. `Done`; `EBUSY`: a mount of the store is up on this node
    /// (it would go on writing the store in place, unseen by its mirror);
    /// `ENOTSUP`: fewer copies than now; `EINVAL`: not 1 to 3.
    SetReplicas {
        /// 1 to 3.
        copies: u8,
    },
    /// From a mount of this node's single-copy store, every second: it
    /// writes the store in place (FUSE passthrough, the sole mount's
    /// attribute changes), which a mirror would never see. Once a
    /// conversion waits (`kdfsctl replicas 2` while mounted) the mount
    /// stops doing so (`switched`) and says how many of its handles still
    /// write in place (`writers`); krgd converts once every mount of the
    /// node says 0. Answers `Conversion`.
    Conversion {
        /// The mount's process (as `/proc/locks` shows it holding the store).
        pid: u32,
        /// It no longer starts writing in place.
        switched: bool,
        /// Its handles that still write in place.
        writers: u32,
    },
    /// From the sole mount of this node's single-copy store (in `As`):
    /// lend it directory `dir`, where it then makes (and unlinks) regular
    /// files itself (`Lent`; `EBUSY`: not now). Recalled
    /// ([`Inval::Recall`](cache::Inval)) before anyone else's request
    /// touching `dir` or a file made under the loan is served.
    Lend {
        /// The directory, of this node.
        dir: InodeId,
    },
    /// A request about node `node`'s files, asked of its mirror while
    /// `node` does not answer: served by the mirror when it took the store
    /// over (`node` failed), else answered from its copy when it is a read
    /// and the copy is complete (EROFS for a change, ENOTCONN without a
    /// complete copy). Handles opened this way have [`MIRROR_HANDLE`] set.
    FromMirror {
        /// The node whose files are read.
        node: crate::NodeId,
        /// The read, as it would have gone to `node`.
        req: Box<KdfsRequest>,
    },
}

/// Set in the handles a mirror opens (`FromMirror`): the client sends what
/// uses them to the mirror again, never to the owner.
pub const MIRROR_HANDLE: u64 = 1 << 62;

impl KdfsRequest {
    /// Whether the answer carries a new handle (that something must
    /// release).
    pub fn opens_handle(&self) -> bool {
        matches!(
            self,
            KdfsRequest::Open { .. }
                | KdfsRequest::OpenDir { .. }
                | KdfsRequest::MakeInode { open: Some(_), .. }
                | KdfsRequest::Create { open: Some(_), .. }
        )
    }
}
