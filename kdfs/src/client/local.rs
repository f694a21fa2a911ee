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
//! * opens its own regular files itself once krgd has opened them, and
//!   serves `read`, `write` and `fsync` with `pread`, `pwrite` and `fsync`.
//!
//! krgd still does every change to the namespace and sees every open and
//! release of a file (it counts handles, so an unlinked file keeps its data
//! while open). Both act on the same local files, so the page cache keeps
//! them coherent, and what docs/kdfs.md guarantees is unchanged.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use krg_proto::kdfs::{inode_local, inode_node, InodeId, KdfsRequest, KdfsResponse};
use krg_proto::NodeId;

use crate::store::{object_path, Store};
pub use crate::store::{read_at, sync_file, write_at};
use crate::KdfsError;

pub struct LocalStore {
    node: NodeId,
    view: Store,
    /// Local files opened here, by (inode, krgd handle). The handle alone is
    /// not unique: a restarted krgd numbers its handles anew.
    files: Mutex<HashMap<(InodeId, u64), Arc<File>>>,
}

impl LocalStore {
    /// `dir` is the node's formatted kDFS directory, served by its krgd as `node`.
    pub fn open(dir: &Path, node: NodeId) -> Result<Self, KdfsError> {
        Ok(Self {
            node,
            view: Store::view(dir, node)?,
            files: Mutex::default(),
        })
    }

    /// Answer `req` here if it is addressed to this node and only reads.
    pub fn answer(
        &self,
        node: NodeId,
        req: KdfsRequest,
    ) -> Result<Result<KdfsResponse, i32>, KdfsRequest> {
        if node != self.node || !Store::is_read_only(&req) {
            return Err(req);
        }
        Ok(match self.view.handle(req) {
            KdfsResponse::Errno(e) => Err(e),
            r => Ok(r),
        })
    }

    fn files(&self) -> MutexGuard<'_, HashMap<(InodeId, u64), Arc<File>>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After krgd opened `ino` as handle `fh`: open it here too if it is a
    /// local inode. Failing that (not a regular file any more, say), the
    /// handle simply keeps using krgd.
    pub fn opened(&self, ino: InodeId, fh: u64, write: bool) {
        if inode_node(ino) != self.node {
            return;
        }
        let path = object_path(self.view.inodes(), inode_local(ino));
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        match file {
            Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => {
                self.files().insert((ino, fh), Arc::new(f));
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "kdfs: no direct I/O"),
        }
    }

    /// The local file behind handle `fh` of `ino`, if it is one.
    pub fn file(&self, ino: InodeId, fh: u64) -> Option<Arc<File>> {
        if inode_node(ino) != self.node {
            return None;
        }
        self.files().get(&(ino, fh)).cloned()
    }

    /// Forget the handle (before krgd is told it is released, which may
    /// delete an unlinked object).
    pub fn released(&self, ino: InodeId, fh: u64) {
        self.files().remove(&(ino, fh));
    }
}
