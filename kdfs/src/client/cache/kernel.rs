//! Telling the kernel what to forget: FUSE notifications on the mount's
//! `/dev/fuse` connection.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

use krg_proto::kdfs::InodeId;

use super::super::convert::fuse_ino;

/// `FUSE_NOTIFY_INC_EPOCH` (include/uapi/linux/fuse.h, protocol 7.44,
/// Linux 6.16): every dentry looked up before it must be looked up again.
/// fuser 0.18 does not know it.
const FUSE_NOTIFY_INC_EPOCH: i32 = 8;

pub struct Kernel {
    notifier: fuser::Notifier,
    /// A duplicate of the session's `/dev/fuse` descriptor, to write the
    /// notifications fuser has no call for.
    dev: OwnedFd,
    root: std::sync::Arc<crate::client::root::Root>,
    /// The kernel took an epoch notification (else: one entry at a time).
    epoch: AtomicBool,
}

impl Kernel {
    pub fn new(
        notifier: fuser::Notifier,
        dev: OwnedFd,
        root: std::sync::Arc<crate::client::root::Root>,
    ) -> Self {
        Self {
            notifier,
            dev,
            root,
            epoch: AtomicBool::new(true),
        }
    }

    /// Forget the names in `entries` (directory, name). One epoch bump
    /// forgets them all without taking a lock; a kernel without it gets
    /// one invalidation per entry, which waits for the directory's lock.
    pub fn forget_entries(&self, entries: &[(InodeId, Vec<u8>)]) {
        if entries.is_empty() {
            return;
        }
        if self.epoch.load(Ordering::Relaxed) {
            match self.bump_epoch() {
                Ok(()) => return,
                Err(e) => {
                    tracing::info!(error = %e,
                        "kdfs: no FUSE_NOTIFY_INC_EPOCH here (Linux < 6.16?): names are forgotten one by one");
                    self.epoch.store(false, Ordering::Relaxed);
                }
            }
        }
        for (dir, name) in entries {
            let r = self
                .notifier
                .inval_entry(fuse_ino(self.root.get(), *dir), OsStr::from_bytes(name));
            if let Err(e) = r {
                tracing::debug!(error = %e, "kdfs: entry invalidation refused");
            }
        }
    }

    /// Forget every name (the node that tracked them lost track).
    pub fn forget_all_entries(&self) {
        if let Err(e) = self.bump_epoch() {
            tracing::debug!(error = %e, "kdfs: epoch not bumped");
        }
    }

    /// Forget the attributes of `ino` (not its cached pages: the kernel
    /// drops those at every open anyway, and dropping them waits for page
    /// locks a read in progress holds).
    pub fn forget_attr(&self, ino: InodeId) {
        if let Err(e) = self
            .notifier
            .inval_inode(fuse_ino(self.root.get(), ino), -1, 0)
        {
            tracing::debug!(error = %e, "kdfs: attribute invalidation refused");
        }
    }

    /// Forget the attributes of the kernel's inode 1 (the root moved).
    pub fn forget_attr_of_root(&self) {
        if let Err(e) = self.notifier.inval_inode(fuser::INodeNo(1), -1, 0) {
            tracing::debug!(error = %e, "kdfs: attribute invalidation refused");
        }
    }

    fn bump_epoch(&self) -> io::Result<()> {
        // struct fuse_out_header { u32 len; i32 error (the notify code); u64 unique (0) }
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&16u32.to_ne_bytes());
        hdr[4..8].copy_from_slice(&FUSE_NOTIFY_INC_EPOCH.to_ne_bytes());
        // SAFETY: write(2) of a 16-byte stack buffer to a descriptor this
        // struct owns; the kernel reads the header and nothing else.
        let n = unsafe { libc::write(self.dev.as_raw_fd(), hdr.as_ptr().cast(), hdr.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
