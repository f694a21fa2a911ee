//! This node's own part of the namespace, served inside the client.
//!
//! kDFS keeps a file's data on the node that created it, so most files a
//! client reads and writes, and most directories it lists, live in the store
//! of the krgd next to it — in the very directory mount.kdfs was given. For
//! those, asking krgd costs a loopback round trip, a copy into a message and
//! a CRC per request for nothing. So the client
//!
//! * answers the read-only requests on its own inodes (lookup, getattr,
//!   readlink, directory listings: [`Store::is_read_only`]) from a read-only
//!   [`Store::view`] of the directory — the same code krgd would run;
//! * opens its own regular files itself once krgd has opened them and hands
//!   them to the kernel as FUSE *passthrough* backing files: reads, writes
//!   and mmap then go from the kernel straight to the local file, with one
//!   page cache, as fast as the local file system. Where the kernel does not
//!   offer passthrough, the client serves `read` and `write` itself with
//!   `pread`/`pwrite` on that file.
//!
//! * changes the attributes of its own regular files itself (`chmod`,
//!   `chown`, `utimes`, `truncate`: what `tar -x` does to every file it
//!   makes), when it is the node's *sole mount*. krgd would tell the mounts
//!   that may hold those attributes; only this node's mounts ever hold a
//!   regular file's, so the first mount of a node claims the store
//!   ([`Store::claim_sole_mount`]) and any further mount of that node keeps
//!   no regular file's attributes in its kernel (it reads them in place,
//!   fresh, at each use).
//!
//! A mirrored store (`--replicas 2`) keeps the in-place reads only: every
//! write, fsync and attribute change goes through krgd, which sends it to
//! the store's mirror before answering (no passthrough, no sole mount).
//! A single-copy store converted while mounted (`kdfsctl replicas 2`)
//! turns so in place ([`LocalStore::stop_writing_in_place`], see
//! `conversion`): no file is opened with passthrough from then on, but
//! the files opened so before keep it until their last handle is closed
//! (the kernel lets all of an inode's handles use passthrough or none),
//! and krgd converts the store only once none is left
//! ([`LocalStore::handles_in_place`]).
//!
//! krgd still does every change to the namespace and sees every open and
//! release of a file (it counts handles, so an unlinked file keeps its data
//! while open) — but for the files the sole mount makes and removes in a
//! directory krgd lent it (`super::loans`), with [`LocalStore::create_lent`]
//! and [`LocalStore::unlink_lent`]. Both act on the same local files, so the page cache keeps
//! them coherent, and what docs/kdfs.md guarantees is unchanged.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use fuser::BackingId;
use krg_proto::kdfs::{inode_node, Attr, InodeId, KdfsRequest, KdfsResponse, SetAttr};
use krg_proto::NodeId;

use crate::store::Store;
pub use crate::store::{read_at, sync_file, write_at};
use crate::KdfsError;

/// A local file open in the client, shared by every handle on its inode:
/// the kernel wants one backing id per inode.
pub struct LocalFile {
    pub file: File,
    /// Its FUSE passthrough registration, when the kernel took it.
    pub backing: Option<BackingId>,
}

#[derive(Default)]
struct Open {
    by_handle: HashMap<(InodeId, u64), Arc<LocalFile>>,
    by_inode: HashMap<InodeId, Weak<LocalFile>>,
}

pub struct LocalStore {
    node: NodeId,
    view: Store,
    /// This mount holds the node's sole-mount claim (and uses it: not
    /// once the store is mirrored).
    sole: AtomicBool,
    /// The store is mirrored (`--replicas 2`), or about to be: krgd makes
    /// every change (and sends it to the mirror); the client still reads
    /// in place.
    mirrored: AtomicBool,
    /// Set by the connections' failure watch: this node's krgd does not
    /// answer, its mirror may serve newer data — nothing is read here.
    down: Arc<AtomicBool>,
    /// Set at FUSE init when the kernel accepted passthrough.
    passthrough: AtomicBool,
    /// Handles are keyed by (inode, krgd handle): the handle alone is not
    /// unique, a restarted krgd numbers its handles anew.
    open: Mutex<Open>,
}

impl LocalStore {
    /// `dir` is the node's formatted kDFS directory, served by its krgd as `node`.
    pub fn open(dir: &Path, node: NodeId, down: Arc<AtomicBool>) -> Result<Self, KdfsError> {
        let view = Store::view(dir, node)?;
        // A mirrored store's changes must all go through krgd, which sends
        // them to the mirror: no file I/O here, no sole mount.
        let mirrored = view.replicas() > 1;
        Ok(Self {
            node,
            mirrored: AtomicBool::new(mirrored),
            down,
            sole: AtomicBool::new(!mirrored && view.claim_sole_mount()),
            view,
            passthrough: AtomicBool::new(false),
            open: Mutex::default(),
        })
    }

    /// Answer `req` here if it is addressed to this node and only reads;
    /// otherwise give it back.
    pub fn answer(
        &self,
        node: NodeId,
        req: KdfsRequest,
    ) -> Result<Result<KdfsResponse, i32>, KdfsRequest> {
        if node != self.node || !Store::is_read_only(&req) || self.is_down() {
            return Err(req);
        }
        if let KdfsRequest::StripeRead { ino, offset, len } = req {
            // No copy here: never written, or handed to another node
            // (this node leaving), which only krgd knows (it answers
            // ESTALE then, and the read takes the owner's new layout).
            return match self.view.stripe_read_held(ino, offset, len) {
                Ok(Some(d)) => Ok(Ok(KdfsResponse::Data(d.into()))),
                Ok(None) => Err(KdfsRequest::StripeRead { ino, offset, len }),
                Err(e) => Ok(Err(e.errno())),
            };
        }
        Ok(match self.view.handle(req) {
            KdfsResponse::Errno(e) => Err(e),
            r => Ok(r),
        })
    }

