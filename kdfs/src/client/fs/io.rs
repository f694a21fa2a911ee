//! The data path of the kernel's requests: open and create (with or
//! without a passthrough backing file), read, write and fsync — of this
//! node's files in place, of other nodes' files through their krgd, and of
//! striped files through all their holders (`client/striped/`).

use std::sync::Arc;

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, ReplyCreate, ReplyData, ReplyEmpty, ReplyOpen,
    ReplyWrite,
};
use krg_proto::kdfs::{inode_node, InodeId, KdfsRequest as Q, NewInode, StripeLayout};

use super::super::convert::{err, file_attr};
use super::super::lent::{MadeHere, NewFile};
use super::super::local;
use super::super::ops::{Made, Ops};
use super::KdfsFs;

impl KdfsFs {
    pub(super) fn do_open(&self, id: InodeId, write: bool, reply: ReplyOpen) {
        let ops = self.ops.clone();
        self.spawn(async move {
            // No FOPEN_KEEP_CACHE: the kernel drops this file's cached pages
            // at every open, which is what makes close-to-open hold.
            match ops.open(id, write).await {
                Ok((fh, Some(layout))) => {
                    ops.striped.opened(id, fh, layout);
                    reply.opened(FileHandle(fh), FopenFlags::empty());
                }
                Ok((fh, None)) => {
                    let local = ops.local_store.opened(id, fh, |f| reply.open_backing(f));
                    match local.as_ref().and_then(|l| l.backing.as_ref()) {
                        Some(b) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), b),
                        None => reply.opened(FileHandle(fh), FopenFlags::empty()),
                    }
                }
                Err(e) => reply.error(err(e)),
            }
        });
    }

    pub(super) fn do_create(
        &self,
        dir: InodeId,
        name: Vec<u8>,
        new: NewInode,
        umask: u32,
        write: bool,
        reply: ReplyCreate,
    ) {
        let ops = self.ops.clone();
        // In a directory lent to this mount: made here, on this thread.
        let here = NewFile {
            dir,
            name: &name,
            new: &new,
            umask,
            write,
        };
        if let Some(made) = ops.create_here(&here) {
            return Self::reply_made_here(&ops, dir, made, reply);
        }
        self.spawn(async move {
            let borrowing = NewFile {
                dir,
                name: &name,
                new: &new,
                umask,
                write,
            };
            if let Some(made) = ops.create_borrowing(&borrowing).await {
                return Self::reply_made_here(&ops, dir, made, reply);
            }
            let made = ops.make_open(dir, &name, new, umask, Some(write)).await;
            let (a, fh, striped) = match made {
                Ok(Made {
                    attr,
                    fh: Some(fh),
                    layout,
                }) => {
                    let striped = layout.is_some();
                    if let Some(l) = layout {
                        ops.striped.opened(attr.ino, fh, l);
                    }
                    (attr, fh, striped)
                }
                Ok(_) => return reply.error(Errno::EIO),
                Err(e) => return reply.error(err(e)),
            };
            // created() takes one TTL for both the entry and the
            // attributes: the shorter one.
            let t = ops.cache.attr_ttl(&a).min(ops.cache.entry_ttl(dir, &a));
            let attr = file_attr(ops.root.get(), &a);
            let (gen, flags) = (Generation(0), FopenFlags::empty());
            if striped {
                return reply.created(&t, &attr, gen, FileHandle(fh), flags);
            }
            let local = ops.local_store.opened(a.ino, fh, |f| reply.open_backing(f));
            match local.as_ref().and_then(|l| l.backing.as_ref()) {
                Some(b) => reply.created_passthrough(&t, &attr, gen, FileHandle(fh), flags, b),
                None => reply.created(&t, &attr, gen, FileHandle(fh), flags),
            }
        });
    }

    /// The answer to a create made in a lent directory (`ops::lent`).
    fn reply_made_here(ops: &Ops, dir: InodeId, made: Result<MadeHere, i32>, reply: ReplyCreate) {
        let (a, fh) = match made {
            Ok(m) => m,
            Err(e) => return reply.error(err(e)),
        };
        let t = ops.cache.attr_ttl(&a).min(ops.cache.entry_ttl(dir, &a));
        let attr = file_attr(ops.root.get(), &a);
        let (gen, flags) = (Generation(0), FopenFlags::empty());
        let local = ops.local_store.opened(a.ino, fh, |f| reply.open_backing(f));
        match local.as_ref().and_then(|l| l.backing.as_ref()) {
            Some(b) => reply.created_passthrough(&t, &attr, gen, FileHandle(fh), flags, b),
            None => reply.created(&t, &attr, gen, FileHandle(fh), flags),
        }
    }

    pub(super) fn do_read(&self, id: InodeId, fh: u64, offset: u64, size: u32, reply: ReplyData) {
        let ops = self.ops.clone();
        // A local file without passthrough: one pread, answered on the FUSE
        // thread (a hop to the runtime would cost more than the read).
        if let Some(l) = ops.local_store.file(id, fh) {
            match local::read_at(&l.file, offset, size) {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(err(e.errno())),
            }
            return;
        }
        self.spawn(async move {
            let r = match ops.striped.layout(id, fh) {
                Some(l) => {
                    let read = |l: Arc<StripeLayout>| {
                        let ops = ops.clone();
                        async move { ops.striped.ahead.read(&ops, id, fh, &l, offset, size).await }
                    };
                    ops.with_layout(id, fh, l, read).await
                }
                None => ops.read(id, fh, offset, size).await,
            };
            match r {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    pub(super) fn do_write(
        &self,
        id: InodeId,
        fh: u64,
        offset: u64,
        data: &[u8],
        reply: ReplyWrite,
    ) {
        if let Some(l) = self.ops.local_store.file_to_change(id, fh) {
            match local::write_at(&l.file, offset, data) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(err(e.errno())),
            }
            return;
        }
        let (ops, data) = (self.ops.clone(), ::bytes::Bytes::copy_from_slice(data));
        self.spawn(async move {
            let r = match ops.striped.layout(id, fh) {
                Some(l) => {
                    let data = &data;
                    let write = |l: Arc<StripeLayout>| {
                        let ops = ops.clone();
                        async move { ops.striped_write(id, &l, offset, data).await }
                    };
                    ops.with_layout(id, fh, l, write).await
                }
                None => ops.write(id, fh, offset, data).await,
            };
            match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    pub(super) fn do_fsync(&self, id: InodeId, fh: u64, datasync: bool, reply: ReplyEmpty) {
        let ops = self.ops.clone();
        if let Some(l) = ops.local_store.file_to_change(id, fh) {
            // An fsync may take seconds: not on a FUSE thread, which would
            // stall every other request meanwhile.
            self.rt
                .spawn_blocking(move || match local::sync_file(&l.file, datasync) {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(err(e.errno())),
                });
            return;
        }
        self.reply_empty(reply, async move {
            if let Some(l) = ops.striped.layout(id, fh) {
                let sync = |l: Arc<StripeLayout>| {
                    let ops = ops.clone();
                    async move { ops.striped_fsync(id, &l).await }
                };
                return ops.with_layout(id, fh, l, sync).await;
            }
            let q = Q::Fsync {
                ino: id,
                fh,
                datasync,
            };
            ops.simple(inode_node(id), q).await
        });
    }
}
