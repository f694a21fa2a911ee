//! The FUSE file system that serves an [`Engine`]'s tree. Each call maps to
//! one engine operation; a refused operation answers the model's errno and
//! logs why.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};

use crate::engine::Engine;
use crate::error::Error;
use crate::tree::{EntryType, Ino};

/// Entries and attributes are not cached by the kernel: values change all
/// the time and other nodes' values arrive in the background.
const TTL: Duration = Duration::ZERO;
/// Largest value a single write may carry.
const MAX_WRITE: usize = 4096;

pub struct SchedFs {
    engine: Arc<Engine>,
    /// Content of each open file, generated at open time so that a read in
    /// several chunks sees one consistent value.
    open: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    next_fh: AtomicU64,
    born: SystemTime,
}

impl SchedFs {
    pub fn new(engine: Arc<Engine>) -> SchedFs {
        SchedFs {
            engine,
            open: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            born: SystemTime::now(),
        }
    }

    fn attr(&self, ino: Ino) -> Result<FileAttr, Error> {
        let tree = self.engine.tree();
        let t = tree.entry_type(ino)?;
        let (kind, perm, size, nlink) = match t {
            EntryType::Dir => (FileType::Directory, 0o755, 0, 2),
            EntryType::File { writable: true } => (FileType::RegularFile, 0o644, 4096, 1),
            EntryType::File { writable: false } => (FileType::RegularFile, 0o444, 4096, 1),
            EntryType::Link => (
                FileType::Symlink,
                0o777,
                tree.readlink(ino)?.len() as u64,
                1,
            ),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: 0,
            atime: self.born,
            mtime: self.born,
            ctime: self.born,
            crtime: self.born,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn entry(&self, ino: Result<Ino, Error>, reply: ReplyEntry) {
        match ino.and_then(|i| self.attr(i)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(Errno::from_i32(e.errno())),
        }
    }
}

/// Log a refused operation and turn it into the errno to answer.
fn refuse(op: &str, path: &str, e: &Error) -> Errno {
    tracing::info!(op, path, errno = e.errno(), reason = %e, "scheduler tree: operation refused");
    Errno::from_i32(e.errno())
}

fn utf8(name: &OsStr) -> Result<&str, Error> {
    name.to_str()
        .ok_or_else(|| Error::Invalid(format!("name {name:?} is not UTF-8")))
}

impl Filesystem for SchedFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE as u32);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = utf8(name).and_then(|n| self.engine.tree().lookup(parent.0, n));
        // A missing name is ordinary (shells probe for files): not logged.
        self.entry(ino, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(Errno::from_i32(e.errno())),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Truncation is what `echo x > attr` does before writing: accepted
        // (and ignored) on writable attributes. Nothing else can change.
        let path = self.engine.tree().path(ino.0);
        let writable = matches!(
            self.engine.tree().entry_type(ino.0),
            Ok(EntryType::File { writable: true })
        );
        if mode.is_some() || uid.is_some() || gid.is_some() || (size.is_some() && !writable) {
            let e = Error::NotPermitted(format!(
                "{path}: attributes of scheduler tree entries cannot be changed"
            ));
            return reply.error(refuse("setattr", &path, &e));
        }
        match self.attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(Errno::from_i32(e.errno())),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.engine.tree().readlink(ino.0) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(Errno::from_i32(e.errno())),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _m: u32,
        _u: u32,
        _r: u32,
        reply: ReplyEntry,
    ) {
        let path = self
            .engine
            .tree()
            .child_path(parent.0, &name.to_string_lossy());
        let e = Error::NotPermitted(format!(
            "{path}: files cannot be created in the scheduler tree (use mkdir)"
        ));
        reply.error(refuse("mknod", &path, &e));
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: ReplyCreate,
    ) {
        let path = self
            .engine
            .tree()
            .child_path(parent.0, &name.to_string_lossy());
        let e = Error::NotPermitted(format!(
            "{path}: files cannot be created in the scheduler tree (use mkdir)"
        ));
        reply.error(refuse("create", &path, &e));
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let path = self
            .engine
            .tree()
            .child_path(parent.0, &name.to_string_lossy());
        match utf8(name).and_then(|n| self.engine.mkdir(parent.0, n)) {
            Ok(ino) => {
                tracing::info!(path, "scheduler tree: mkdir");
                self.entry(Ok(ino), reply)
            }
            Err(e) => reply.error(refuse("mkdir", &path, &e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let path = self
            .engine
            .tree()
            .child_path(parent.0, &name.to_string_lossy());
        match utf8(name).and_then(|n| self.engine.rmdir(parent.0, n)) {
            Ok(()) => {
                tracing::info!(path, "scheduler tree: rmdir");
                reply.ok()
            }
            Err(e) => reply.error(refuse("rmdir", &path, &e)),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let path = self
            .engine
            .tree()
            .child_path(parent.0, &link_name.to_string_lossy());
        let target_text = target
            .to_str()
            .ok_or_else(|| Error::Invalid(format!("target {target:?} is not UTF-8")));
        let made = utf8(link_name).and_then(|n| self.engine.symlink(parent.0, n, target_text?));
        match made {
            Ok(ino) => {
                tracing::info!(path, target = %target.display(), "scheduler tree: linked");
                self.entry(Ok(ino), reply)
            }
            Err(e) => reply.error(refuse("symlink", &path, &e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let path = self
            .engine
            .tree()
            .child_path(parent.0, &name.to_string_lossy());
        match utf8(name).and_then(|n| self.engine.unlink(parent.0, n)) {
            Ok(()) => {
                tracing::info!(path, "scheduler tree: unlinked");
                reply.ok()
            }
            Err(e) => reply.error(refuse("unlink", &path, &e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let path = self
            .engine
            .tree()
            .child_path(parent.0, &name.to_string_lossy());
        let e = Error::NotPermitted(format!(
            "{path}: entries of the scheduler tree cannot be renamed"
        ));
        reply.error(refuse("rename", &path, &e));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let tree = self.engine.tree();
        let path = tree.path(ino.0);
        let writable = match tree.entry_type(ino.0) {
            Ok(EntryType::File { writable }) => writable,
            Ok(_) => return reply.error(Errno::from_i32(libc::EISDIR)),
            Err(e) => return reply.error(Errno::from_i32(e.errno())),
        };
        let wants_write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        if wants_write && !writable {
            let e = Error::NotPermitted(format!("{path} is read-only"));
            tracing::info!(op = "open", path, reason = %e, "scheduler tree: operation refused");
            return reply.error(Errno::from_i32(libc::EACCES));
        }
        let content = match flags.acc_mode() {
            OpenAccMode::O_WRONLY => Vec::new(),
            _ => match tree.read(ino.0) {
                Ok(c) => c.into_bytes(),
                Err(e) => return reply.error(Errno::from_i32(e.errno())),
            },
        };
        drop(tree);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(content));
        // Direct I/O: reads come to us whatever the size stat reported.
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let content = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned();
        let Some(content) = content else {
            return reply.error(Errno::from_i32(libc::EBADF));
        };
        let start = (offset as usize).min(content.len());
        let end = start.saturating_add(size as usize).min(content.len());
        reply.data(&content[start..end]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let path = self.engine.tree().path(ino.0);
        // configfs attributes take one value per write; appending pieces
        // would let a half value be applied.
        let checked = if offset != 0 {
            Err(Error::Invalid(format!(
                "{path}: write the whole value at offset 0 in one write"
            )))
        } else if data.len() >= MAX_WRITE {
            // The kernel splits larger writes; refusing the first piece
            // keeps a long value from being applied in part.
            Err(Error::Invalid(format!("{path}: value too long")))
        } else {
            std::str::from_utf8(data)
                .map_err(|_| Error::Invalid(format!("{path}: value is not UTF-8")))
        };
        match checked.and_then(|text| self.engine.write(ino.0, text).map(|_| text)) {
            Ok(text) => {
                tracing::info!(path, value = %text.trim(), "scheduler tree: attribute set");
                reply.written(data.len() as u32)
            }
            Err(e) => reply.error(refuse("write", &path, &e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    /// No extended attributes (answered quietly: ls and SELinux-aware tools ask).
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::from_i32(libc::ENODATA));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }

    /// Permissions are checked at open/mkdir/symlink time by the model.
    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let tree = self.engine.tree();
        let (children, parent) = match (tree.children(ino.0), tree.parent(ino.0)) {
            (Ok(c), Ok(p)) => (c, p),
            (Err(e), _) | (_, Err(e)) => return reply.error(Errno::from_i32(e.errno())),
        };
        drop(tree);
        let mut all = vec![
            (".".to_string(), ino.0, FileType::Directory),
            ("..".to_string(), parent, FileType::Directory),
        ];
        all.extend(children.into_iter().map(|(n, i, t)| {
            let ft = match t {
                EntryType::Dir => FileType::Directory,
                EntryType::File { .. } => FileType::RegularFile,
                EntryType::Link => FileType::Symlink,
            };
            (n, i, ft)
        }));
        for (i, (name, child, ft)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, ft, name) {
                break;
            }
        }
        reply.ok();
    }
}
