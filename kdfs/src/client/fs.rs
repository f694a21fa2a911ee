//! fuser glue: each kernel request is turned into an async [`Ops`] call run
//! on the tokio runtime, and answered from there, so that one FUSE thread
//! keeps many requests in flight.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use krg_proto::kdfs::{inode_node, Bytes, FileKind, KdfsRequest as Q, SetAttr};

use super::convert::{err, file_attr, set_time};
use super::ops::Ops;

mod dir;
mod glue;
mod io;
mod lock;
mod replicas_xattr;
mod stripe_xattr;
mod xattr;

/// Largest read/write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;
/// Entries fetched per kernel readdir call (a 4 KiB reply holds about 100-200).
const READDIR_BATCH: u32 = 192;

pub struct KdfsFs {
    ops: Arc<Ops>,
    rt: tokio::runtime::Handle,
    /// Other nodes' files known to have no `security.capability`.
    caps: Arc<xattr::NoCaps>,
    /// Extended attributes offered (else ENOSYS, `-o noxattr`).
    xattr: bool,
    /// Ask the kernel for FUSE passthrough at init.
    passthrough: bool,
}

impl Filesystem for KdfsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Both may be refused by an older kernel; the defaults then apply.
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        // Passthrough (Linux >= 6.9, root): the kernel does the reads and
        // writes of this node's own files on the local files themselves.
        // Depth 1: the backing files must not be on a stacked file system.
        // Cluster-wide locks: fcntl locks, and flock(2) sent as whole-file
        // locks of the open file (see client/locks.rs).
        if config
            .add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS)
            .is_err()
        {
            tracing::warn!("kdfs: the kernel refused FUSE locks: locks stay local to this node");
        }
        // ACLs checked by the kernel; new inodes get the mode asked and
        // the umask beside it, for the default ACL (client/inherit.rs).
        let acl = InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK;
        if self.xattr && config.add_capabilities(acl).is_err() {
            tracing::warn!(
                "kdfs: the kernel refused FUSE_POSIX_ACL: ACLs are kept but not enforced"
            );
        }
        if self.passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            tracing::info!(
                "kdfs: FUSE passthrough on: the kernel does the I/O of this node's files"
            );
            self.ops.local_store.enable_passthrough();
            self.ops.cache.enable_passthrough();
        } else if self.passthrough {
            tracing::warn!("kdfs: the kernel offers no FUSE passthrough; the client does the I/O of this node's files");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let dir = self.id(parent);
        // This node's names: answered right here (a hop to the runtime
        // would cost more than the lookup).
        if let Some(r) = self.ops.lookup_here(dir, name.as_bytes()) {
            return self.answer_entry(reply, dir, r);
        }
        let (ops, name) = (self.ops.clone(), name.as_bytes().to_vec());
        self.reply_entry(reply, dir, async move { ops.lookup(dir, &name).await });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (ops, id) = (self.ops.clone(), self.id(ino));
        if let Some(r) = ops.getattr_here(id) {
            return match r {
                Ok(a) => reply.attr(&ops.cache.attr_ttl(&a), &file_attr(ops.root.get(), &a)),
                Err(e) => reply.error(err(e)),
            };
        }
        self.spawn(async move {
            match ops.getattr(id).await {
                Ok(a) => reply.attr(&ops.cache.attr_ttl(&a), &file_attr(ops.root.get(), &a)),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        let (ops, id) = (self.ops.clone(), self.id(ino));
        if let Some(r) = ops.setattr_here(id, &set) {
            return match r {
                Ok(a) => reply.attr(&ops.cache.attr_ttl(&a), &file_attr(ops.root.get(), &a)),
                Err(e) => reply.error(err(e)),
            };
        }
        self.spawn(async move {
            match ops.setattr(id, set).await {
                Ok(a) => reply.attr(&ops.cache.attr_ttl(&a), &file_attr(ops.root.get(), &a)),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let (ops, id) = (self.ops.clone(), self.id(ino));
        self.spawn(async move {
            match ops.readlink(id).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(kind) = FileKind::from_mode(mode) else {
            return reply.error(Errno::EINVAL);
        };
        if kind == FileKind::Dir || kind == FileKind::Symlink {
            return reply.error(Errno::EINVAL);
        }
        let mut new = Self::new_inode(req, kind, mode);
        new.rdev = rdev;
        let (ops, dir, name) = (self.ops.clone(), self.id(parent), name.as_bytes().to_vec());
        self.reply_entry(
            reply,
            dir,
            async move { ops.make(dir, &name, new, umask).await },
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let new = Self::new_inode(req, FileKind::Dir, mode);
        let (ops, dir, name) = (self.ops.clone(), self.id(parent), name.as_bytes().to_vec());
        self.reply_entry(
            reply,
            dir,
            async move { ops.make(dir, &name, new, umask).await },
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (ops, dir, name) = (self.ops.clone(), self.id(parent), name.as_bytes().to_vec());
        // A file made in a directory lent to this mount: removed here.
        if let Some(r) = ops.unlink_here(dir, &name) {
            return match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(err(e)),
            };
        }
        self.reply_empty(reply, async move { ops.unlink(dir, &name).await });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (ops, dir, name) = (self.ops.clone(), self.id(parent), name.as_bytes().to_vec());
        self.reply_empty(reply, async move { ops.rmdir(dir, &name).await });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let mut new = Self::new_inode(req, FileKind::Symlink, 0o777);
        new.target = Some(target.as_os_str().as_bytes().to_vec());
        let (ops, dir, name) = (
            self.ops.clone(),
            self.id(parent),
            link_name.as_bytes().to_vec(),
        );
        self.reply_entry(
            reply,
            dir,
            async move { ops.make(dir, &name, new, 0).await },
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (ops, src, dst) = (self.ops.clone(), self.id(parent), self.id(newparent));
        let (name, newname, flags) = (
            name.as_bytes().to_vec(),
            newname.as_bytes().to_vec(),
            flags.bits(),
        );
        self.reply_empty(reply, async move {
            ops.rename(src, &name, dst, &newname, flags).await
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (ops, id, dir, name) = (
            self.ops.clone(),
            self.id(ino),
            self.id(newparent),
            newname.as_bytes().to_vec(),
        );
        self.reply_entry(reply, dir, async move { ops.link(id, dir, &name).await });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        self.do_open(self.id(ino), write, reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let new = Self::new_inode(req, FileKind::File, mode);
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let (dir, name) = (self.id(parent), name.as_bytes().to_vec());
        self.do_create(dir, name, new, umask, write, reply);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.do_read(self.id(ino), fh.0, offset, size, reply);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.do_write(self.id(ino), fh.0, offset, data, reply);
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.do_flush(ino, lock_owner, reply);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The locks taken through this open file (flock, OFD) go with it.
        let (ops, id) = (self.ops.clone(), self.id(ino));
        if !ops.locks.has_locked(id) {
            // Nothing waits for a release (close(2) has returned): batched.
            ops.release_soon(id, fh.0);
            return reply.ok();
        }
        self.reply_empty(reply, async move {
            let unlocked = ops.locks.release(&ops.cluster, id, None, Some(fh.0)).await;
            ops.release(id, fh.0).await.and(unlocked)
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let spec = self.lock_spec(lock_owner, start, end, typ, pid);
        self.do_getlk(ino, spec, reply);
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let spec = self.lock_spec(lock_owner, start, end, typ, pid);
        self.do_setlk(ino, fh, spec, sleep, req.pid(), reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        self.ops.cache.forgotten(self.id(ino));
    }

    fn destroy(&mut self) {
        self.release_all_locks();
        self.flush_releases();
        self.leave_callbacks();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.do_fsync(self.id(ino), fh.0, datasync, reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (ops, id) = (self.ops.clone(), self.id(ino));
        self.spawn(async move {
            match ops.opendir(id).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.do_readdir(ino, fh, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let (ops, id) = (self.ops.clone(), self.id(ino));
        self.reply_empty(reply, async move {
            ops.simple(inode_node(id), Q::ReleaseDir { fh: fh.0 }).await
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let (ops, id) = (self.ops.clone(), self.id(ino));
        self.reply_empty(reply, async move {
            ops.simple(inode_node(id), Q::FsyncDir { ino: id }).await
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let ops = self.ops.clone();
        self.spawn(async move {
            match ops.statfs().await {
                Ok([blocks, bfree, bavail, files, ffree]) => {
                    reply.statfs(blocks, bfree, bavail, files, ffree, 4096, 255, 4096)
                }
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if name.as_bytes() == stripe_xattr::STRIPE_XATTR {
            return self.get_stripe_xattr(self.id(ino), size, reply);
        }
        if let Some(policy) = replicas_xattr::which(name.as_bytes()) {
            return self.get_replicas_xattr(self.id(ino), policy, size, reply);
        }
        let q = Q::GetXattr {
            ino: self.id(ino),
            name: name.as_bytes().to_vec(),
        };
        self.do_getxattr(q, size, false, reply);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let q = Q::ListXattr { ino: self.id(ino) };
        // As local file systems do, trusted.* is listed to root only.
        self.do_getxattr(q, size, req.uid() != 0, reply);
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if name.as_bytes() == stripe_xattr::STRIPE_XATTR {
            return self.set_stripe_xattr(req.uid(), self.id(ino), Some(value), reply);
        }
        if let Some(policy) = replicas_xattr::which(name.as_bytes()) {
            let ino = self.id(ino);
            return self.set_replicas_xattr(req.uid(), ino, policy, Some(value), reply);
        }
        let q = Q::SetXattr {
            ino: self.id(ino),
            name: name.as_bytes().to_vec(),
            value: Bytes::from(value.to_vec()),
            flags,
        };
        self.do_setxattr(q, reply);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if name.as_bytes() == stripe_xattr::STRIPE_XATTR {
            return self.set_stripe_xattr(req.uid(), self.id(ino), None, reply);
        }
        if let Some(policy) = replicas_xattr::which(name.as_bytes()) {
            return self.set_replicas_xattr(req.uid(), self.id(ino), policy, None, reply);
        }
        let q = Q::RemoveXattr {
            ino: self.id(ino),
            name: name.as_bytes().to_vec(),
        };
        self.do_setxattr(q, reply);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let (ops, id) = (self.ops.clone(), self.id(ino));
        // A striped file's owner holds only some of its units: space
        // reserved or holes punched there alone would be wrong.
        if ops.striped.layout(id, fh.0).is_some() {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let q = Q::Fallocate {
            ino: id,
            fh: fh.0,
            offset,
            len: length,
            mode,
        };
        self.reply_empty(reply, async move { ops.simple(inode_node(id), q).await });
    }
}