    fn is_down(&self) -> bool {
        self.is_mirrored() && self.down.load(Ordering::Acquire)
    }

    /// Whether the store is mirrored (or being converted to be): every
    /// change goes through krgd.
    pub fn is_mirrored(&self) -> bool {
        self.mirrored.load(Ordering::Acquire)
    }

    /// Whether this is the first (and only) mount of its node: see the
    /// module header.
    pub fn is_sole_mount(&self) -> bool {
        self.sole.load(Ordering::Acquire)
    }

    /// The store is being converted to more copies: from now on every
    /// change goes through krgd (no new in-place write, no attribute
    /// change here).
    pub fn stop_writing_in_place(&self) {
        self.mirrored.store(true, Ordering::Release);
        self.sole.store(false, Ordering::Release);
    }

    /// The handles whose file the kernel reads and writes itself
    /// (passthrough), unseen by krgd — and through which a handle opened
    /// later on the same file would too.
    pub fn handles_in_place(&self) -> u32 {
        let t = self.table();
        let n = t.by_handle.values().filter(|l| l.backing.is_some()).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Change the attributes of `ino` here if this is the sole mount and
    /// `ino` is one of this node's regular files; `None`: ask krgd.
    pub fn setattr(&self, ino: InodeId, set: &SetAttr) -> Option<Result<Attr, i32>> {
        if !self.is_sole_mount() {
            return None;
        }
        // The store answers `None` for another node's inode too.
        let done = self.view.setattr_regular_file(ino, set)?;
        Some(done.map_err(|e| e.errno()))
    }

    /// Make regular file `ino` named `name` in `dir`, lent to this mount
    /// (see `super::loans`), as krgd would.
    pub fn create_lent(
        &self,
        dir: InodeId,
        name: &[u8],
        new: &krg_proto::kdfs::NewInode,
        ino: InodeId,
    ) -> Result<Attr, i32> {
        self.view
            .create_lent(dir, name, new, ino)
            .map_err(|e| e.errno())
    }

    /// Remove `name` in lent `dir`, regular file `ino` made under the loan,
    /// as krgd would; `false`: it has other names (krgd's to do).
    pub fn unlink_lent(&self, dir: InodeId, name: &[u8], ino: InodeId) -> Result<bool, i32> {
        self.view.unlink_lent(dir, name, ino).map_err(|e| e.errno())
    }

    /// Whether this mount holds `ino` open (through any handle).
    pub fn is_open(&self, ino: InodeId) -> bool {
        self.table()
            .by_inode
            .get(&ino)
            .is_some_and(|w| w.strong_count() > 0)
    }

    /// The kernel accepted FUSE passthrough for this mount.
    pub fn enable_passthrough(&self) {
        self.passthrough.store(true, Ordering::Relaxed);
    }

    fn table(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After krgd opened `ino` as handle `fh`: if the inode is local, open it
    /// here too (or share the inode's open file) and, with passthrough, have
    /// `register` hand it to the kernel. `None`: the handle keeps using krgd
    /// (a remote inode, or no longer a regular file).
    pub fn opened(
        &self,
        ino: InodeId,
        fh: u64,
        register: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Option<Arc<LocalFile>> {
        if inode_node(ino) != self.node {
            return None;
        }
        let mut t = self.table();
        let shared = t.by_inode.get(&ino).and_then(Weak::upgrade);
        let local = match shared {
            Some(l) => l,
            None => {
                let l = Arc::new(self.open_local(ino, register)?);
                t.by_inode.insert(ino, Arc::downgrade(&l));
                l
            }
        };
        t.by_handle.insert((ino, fh), local.clone());
        Some(local)
    }

    fn open_local(
        &self,
        ino: InodeId,
        register: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Option<LocalFile> {
        // Read-write whatever this handle wants: the file serves every later
        // handle of the inode too (the kernel checks each handle's mode).
        let file = match self.view.open_local_file(ino) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(ino = %format!("{ino:x}"), error = %e, "kdfs: no direct I/O");
                return None;
            }
        };
        // A mirrored store's writes go through krgd: the kernel must not
        // write the file itself.
        let backing = if self.passthrough.load(Ordering::Relaxed) && !self.is_mirrored() {
            register(&file)
                .inspect_err(|e| {
                    tracing::warn!(ino = %format!("{ino:x}"), error = %e,
                        "kdfs: passthrough refused; the client serves this file's I/O")
                })
                .ok()
        } else {
            None
        };
        Some(LocalFile { file, backing })
    }

    /// The local file behind handle `fh` of `ino`, if it is one.
    pub fn file(&self, ino: InodeId, fh: u64) -> Option<Arc<LocalFile>> {
        if inode_node(ino) != self.node || self.is_down() {
            return None;
        }
        self.table().by_handle.get(&(ino, fh)).cloned()
    }

    /// The local file behind handle `fh` of `ino` for a write or an fsync:
    /// none for a mirrored store, whose changes krgd makes (and mirrors).
    pub fn file_to_change(&self, ino: InodeId, fh: u64) -> Option<Arc<LocalFile>> {
        if self.is_mirrored() {
            return None;
        }
        self.file(ino, fh)
    }

    /// Forget the handle (before krgd is told it is released, which may
    /// delete an unlinked object). The last handle of an inode closes the
    /// file and its passthrough registration.
    pub fn released(&self, ino: InodeId, fh: u64) {
        let mut t = self.table();
        t.by_handle.remove(&(ino, fh));
        if t.by_inode.get(&ino).is_some_and(|w| w.strong_count() == 0) {
            t.by_inode.remove(&ino);
        }
    }
}
