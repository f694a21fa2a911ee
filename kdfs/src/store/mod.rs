//! The storage engine a krgd runs against its formatted local directory.
//!
//! Every local inode is one object in `DIR/inodes/` of the same type, whose
//! mode, owner, times and data the local file system keeps; a directory's
//! entries are symlinks inside its object that encode what they name. The
//! files of this module, each using only those listed before it:
//!
//! * [`error`]: the store's error vocabulary, mapped to errnos in one place;
//! * `crash`: crash points for the fsck tests (armed by krgd's environment);
//! * `sys`: the syscalls std does not offer;
//! * `entry`: how an entry is encoded, and which names are valid;
//! * `locks`: lock stripes (and the lock-poisoning policy);
//! * `handles`: open file and directory handles, open counts per inode;
//! * `alloc`: local inode numbers, reserved on disk a block at a time;
//! * `objects`: the inode objects and their attributes and counts;
//! * `data`: `pread`/`pwrite`/`fsync` of an open file (the client's too);
//! * this file: the [`Store`] — opening and checking a directory;
//! * `lifetime`: links and open handles, which decide when an object goes;
//! * `dir`: directory operations (lookup, create, entries, rename, rmdir,
//!   listings);
//! * `xattr`: extended attributes and POSIX ACLs of kDFS inodes;
//! * `striping`: striped files — policies, layouts, the units held here;
//! * `replicas`: how many nodes keep each inode, a directory's policy;
//! * `lending`: directories lent to the node's sole mount — what krgd
//!   checks and reserves, what the mount's view does under a loan;
//! * `dispatch`: one request in, one response out — the edge to the wire;
//! * `capture`: what a change did, as state for the store's mirror.

mod alloc;
mod capture;
pub mod crash;
mod data;
mod dir;
mod dispatch;
pub(crate) mod entry;
pub mod error;
mod handles;
mod lending;
mod lifetime;
mod locks;
mod objects;
mod replicas;
pub(crate) mod striping;
pub(crate) mod sys;
mod xattr;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

use krg_proto::kdfs::{inode_node, Attr, FileKind, InodeId, SetAttr};
use krg_proto::NodeId;

use crate::format::{self, StoreDir, Superblock, INODES};
use crate::KdfsError;
use alloc::InoAllocator;
use error::Res;
use handles::Handles;
use locks::Stripes;
use objects::Objects;

pub(crate) use capture::list_objects;
pub use data::{read_at, sync_file, write_at};
pub use error::StoreError;
pub use handles::Holder;
pub(crate) use objects::{object_name, LAYOUT_XATTR, NLINK_XATTR, NSUB_XATTR};
pub use replicas::own_count;
pub(crate) use replicas::{count_in, OWN_XATTR};

/// An attached kDFS directory.
pub struct Store {
    top: StoreDir,
    sb: Superblock,
    /// Copies of its files: the superblock's, changed in place by
    /// `kdfsctl replicas` ([`Store::set_replicas`]).
    replicas: std::sync::atomic::AtomicU8,
    /// The most copies an inode here keeps by its own count (`replicas`).
    most_replicas: std::sync::atomic::AtomicU8,
    /// Some inode here has a count of its own.
    own_counts: std::sync::atomic::AtomicBool,
    /// The root node, and on it the root directory: they change when the
    /// root node hands its store over (`set_root`).
    root: std::sync::Mutex<(NodeId, Option<InodeId>)>,
    objects: Objects,
    alloc: InoAllocator,
    handles: Handles,
    stripes: Stripes,
    /// `DIR/stripes`: other nodes' striped files' units (a view made
    /// before the store was first attached has none).
    stripes_dir: Option<OwnedFd>,
    /// Striped files whose units here were handed to another holder (this
    /// node leaving): their I/O here answers ESTALE, so that a client
    /// holding the old layout asks the owner for the new one.
    moved_stripes: std::sync::Mutex<std::collections::HashSet<InodeId>>,
}

