//! The FUSE operations of the /krg tree. Anything that waits (another
//! node's figures or table, a job's output, its end, room in its stdin)
//! is answered later from a task on krgd's runtime, so the FUSE threads
//! never block on the network or on a job.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner, OpenAccMode,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite,
    Request, WriteFlags,
};
use krg_proto::proc::{parse_signal, Credentials};

use super::super::creds;
use super::super::fanout;
use super::inode::{Entry, ProcFile, SessFile};
use super::tree::{proc_file, Tree};
use super::xcpu::{errno_of, XSession};
use crate::sync;

/// Attributes are not cached: everything changes all the time.
const TTL: Duration = Duration::ZERO;
/// Largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;

enum Handle {
    /// Content made at open (a consistent read in several chunks).
    Static(Arc<Vec<u8>>),
    /// The session a `clone` open made: reads give its number; writes are ctl.
    Clone(Arc<XSession>),
    /// A file of a session.
    Sess(Arc<XSession>, SessFile, bool),
    /// `proc/<node>:<pid>/signal`, with who opened it.
    Signal(u32, i32, Credentials),
}

/// Open files, shared with the tasks that answer opens later.
#[derive(Clone, Default)]
struct HandleSink {
    handles: Arc<Mutex<HashMap<u64, Handle>>>,
    next: Arc<AtomicU64>,
}

impl HandleSink {
    fn keep(&self, h: Handle) -> FileHandle {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        sync::lock(&self.handles).insert(fh, h);
        FileHandle(fh)
    }
}

/// The file system.
pub struct KrgFs {
    tree: Arc<Tree>,
    rt: tokio::runtime::Handle,
    sink: HandleSink,
}

fn err(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl KrgFs {
    /// Serve `tree`; waits run on `rt`.
    pub fn new(tree: Arc<Tree>, rt: tokio::runtime::Handle) -> KrgFs {
        KrgFs {
            tree,
            rt,
            sink: HandleSink::default(),
        }
    }

    fn later(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.rt.spawn(f);
    }

    fn keep(&self, h: Handle) -> FileHandle {
        self.sink.keep(h)
    }

    fn handle_sink(&self) -> HandleSink {
        self.sink.clone()
    }

    fn reply_entry(tree: &Tree, e: Entry, reply: ReplyEntry) {
        let ino = tree.ino(e);
        match tree.attr(ino, e) {
            Some(a) => reply.entry(&TTL, &a, fuser::Generation(0)),
            None => reply.error(err(libc::ENOENT)),
        }
    }

    fn opened_static(&self, content: Vec<u8>, reply: ReplyOpen) {
        let fh = self.keep(Handle::Static(Arc::new(content)));
        reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO);
    }

    fn refused(op: &str, what: &str, e: (i32, String)) -> Errno {
        tracing::info!(op, what, errno = e.0, reason = %e.1, "/krg: refused");
        err(e.0)
    }
}

fn slice(content: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = (offset as usize).min(content.len());
    let end = start.saturating_add(size as usize).min(content.len());
    &content[start..end]
}

