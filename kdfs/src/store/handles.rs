//! Open handles: what krgd keeps between an open and its release.
//!
//! A file handle holds the open local file; a directory handle holds a
//! snapshot of the entries taken at opendir. The table also counts the open
//! file handles of each local inode, because an inode whose last link goes
//! away keeps its object (and its data) until its last handle is released.
//! A handle records the mount that holds it when krgd knows it (its node,
//! and its client number when the mount said): if that mount dies, or its
//! node fails or leaves, nothing will release its handles, and krgd closes
//! them (see `Store::release_held_by`).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use krg_proto::kdfs::DirEntry;
use krg_proto::NodeId;

use super::error::{Res, StoreError};
use super::locks::lock;

/// The mount that holds a handle: its node, and its client number (0:
/// a mount that did not say, known by its node only).
pub type Holder = (NodeId, u64);

pub(super) enum Handle {
    File { local: u64, file: Arc<File> },
    Dir { entries: Arc<Vec<DirEntry>> },
}

pub(super) struct Handles {
    table: Mutex<HashMap<u64, Handle>>,
    /// Open file handles per local inode number.
    open_count: Mutex<HashMap<u64, usize>>,
    /// The mount that holds each handle, when known.
    holders: Mutex<HashMap<u64, Holder>>,
    next_fh: AtomicU64,
}

impl Handles {
    pub fn new() -> Self {
        Self {
            table: Mutex::new(HashMap::new()),
            open_count: Mutex::new(HashMap::new()),
            holders: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    fn insert(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.table).insert(fh, h);
        fh
    }

    /// A new handle on open `file`, the object of local inode `local`.
    pub fn add_file(&self, local: u64, file: File) -> u64 {
        *lock(&self.open_count).entry(local).or_insert(0) += 1;
        self.insert(Handle::File {
            local,
            file: Arc::new(file),
        })
    }

    /// A new handle on a directory listing.
    pub fn add_dir(&self, entries: Vec<DirEntry>) -> u64 {
        self.insert(Handle::Dir {
            entries: Arc::new(entries),
        })
    }

    pub fn file(&self, fh: u64) -> Res<Arc<File>> {
        match lock(&self.table).get(&fh) {
            Some(Handle::File { file, .. }) => Ok(file.clone()),
            _ => Err(StoreError::BadHandle),
        }
    }

    pub fn dir(&self, fh: u64) -> Res<Arc<Vec<DirEntry>>> {
        match lock(&self.table).get(&fh) {
            Some(Handle::Dir { entries }) => Ok(entries.clone()),
            _ => Err(StoreError::BadHandle),
        }
    }

    /// Forget handle `fh` (its open count is dropped by [`Handles::closed`]).
    pub fn remove(&self, fh: u64) -> Option<Handle> {
        lock(&self.holders).remove(&fh);
        lock(&self.table).remove(&fh)
    }

    /// Record that mount `holder` holds handle `fh` (if still open).
    pub fn held_by(&self, fh: u64, holder: Holder) {
        if lock(&self.table).contains_key(&fh) {
            lock(&self.holders).insert(fh, holder);
        }
    }

    /// The mounts that hold handles here.
    pub fn holders(&self) -> BTreeSet<Holder> {
        lock(&self.holders).values().copied().collect()
    }

    /// The handles mount `holder` holds.
    pub fn held_by_mount(&self, holder: Holder) -> Vec<u64> {
        let h = lock(&self.holders);
        h.iter()
            .filter(|(_, m)| **m == holder)
            .map(|(fh, _)| *fh)
            .collect()
    }

    /// Count one file handle of `local` less; true if it was the last.
    pub fn closed(&self, local: u64) -> bool {
        let mut oc = lock(&self.open_count);
        let n = oc.entry(local).or_insert(1);
        *n = n.saturating_sub(1);
        if *n == 0 {
            oc.remove(&local);
            true
        } else {
            false
        }
    }

    /// Close every file handle of local inode `local`: the data they
    /// reach is no longer the file's (a leaving node's hand-over moved it),
    /// so their reads and writes fail from now on (EBADF) rather than
    /// land where nobody will read them.
    pub fn revoke(&self, local: u64) {
        let mut table = lock(&self.table);
        table.retain(|_, h| !matches!(h, Handle::File { local: l, .. } if *l == local));
        lock(&self.holders).retain(|fh, _| table.contains_key(fh));
        drop(table);
        lock(&self.open_count).remove(&local);
    }

    /// Is a file handle open on local inode `local`?
    pub fn is_open(&self, local: u64) -> bool {
        lock(&self.open_count).get(&local).copied().unwrap_or(0) > 0
    }
}