impl Store {
    /// Open `dir` for node `node`. `fs_id` is the file system's id as the root
    /// node reports it; a non-root store formatted before it knew the id is
    /// bound to it here.
    pub fn open(dir: &Path, node: NodeId, fs_id: Option<u128>) -> Result<Store, KdfsError> {
        let mut store = Self::load(dir, node)?;
        match (store.sb.fs_id, fs_id) {
            (0, None) => {
                return Err(KdfsError::Invalid(format!(
                    "{} has not joined its file system yet: root node {} does not serve it now (it joins at its first mount)",
                    dir.display(),
                    store.sb.root_node
                )))
            }
            (0, Some(id)) => {
                store.sb.fs_id = id;
                store.top.write_superblock(&store.sb)?;
            }
            (have, Some(want)) if have != want => {
                return Err(KdfsError::Invalid(format!(
                    "{} belongs to file system {have:032x}, not to {want:032x} served by the root node",
                    dir.display()
                )))
            }
            _ => {}
        }
        store.alloc = InoAllocator::new(node, store.top.read_ino_next()?);
        store.stripes_dir = store.top.open_stripes(true)?;
        store.objects.sweep_orphans();
        store.find_counts();
        Ok(store)
    }

    /// A view of `dir` for the FUSE client of the node whose krgd serves
    /// it: the client answers [`Store::is_read_only`] requests on its own
    /// inodes in-process instead of asking krgd. Unlike [`Store::open`] it
    /// reserves no inode numbers and sweeps nothing; it must only be given
    /// read-only requests — and, in the node's sole mount,
    /// [`Store::setattr_regular_file`].
    pub fn view(dir: &Path, node: NodeId) -> Result<Store, KdfsError> {
        let view = Self::load(dir, node)?;
        // krgd may give an inode a count at any time: always read it.
        view.own_counts
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(view)
    }

    /// Open `dir` and `dir/inodes`, refusing them unless they are root's
    /// and private; read and check the superblock and, on the root node,
    /// the root meta-file. No allocation block is reserved yet.
    fn load(dir: &Path, node: NodeId) -> Result<Store, KdfsError> {
        let top = StoreDir::open(dir)?;
        top.check_private()?;
        // In use while this Store lives: fsck.kdfs refuses it meanwhile.
        top.lock_in_use()?;
        let sb = top.read_superblock()?;
        if sb.node != node {
            return Err(KdfsError::Invalid(format!(
                "{} was formatted for node {}, this is node {node}",
                dir.display(),
                sb.node
            )));
        }
        let objects = Objects::new(node, top.open_inodes()?, dir.join(INODES));
        let root = if sb.root_node == node {
            Some(Self::check_root_meta(&top, &objects, &sb)?)
        } else {
            None
        };
        let stripes_dir = top.open_stripes(false)?;
        Ok(Store {
            top,
            root: std::sync::Mutex::new((sb.root_node, root)),
            replicas: std::sync::atomic::AtomicU8::new(sb.replicas),
            most_replicas: std::sync::atomic::AtomicU8::new(0),
            own_counts: std::sync::atomic::AtomicBool::new(false),
            sb,
            objects,
            alloc: InoAllocator::new(node, 0),
            handles: Handles::new(),
            stripes: Stripes::new(),
            stripes_dir,
            moved_stripes: Default::default(),
        })
    }

    /// The root directory the root meta-file names, checked to exist here.
    fn check_root_meta(
        top: &StoreDir,
        objects: &Objects,
        sb: &Superblock,
    ) -> Result<InodeId, KdfsError> {
        let meta = top.read_root_meta()?;
        let bad = |why: &str| KdfsError::corrupt(top.path().join(format::ROOT_META), why);
        if meta.fs_id != sb.fs_id {
            return Err(bad("file system id differs from the superblock's"));
        }
        let is_dir = matches!(objects.kind(meta.root), Ok(FileKind::Dir));
        if inode_node(meta.root) != sb.node || !is_dir {
            return Err(bad("names a root directory that does not exist"));
        }
        Ok(meta.root)
    }

