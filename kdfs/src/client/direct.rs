//! Direct I/O on this node's own inodes.
//!
//! kDFS keeps a file's data on the node that created it, so most files a
//! client reads and writes live in the store of the krgd next to it — in the
//! very directory mount.kdfs was given. For those, going through krgd costs a
//! loopback round trip, a copy into a message and a CRC per request for
//! nothing: the client opens the object itself and uses `pread`/`pwrite`.
//!
//! krgd still sees every open and release (it counts handles, so an unlinked
//! file keeps its data while open) and does every metadata operation; only
//! the data path is short-cut. Both work on the same local file, so the page
//! cache keeps them coherent, and consistency is unchanged (see docs/kdfs.md).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use krg_proto::kdfs::{inode_local, inode_node, InodeId};
use krg_proto::NodeId;

use crate::store::object_path;
pub use crate::store::{read_at, sync_file, write_at};

/// Files of the local store opened by this client, by (inode, krgd handle).
/// The handle alone is not unique: a restarted krgd numbers handles anew.
pub struct DirectFiles {
    node: NodeId,
    inodes: PathBuf,
    open: Mutex<HashMap<(InodeId, u64), Arc<File>>>,
}

impl DirectFiles {
    /// `inodes` is the local store's inode directory, which this node's krgd
    /// serves as `node`.
    pub fn new(node: NodeId, inodes: PathBuf) -> Self {
        Self {
            node,
            inodes,
            open: Mutex::default(),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<(InodeId, u64), Arc<File>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After krgd opened `ino` as handle `fh`: open it here too if it is a
    /// local inode. Failing that (not a regular file any more, say), the
    /// handle simply keeps using krgd.
    pub fn opened(&self, ino: InodeId, fh: u64, write: bool) {
        if inode_node(ino) != self.node {
            return;
        }
        let path = object_path(&self.inodes, inode_local(ino));
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        match file {
            Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => {
                self.table().insert((ino, fh), Arc::new(f));
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "kdfs: no direct I/O"),
        }
    }

    /// The local file behind handle `fh` of `ino`, if it is one.
    pub fn get(&self, ino: InodeId, fh: u64) -> Option<Arc<File>> {
        if inode_node(ino) != self.node {
            return None;
        }
        self.table().get(&(ino, fh)).cloned()
    }

    /// Forget the handle (before krgd is told it is released, which may
    /// delete an unlinked object).
    pub fn released(&self, ino: InodeId, fh: u64) {
        self.table().remove(&(ino, fh));
    }
}
