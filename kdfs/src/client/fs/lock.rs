//! The lock requests of the kernel (fcntl locks, and flock locks sent as
//! whole-file locks of their open file): see `client/locks.rs`.

use fuser::{Errno, FileHandle, INodeNo, LockOwner, ReplyEmpty, ReplyLock};
use krg_proto::kdfs::{LockKind, LockSpec};
use std::time::Duration;

use super::super::convert::err;
use super::super::locks::{kind_of, typ_of};
use super::KdfsFs;

impl KdfsFs {
    /// The request as the lock managers name it; `None` for an unknown type.
    pub(super) fn lock_spec(
        &self,
        owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
    ) -> Option<LockSpec> {
        Some(LockSpec {
            client: self.ops.locks.client,
            owner: owner.0,
            start,
            end,
            kind: kind_of(typ)?,
            pid,
        })
    }

    pub(super) fn do_getlk(&self, ino: INodeNo, spec: Option<LockSpec>, reply: ReplyLock) {
        let Some(spec) = spec else {
            return reply.error(Errno::EINVAL);
        };
        let (ops, id) = (self.ops.clone(), self.id(ino));
        self.spawn(async move {
            match ops.locks.get(&ops.cluster, id, spec).await {
                Ok(Some(h)) => reply.locked(h.start, h.end, typ_of(h.kind), h.pid),
                Ok(None) => reply.locked(spec.start, spec.end, typ_of(LockKind::Unlock), 0),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    pub(super) fn do_setlk(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        spec: Option<LockSpec>,
        sleep: bool,
        waiter: u32,
        reply: ReplyEmpty,
    ) {
        let Some(spec) = spec else {
            return reply.error(Errno::EINVAL);
        };
        let (ops, id) = (self.ops.clone(), self.id(ino));
        // A blocking request may wait for minutes: on the runtime, never on
        // the FUSE thread.
        self.reply_empty(reply, async move {
            ops.locks
                .set(&ops.cluster, id, fh.0, spec, sleep, waiter)
                .await?;
            // As NFS does: whoever takes a lock reads what the previous
            // holder wrote on any node, not pages or a size this kernel
            // cached before (sqlite reads its pages after each lock).
            if spec.kind != LockKind::Unlock {
                if let Some(n) = ops.notifier.get() {
                    if let Err(e) = n.inval_inode(ino, 0, 0) {
                        tracing::debug!(error = %e, "kdfs: cache not dropped at lock");
                    }
                }
            }
            Ok(())
        });
    }

    /// Every close: the closing process's fcntl locks on the file go
    /// (POSIX). Writes are sent through as they happen (no client-side
    /// write-back), so there is nothing else to push.
    pub(super) fn do_flush(&self, ino: INodeNo, owner: LockOwner, reply: ReplyEmpty) {
        let (ops, id) = (self.ops.clone(), self.id(ino));
        if !ops.locks.has_locked(id) {
            // No hand-off to the runtime for nothing.
            return reply.ok();
        }
        self.reply_empty(reply, async move {
            ops.locks
                .release(&ops.cluster, id, Some(owner.0), None)
                .await
        });
    }

    /// Unmount: send the releases still queued (2 s at most).
    pub(super) fn flush_releases(&self) {
        let ops = self.ops.clone();
        self.within_two_seconds(async move { ops.releases.flush(&ops.cluster, &ops.cache).await });
    }

    /// Unmount: give back every lock of this mount (2 s at most).
    pub(super) fn release_all_locks(&self) {
        let ops = self.ops.clone();
        self.within_two_seconds(async move { ops.locks.release_all(&ops.cluster).await });
    }

    /// Unmount: tell the nodes this mount cached from that it is gone (2 s
    /// at most).
    pub(super) fn leave_callbacks(&self) {
        let ops = self.ops.clone();
        self.within_two_seconds(async move { ops.cache.leave(&ops.cluster).await });
    }

    /// Run `work` on the runtime from a FUSE thread, giving up after 2 s.
    /// The timer is made inside the runtime: made outside (as an argument
    /// of `block_on`), it panicked with "no reactor running" at unmount.
    fn within_two_seconds<F: std::future::Future>(&self, work: F) {
        self.rt.block_on(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), work).await;
        });
    }
}