    pub fn dir(&self) -> &Path {
        self.top.path()
    }

    /// The superblock as it is now (its root node may have changed since
    /// the store was opened).
    pub fn superblock(&self) -> Superblock {
        Superblock {
            root_node: self.root_now().0,
            replicas: self.replicas(),
            ..self.sb.clone()
        }
    }

    fn root_now(&self) -> (NodeId, Option<InodeId>) {
        *self.root.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The root directory, on the root node.
    fn root(&self) -> Option<InodeId> {
        self.root_now().1
    }

    /// The file system's root directory is `root` on node `root_node` now
    /// (the old root node handed its store over): recorded in the
    /// superblock; the new root node, given `root` (its own directory),
    /// writes it in its root meta-file first, and the old one removes its
    /// meta-file after.
    fn set_root(&self, root_node: NodeId, root: Option<InodeId>) -> Res<()> {
        let mut cur = self.root.lock().unwrap_or_else(|p| p.into_inner());
        let here = root_node == self.node();
        match root {
            Some(r) if here => {
                if inode_node(r) != self.node() || !self.objects.is_dir(r)? {
                    return Err(StoreError::Invalid("a root directory of this node's"));
                }
                let meta = format::RootMeta {
                    fs_id: self.sb.fs_id,
                    root: r,
                };
                self.top.write_root_meta(&meta)?;
            }
            None if !here => {}
            _ => {
                return Err(StoreError::Invalid(
                    "the root directory goes to the root node only",
                ))
            }
        }
        let sb = Superblock {
            root_node,
            replicas: self.replicas(),
            ..self.sb.clone()
        };
        self.top.write_superblock(&sb)?;
        if !here {
            self.top.remove_root_meta()?;
        }
        *cur = (root_node, root);
        Ok(())
    }

    /// Refuse a store that became reachable by other users since it was
    /// opened (checked again at each attach of an already served store).
    pub fn check_private(&self) -> Result<(), KdfsError> {
        self.top.check_private()?;
        self.top.open_inodes().map(|_| ())
    }

    /// Open regular file `ino` of this node read-write, as the store does
    /// (no symlink followed): for the FUSE client's own I/O on it.
    pub fn open_local_file(&self, ino: InodeId) -> Result<File, StoreError> {
        self.objects.open_file(ino, true)
    }

    /// Claim this store's one *sole mount*: an exclusive `flock` on
    /// `DIR/inodes` (krgd never locks it), held while this view lives and
    /// dropped by the kernel when the mount dies. `false`: another mount of
    /// this node holds it. The sole mount changes its regular files'
    /// attributes in place ([`Store::setattr_regular_file`]); see
    /// `client::local` for why only one mount may.
    pub fn claim_sole_mount(&self) -> bool {
        self.objects.try_lock_exclusive()
    }

    /// Change the attributes of `ino` in place when it is a regular file of
    /// this node, as krgd would (same code, same order); `None` for
    /// anything else. For the client of the node's sole mount only: nothing
    /// is sent to the mounts that may cache what changed. No other node's
    /// mount keeps a regular file's attributes, so only this node's other
    /// mounts could, and those do not cache them while a sole mount exists.
    pub fn setattr_regular_file(&self, ino: InodeId, set: &SetAttr) -> Option<Res<Attr>> {
        let here = inode_node(ino) == self.node();
        if !here || self.objects.kind(ino).ok()? != FileKind::File {
            return None;
        }
        // A striped file's size is krgd's to change: it cuts the other
        // holders' copies first.
        if set.size.is_some() && !matches!(self.objects.layout(ino), Ok(None)) {
            return None;
        }
        Some(self.objects.setattr(ino, set))
    }

    fn node(&self) -> NodeId {
        self.sb.node
    }

    fn getattr(&self, ino: InodeId) -> Res<Attr> {
        self.objects.attr(ino)
    }
}

#[cfg(test)]
mod tests;
