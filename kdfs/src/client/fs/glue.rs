//! The inherent side of [`KdfsFs`]: construction, inode numbers, and
//! running a request on the runtime that answers the kernel itself.

use std::sync::Arc;
use std::time::Duration;

use fuser::{Generation, INodeNo, ReplyEmpty, ReplyEntry, Request};
use krg_proto::kdfs::{Attr, FileKind, InodeId, NewInode};

use super::super::convert::{err, file_attr};
use super::super::ops::Ops;
use super::{xattr, KdfsFs};

/// An entry of directory `dir`, with the TTLs the mount's cache allows.
fn entry(ops: &Ops, reply: ReplyEntry, dir: InodeId, r: Result<Attr, i32>) {
    match r {
        Ok(a) => reply.entry_with_ttls(
            &ops.cache.attr_ttl(&a),
            &ops.cache.entry_ttl(dir, &a),
            &file_attr(ops.root.get(), &a),
            Generation(0),
        ),
        Err(e) => reply.error(err(e)),
    }
}

impl KdfsFs {
    pub fn new(
        ops: Arc<Ops>,
        rt: tokio::runtime::Handle,
        attr_ttl: Duration,
        passthrough: bool,
        xattr: bool,
    ) -> Self {
        Self {
            ops,
            rt,
            caps: Arc::new(xattr::NoCaps::new(attr_ttl)),
            xattr,
            passthrough,
        }
    }

    /// Kernel inode number of a kDFS inode (the root must be 1).
    pub(super) fn id(&self, ino: INodeNo) -> InodeId {
        if ino.0 == 1 {
            self.ops.root.get()
        } else {
            ino.0
        }
    }

    /// Run `f` on the runtime; it answers the kernel itself.
    pub(super) fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(super::super::cache::in_request(f));
    }

    /// Answer an entry of directory `dir` once `fut` has it.
    pub(super) fn reply_entry(
        &self,
        reply: ReplyEntry,
        dir: InodeId,
        fut: impl std::future::Future<Output = Result<Attr, i32>> + Send + 'static,
    ) {
        let ops = self.ops.clone();
        self.spawn(async move { entry(&ops, reply, dir, fut.await) });
    }

    /// Answer an entry of directory `dir` now.
    pub(super) fn answer_entry(&self, reply: ReplyEntry, dir: InodeId, r: Result<Attr, i32>) {
        entry(&self.ops, reply, dir, r)
    }

    pub(super) fn reply_empty(
        &self,
        reply: ReplyEmpty,
        fut: impl std::future::Future<Output = Result<(), i32>> + Send + 'static,
    ) {
        self.spawn(async move {
            match fut.await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    /// A new inode of the caller, with the mode asked (the umask, or the
    /// directory's default ACL, is applied by [`Ops::make_open`]).
    pub(super) fn new_inode(req: &Request, kind: FileKind, mode: u32) -> NewInode {
        NewInode {
            kind,
            perm: (mode & 0o7777) as u16,
            uid: req.uid(),
            gid: req.gid(),
            rdev: 0,
            target: None,
        }
    }
}