impl Filesystem for KrgFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (Some(parent), Some(name)) = (self.tree.entry(parent.0), name.to_str()) else {
            return reply.error(err(libc::ENOENT));
        };
        match self.tree.child(parent, name) {
            Ok(Some(e)) => Self::reply_entry(&self.tree, e, reply),
            Ok(None) => reply.error(err(libc::ENOENT)),
            Err((node, pid)) => {
                let tree = self.tree.clone();
                self.later(async move {
                    match tree.proc_row(node, pid).await {
                        Some(_) => Self::reply_entry(&tree, Entry::Proc(node, pid), reply),
                        None => reply.error(err(libc::ENOENT)),
                    }
                });
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self
            .tree
            .entry(ino.0)
            .and_then(|e| self.tree.attr(ino.0, e))
        {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(err(libc::ENOENT)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
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
        let Some(e) = self.tree.entry(ino.0) else {
            return reply.error(err(libc::ENOENT));
        };
        let done = match (e, mode, uid, gid, size) {
            // The administrator may open or close `clone` to other users.
            (Entry::Clone(_), Some(m), None, None, None) if req.uid() == 0 => {
                self.tree.clone_mode.store(m & 0o777, Ordering::Relaxed);
                Ok(())
            }
            // O_TRUNC of a text file before it is written.
            (
                Entry::SessFile(
                    id,
                    n,
                    f @ (SessFile::Argv | SessFile::Env | SessFile::Cwd | SessFile::Exec),
                ),
                None,
                None,
                None,
                Some(0),
            ) => match self.tree.sessions.get(id, n) {
                Some(s) => s.truncate(f),
                None => Err((libc::ENOENT, "no such session".into())),
            },
            (Entry::SessFile(_, _, SessFile::Stdin | SessFile::Ctl), None, None, None, Some(0)) => {
                Ok(())
            }
            (Entry::ProcFile(_, _, ProcFile::Signal), None, None, None, Some(0)) => Ok(()),
            _ => Err((
                libc::EPERM,
                "attributes of /krg entries cannot be changed".into(),
            )),
        };
        match done.map(|()| self.tree.attr(ino.0, e)) {
            Ok(Some(a)) => reply.attr(&TTL, &a),
            Ok(None) => reply.error(err(libc::ENOENT)),
            Err(e) => reply.error(Self::refused("setattr", "", e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(e) = self.tree.entry(ino.0) else {
            return reply.error(err(libc::ENOENT));
        };
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let read = flags.acc_mode() != OpenAccMode::O_WRONLY;
        match e {
            Entry::NodeFile(id, f) => {
                if write {
                    return reply.error(err(libc::EACCES));
                }
                let tree = self.tree.clone();
                let fs_handles = self.handle_sink();
                self.later(async move {
                    match tree.node_file(id, f).await {
                        Ok(c) => {
                            let fh = fs_handles.keep(Handle::Static(Arc::new(c)));
                            reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO);
                        }
                        Err(e) => reply.error(err(e)),
                    }
                });
            }
            Entry::Clone(id) => {
                if self.tree.st.check_available().is_err() {
                    return reply.error(err(libc::EHOSTDOWN));
                }
                let owner = creds::request_credentials(req.uid(), req.gid(), req.pid());
                let s = self.tree.sessions.create(id, owner);
                tracing::info!(
                    node = id,
                    session = s.n,
                    uid = req.uid(),
                    "/krg: xcpu session opened"
                );
                let fh = self.keep(Handle::Clone(s));
                reply.opened(
                    fh,
                    FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NONSEEKABLE,
                );
            }
            Entry::SessFile(id, n, f) => {
                let Some(s) = self.tree.sessions.get(id, n) else {
                    return reply.error(err(libc::ENOENT));
                };
                let content = match f {
                    SessFile::Status => Some(s.status().into_bytes()),
                    SessFile::Pid => Some(s.pid().into_bytes()),
                    SessFile::Argv | SessFile::Env | SessFile::Cwd if !write => Some(s.text(f)),
                    _ => None,
                };
                if let Some(c) = content {
                    return self.opened_static(c, reply);
                }
                if f == SessFile::Exec && write {
                    if let Err(e) = s.open_image() {
                        return reply.error(Self::refused("open", "exec", e));
                    }
                }
                let _ = read;
                s.opened(f == SessFile::Ctl);
                let fh = self.keep(Handle::Sess(s, f, write));
                reply.opened(
                    fh,
                    FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NONSEEKABLE,
                );
            }
            Entry::ProcFile(node, pid, f) => {
                if f == ProcFile::Signal {
                    let who = creds::request_credentials(req.uid(), req.gid(), req.pid());
                    let fh = self.keep(Handle::Signal(node, pid, who));
                    return reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO);
                }
                let tree = self.tree.clone();
                let sink = self.handle_sink();
                self.later(async move {
                    match tree.proc_row(node, pid).await {
                        Some(r) => {
                            let fh = sink.keep(Handle::Static(Arc::new(proc_file(&r, f))));
                            reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO);
                        }
                        None => reply.error(err(libc::ESRCH)),
                    }
                });
            }
            _ => reply.error(err(libc::EISDIR)),
        }
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
        let h = match sync::lock(&self.sink.handles).get(&fh.0) {
            Some(Handle::Static(c)) => Ok(c.clone()),
            Some(Handle::Clone(s)) => Ok(Arc::new(s.n.to_string().into_bytes())),
            Some(Handle::Sess(s, f, _)) => Err((s.clone(), *f)),
            Some(Handle::Signal(..)) => return reply.data(&[]),
            None => return reply.error(err(libc::EBADF)),
        };
        match h {
            Ok(content) => reply.data(slice(&content, offset, size)),
            Err((s, f)) => match f {
                SessFile::Stdout | SessFile::Stderr => {
                    self.later(async move {
                        let data = s.read_output(f == SessFile::Stdout, size as usize).await;
                        reply.data(&data);
                    });
                }
                SessFile::Wait => {
                    self.later(async move {
                        let text = s.wait().await;
                        reply.data(slice(text.as_bytes(), offset, size));
                    });
                }
                SessFile::Ctl => reply.data(slice(s.n.to_string().as_bytes(), offset, size)),
                _ => reply.error(err(libc::EBADF)),
            },
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let len = data.len() as u32;
        let (s, f) = match sync::lock(&self.sink.handles).get(&fh.0) {
            Some(Handle::Clone(s)) => (s.clone(), SessFile::Ctl),
            Some(Handle::Sess(s, f, true)) => (s.clone(), *f),
            Some(Handle::Signal(node, pid, who)) => {
                let (node, pid, who) = (*node, *pid, who.clone());
                let text = String::from_utf8_lossy(data).trim().to_string();
                let st = self.tree.st.clone();
                self.later(async move {
                    let sig = match parse_signal(&text) {
                        Ok(s) => s,
                        Err(e) => {
                            return reply.error(Self::refused("write", "signal", (libc::EINVAL, e)))
                        }
                    };
                    match fanout::kill(&st, node, pid, sig, who).await {
                        Ok(()) => reply.written(len),
                        Err(e) => {
                            let errno = match e.kind {
                                krg_proto::admin::ErrorKind::NotFound => libc::ESRCH,
                                krg_proto::admin::ErrorKind::PermissionDenied => libc::EPERM,
                                _ => errno_of(&e),
                            };
                            reply.error(Self::refused("write", "signal", (errno, e.message)))
                        }
                    }
                });
                return;
            }
            Some(_) => return reply.error(err(libc::EBADF)),
            None => return reply.error(err(libc::EBADF)),
        };
        match f {
            SessFile::Argv | SessFile::Env | SessFile::Cwd | SessFile::Exec => {
                match s.write_text(f, offset, data, len < MAX_WRITE) {
                    Ok(()) => reply.written(len),
                    Err(e) => reply.error(Self::refused("write", f.name(), e)),
                }
            }
            SessFile::Ctl => {
                let (tree, cmd) = (self.tree.clone(), data.to_vec());
                self.later(async move {
                    match s.ctl(&tree.st, &tree.sched, &cmd).await {
                        Ok(()) => reply.written(len),
                        Err(e) => reply.error(Self::refused("write", "ctl", e)),
                    }
                });
            }
            SessFile::Stdin => {
                let data = data.to_vec();
                self.later(async move {
                    match s.write_stdin(&data).await {
                        Ok(()) => reply.written(len),
                        Err(e) => reply.error(Self::refused("write", "stdin", e)),
                    }
                });
            }
            _ => reply.error(err(libc::EBADF)),
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
        match sync::lock(&self.sink.handles).remove(&fh.0) {
            Some(Handle::Clone(s)) => s.closed(true),
            Some(Handle::Sess(s, f, write)) => {
                if f == SessFile::Exec && write {
                    s.image_closed();
                }
                s.closed(f == SessFile::Ctl);
            }
            _ => {}
        }
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let Some(e) = self.tree.entry(ino.0) else {
            return reply.error(err(libc::ENOENT));
        };
        let tree = self.tree.clone();
        let list = move |tree: &Tree, children: Vec<(String, Entry)>, mut reply: ReplyDirectory| {
            let mut all = vec![
                (".".to_string(), ino.0, FileType::Directory),
                ("..".to_string(), 1, FileType::Directory),
            ];
            for (name, e) in children {
                let kind = match e {
                    Entry::Nodes
                    | Entry::Procs
                    | Entry::Node(_)
                    | Entry::Xcpu(_)
                    | Entry::Session(..)
                    | Entry::Proc(..) => FileType::Directory,
                    _ => FileType::RegularFile,
                };
                all.push((name, tree.ino(e), kind));
            }
            for (i, (name, child, kind)) in all.into_iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                    break;
                }
            }
            reply.ok();
        };
        if e == Entry::Procs {
            let as_children = |keys: Vec<(u32, i32)>| -> Vec<(String, Entry)> {
                keys.into_iter()
                    .map(|(n, p)| (format!("{n}:{p}"), Entry::Proc(n, p)))
                    .collect()
            };
            if offset > 0 {
                // The rest of the listing made at offset 0.
                let children = as_children(tree.cached_procs());
                return list(&tree, children, reply);
            }
            self.later(async move {
                let rows = tree.list_procs(None).await;
                let children = as_children(rows.iter().map(|r| (r.node, r.pid)).collect());
                list(&tree, children, reply);
            });
        } else if tree.attr(ino.0, e).is_some() {
            let children = tree.children(e);
            list(&tree, children, reply);
        } else {
            reply.error(err(libc::ENOENT));
        }
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(err(libc::ENODATA));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }
}
