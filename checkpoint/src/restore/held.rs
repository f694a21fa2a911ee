//! What a task held beyond plain files, pipes and sockets, made again in
//! the root task before any fork (with the job's file-system identity, so
//! every path is looked up, and every FIFO, file and queue created, as the
//! job's user): FIFOs (made again if gone, their bytes put back if they
//! came back empty), deleted files (an unnamed `O_TMPFILE` file in the
//! directory they were in, with their content), inotify instances (each
//! watch added again by path, with its number), POSIX message queues (made
//! again with their messages if gone), and pipes or terminals that led
//! outside the tree (restart's stdin/stdout, or `--inherit-fd`). Also the
//! checks of these against the image's owner, before anything starts.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use crate::error::{ChkptError, Result};
use crate::image::{
    DeletedImage, FdImage, FdKind, FifoImage, InotifyWatch, LockKind, MqueueImage, TaskImage,
    MAX_DELETED_BYTES, MAX_INOTIFY_WD, MAX_MQ_MSGS, MAX_MQ_MSGSIZE,
};
use crate::ptrace::{self, Injector};

use super::ctx::SCRATCH_LEN;

/// Watch events and flags an image may ask for (IN_ALL_EVENTS, IN_ONLYDIR,
/// IN_DONT_FOLLOW, IN_EXCL_UNLINK, IN_ONESHOT).
const IN_MASK_OK: u32 = 0x0000_0fff | 0x0100_0000 | 0x0200_0000 | 0x0400_0000 | 0x8000_0000;

/// Makes these kinds, keeping what later fds of the same file need.
pub struct Maker<'a> {
    root: &'a Injector,
    scratch: u64,
    tasks: &'a [&'a TaskImage],
    /// `--inherit-fd N:PATH`: fd number of the job → path.
    inherit: &'a [(i32, String)],
    /// Deleted file inode → the root's fd of the unnamed file made for it.
    deleted: HashMap<u64, u64>,
}

impl<'a> Maker<'a> {
    pub fn new(
        root: &'a Injector,
        scratch: u64,
        tasks: &'a [&'a TaskImage],
        inherit: &'a [(i32, String)],
    ) -> Self {
        Maker {
            root,
            scratch,
            tasks,
            inherit,
            deleted: HashMap::new(),
        }
    }

    /// Make the open file description of `f`; `None` if it is not one of
    /// the kinds of this module.
    pub fn create(&mut self, f: &FdImage) -> Result<Option<u64>> {
        Ok(Some(match &f.kind {
            FdKind::Fifo { fifo, .. } => self.fifo(f, fifo)?,
            FdKind::Deleted { del, .. } => self.deleted(f, del)?,
            FdKind::Inotify { watches, .. } => self.inotify(watches)?,
            FdKind::Mqueue { mq, .. } => self.mqueue(f, mq)?,
            FdKind::External { .. } => self.external(f)?,
            _ => return Ok(None),
        }))
    }

    /// Close what was kept for later fds.
    pub fn finish(self) -> Result<()> {
        for fd in self.deleted.values() {
            self.root
                .call("close", libc::SYS_close, [*fd, 0, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    fn open(&self, path: &str, flags: u32, mode: u32) -> Result<u64> {
        if path.len() as u64 >= SCRATCH_LEN || path.contains('\0') {
            return Err(ChkptError::TooLarge(format!("the path {path}")));
        }
        let mut b = path.as_bytes().to_vec();
        b.push(0);
        ptrace::write_mem(self.root.tid, self.scratch, &b)?;
        self.root.call(
            "openat",
            libc::SYS_openat,
            [
                libc::AT_FDCWD as u64,
                self.scratch,
                flags as u64,
                mode as u64,
                0,
                0,
            ],
        )
    }

    fn close(&self, fd: u64) -> Result<()> {
        self.root
            .call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])
            .map(|_| ())
    }

    /// The file at fd `fd` of the root, seen from here.
    fn proc_fd(&self, fd: u64) -> String {
        format!("/proc/{}/fd/{fd}", self.root.tid)
    }

    /// Open the FIFO by path (made again if gone) without blocking: first
    /// read-write (a FIFO opened so never waits), which then lets the
    /// recorded open not wait either.
    fn fifo(&self, f: &FdImage, fifo: &FifoImage) -> Result<u64> {
        let keep_flags =
            (libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u32;
        let keep = match self.open(&fifo.path, keep_flags, 0) {
            Ok(fd) => fd,
            Err(ChkptError::Injected { errno, .. })
                if errno.raw_os_error() == Some(libc::ENOENT) =>
            {
                // gone: made again, as the job's user, where the user may
                self.root.call(
                    "mknodat(fifo)",
                    libc::SYS_mknodat,
                    [
                        libc::AT_FDCWD as u64,
                        self.scratch,
                        (libc::S_IFIFO | (fifo.mode & 0o777)) as u64,
                        0,
                        0,
                        0,
                    ],
                )?;
                let fd = self.open(&fifo.path, keep_flags, 0)?;
                self.root.call(
                    "fchmod",
                    libc::SYS_fchmod,
                    [fd, (fifo.mode & 0o777) as u64, 0, 0, 0, 0],
                )?;
                fd
            }
            Err(e) => return Err(e),
        };
        let link = self.proc_fd(keep);
        let meta = std::fs::metadata(&link).map_err(|e| ChkptError::io(&link, e))?;
        if !meta.file_type().is_fifo() {
            return Err(ChkptError::Changed(format!(
                "{} is no longer a FIFO",
                fifo.path
            )));
        }
        if !fifo.data.is_empty() && fifo_empty(&link)? {
            put_back(&link, &fifo.data)?;
        }
        let flags = f.flags & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL) as u32)
            | (libc::O_NOCTTY | libc::O_NOFOLLOW) as u32;
        let fd = self.open(&fifo.path, flags, 0)?;
        let same = std::fs::metadata(self.proc_fd(fd)).map(|m| m.ino() == meta.ino());
        self.close(keep)?;
        if !same.unwrap_or(false) {
            return Err(ChkptError::Changed(format!(
                "{} was replaced while restart opened it",
                fifo.path
            )));
        }
        Ok(fd)
    }

    /// An unnamed file in the directory the deleted one was in, as the
    /// job's user, with its content; later open file descriptions of the
    /// same file reopen it through /proc.
    fn deleted(&mut self, f: &FdImage, del: &DeletedImage) -> Result<u64> {
        let tmp = match self.deleted.get(&del.ino) {
            Some(&fd) => fd,
            None => {
                let dir = std::path::Path::new(&del.path)
                    .parent()
                    .and_then(|p| p.to_str())
                    .unwrap_or("/");
                let fd = self.open(
                    dir,
                    (libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC) as u32,
                    del.mode & 0o777,
                )?;
                self.root.call(
                    "fchmod",
                    libc::SYS_fchmod,
                    [fd, (del.mode & 0o777) as u64, 0, 0, 0, 0],
                )?;
                let content = self.content_of(del);
                let link = self.proc_fd(fd);
                // a /proc magic link of our own making: it must be followed
                let mut w = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&link)
                    .map_err(|e| ChkptError::io(&link, e))?;
                w.write_all(content).map_err(|e| ChkptError::io(&link, e))?;
                self.deleted.insert(del.ino, fd);
                fd
            }
        };
        let flags = f.flags
            & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC) as u32)
            | libc::O_NOCTTY as u32;
        let fd = self.open(&format!("/proc/self/fd/{tmp}"), flags, 0)?;
        if del.pos != 0 {
            self.root.call(
                "lseek",
                libc::SYS_lseek,
                [fd, del.pos, libc::SEEK_SET as u64, 0, 0, 0],
            )?;
        }
        Ok(fd)
    }

    /// The content of a deleted file: held by the first fd of the tree
    /// that has it.
    fn content_of(&self, del: &DeletedImage) -> &'a [u8] {
        self.tasks
            .iter()
            .flat_map(|t| &t.fds)
            .find_map(|f| match &f.kind {
                FdKind::Deleted { del: d, .. } if d.ino == del.ino && !d.content.is_empty() => {
                    Some(d.content.as_slice())
                }
                _ => None,
            })
            .unwrap_or(&[])
    }

    /// inotify_init1, then each watch by path, with its number: numbers
    /// are handed out one after the other, so a number below the wanted
    /// one is taken and given back until the wanted one comes.
    fn inotify(&self, watches: &[InotifyWatch]) -> Result<u64> {
        let fd = self.root.call(
            "inotify_init1",
            libc::SYS_inotify_init1,
            [libc::IN_NONBLOCK as u64, 0, 0, 0, 0, 0],
        )?;
        for w in watches {
            let mut b = w.path.as_bytes().to_vec();
            b.push(0);
            ptrace::write_mem(self.root.tid, self.scratch, &b)?;
            loop {
                let got = self.root.call(
                    "inotify_add_watch",
                    libc::SYS_inotify_add_watch,
                    [fd, self.scratch, (w.mask & IN_MASK_OK) as u64, 0, 0, 0],
                )? as i32;
                if got == w.wd {
                    break;
                }
                if got > w.wd {
                    return Err(ChkptError::Changed(format!(
                        "inotify watch {} on {}: the kernel gave number {got} (the same file is watched twice?)",
                        w.wd, w.path
                    )));
                }
                self.root.call(
                    "inotify_rm_watch",
                    libc::SYS_inotify_rm_watch,
                    [fd, got as u64, 0, 0, 0, 0],
                )?;
            }
        }
        // the IN_IGNORED events of the numbers given back (the image has
        // no event queued: checkpoint refuses that)
        while self
            .root
            .call(
                "read(inotify)",
                libc::SYS_read,
                [fd, self.scratch, SCRATCH_LEN, 0, 0, 0],
            )
            .is_ok_and(|n| n > 0)
        {}
        Ok(fd)
    }

    /// A queue that still exists is opened as it is (like a file); one
    /// that is gone (or was removed while open) is made again as the
    /// job's user with its messages (and removed again).
    fn mqueue(&self, f: &FdImage, mq: &MqueueImage) -> Result<u64> {
        let mut b = mq.name.as_bytes().to_vec();
        b.push(0);
        let name = self.scratch;
        ptrace::write_mem(self.root.tid, name, &b)?;
        let acc = (f.flags & libc::O_ACCMODE as u32) as u64;
        let flags = acc | (f.flags & libc::O_NONBLOCK as u32) as u64;
        // struct mq_attr: flags, maxmsg, msgsize, curmsgs (+ reserved)
        let mut attr = [0u8; 64];
        attr[8..16].copy_from_slice(&mq.maxmsg.to_le_bytes());
        attr[16..24].copy_from_slice(&mq.msgsize.to_le_bytes());
        let attr_at = self.scratch + 512;
        ptrace::write_mem(self.root.tid, attr_at, &attr)?;
        let create = flags | (libc::O_CREAT | libc::O_EXCL) as u64;
        let made = self.root.call(
            "mq_open",
            libc::SYS_mq_open,
            [name, create, (mq.mode & 0o777) as u64, attr_at, 0, 0],
        );
        let fd = match made {
            Ok(fd) => fd,
            Err(ChkptError::Injected { errno, .. })
                if errno.raw_os_error() == Some(libc::EEXIST) && !mq.unlinked =>
            {
                return self
                    .root
                    .call("mq_open", libc::SYS_mq_open, [name, flags, 0, 0, 0, 0]);
            }
            Err(e) => return Err(e),
        };
        self.root.call(
            "fchmod",
            libc::SYS_fchmod,
            [fd, (mq.mode & 0o777) as u64, 0, 0, 0, 0],
        )?;
        fill_queue(&self.proc_fd(fd), mq)?;
        if mq.unlinked {
            ptrace::write_mem(self.root.tid, name, &b)?;
            self.root
                .call("mq_unlink", libc::SYS_mq_unlink, [name, 0, 0, 0, 0, 0])?;
        }
        Ok(fd)
    }

    /// `--inherit-fd N:PATH` opened as the job's user, or restart's own
    /// stdin (a read end) or stdout.
    fn external(&self, f: &FdImage) -> Result<u64> {
        if let Some((_, path)) = self.inherit.iter().find(|(n, _)| *n == f.fd) {
            let flags = (f.flags & (libc::O_ACCMODE | libc::O_APPEND) as u32)
                | (libc::O_NOCTTY | libc::O_CLOEXEC) as u32;
            return self.open(path, flags, 0);
        }
        let from = if f.flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32 {
            0
        } else {
            1
        };
        self.root.call("dup", libc::SYS_dup, [from, 0, 0, 0, 0, 0])
    }
}

/// Nothing buffered in the FIFO (it came back empty: the bytes saved are
/// not in it already).
fn fifo_empty(link: &str) -> Result<bool> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(link)
        .map_err(|e| ChkptError::io(link, e))?;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(f.as_raw_fd(), libc::FIONREAD, &mut n) };
    Ok(n == 0)
}

fn put_back(link: &str, data: &[u8]) -> Result<()> {
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(link)
        .map_err(|e| ChkptError::io(link, e))?;
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, data.len().max(4096)) };
    w.write_all(data).map_err(|e| ChkptError::io(link, e))
}

fn fill_queue(link: &str, mq: &MqueueImage) -> Result<()> {
    let q = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(link)
        .map_err(|e| ChkptError::io(link, e))?;
    let past = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    for m in &mq.messages {
        // SAFETY: sends the bytes of m; the fd is non-blocking.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mq_timedsend,
                q.as_raw_fd(),
                m.data.as_ptr(),
                m.data.len(),
                m.prio,
                &past,
            )
        };
        if r < 0 {
            return Err(ChkptError::io(link, std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn sysctl(name: &str) -> i64 {
    std::fs::read_to_string(format!("/proc/sys/fs/mqueue/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// What these kinds ask of restart is sane, and, for an image a user owns,
/// no more than that user could have made: message queues within the
/// limits an unprivileged user gets, plain permission bits, paths that
/// are absolute, locks on fds the task has.
pub fn check(owner: u32, t: &TaskImage) -> std::result::Result<(), String> {
    for h in &t.locks {
        let f = t.fds.iter().find(|f| f.fd == h.fd);
        if !f.is_some_and(|f| matches!(f.kind, FdKind::Path { .. } | FdKind::Deleted { .. })) {
            return Err(format!(
                "a lock is recorded on fd {}, which is not a file",
                h.fd
            ));
        }
        if h.lock.end.is_some_and(|e| e < h.lock.start) || h.lock.start > i64::MAX as u64 {
            return Err(format!("fd {}: a lock with a bad range", h.fd));
        }
        if h.lock.kind == LockKind::Posix && h.lock.end.is_some_and(|e| e > i64::MAX as u64) {
            return Err(format!("fd {}: a lock with a bad range", h.fd));
        }
    }
    for f in &t.fds {
        let fd = f.fd;
        let abs = |p: &str| p.starts_with('/') && !p.contains('\0');
        match &f.kind {
            FdKind::Fifo { fifo, .. }
                if !abs(&fifo.path) || fifo.mode & !0o777 != 0 || fifo.data.len() > 1 << 20 =>
            {
                return Err(format!("fd {fd}: a bad FIFO record"));
            }
            FdKind::Deleted { del, .. }
                if !abs(&del.path)
                    || del.mode & !0o777 != 0
                    || del.size > MAX_DELETED_BYTES
                    || del.content.len() as u64 > del.size =>
            {
                return Err(format!("fd {fd}: a bad deleted-file record"));
            }
            FdKind::Inotify { watches, .. } => {
                let mut last = 0;
                for w in watches {
                    if !abs(&w.path) || w.wd <= last || w.wd > MAX_INOTIFY_WD {
                        return Err(format!("fd {fd}: a bad inotify watch record"));
                    }
                    last = w.wd;
                }
            }
            FdKind::Mqueue { mq, .. } => check_mq(owner, fd, mq)?,
            _ => {}
        }
    }
    Ok(())
}

fn check_mq(owner: u32, fd: i32, mq: &MqueueImage) -> std::result::Result<(), String> {
    let bad = |why: &str| Err(format!("fd {fd}: message queue /{}: {why}", mq.name));
    if mq.name.is_empty()
        || mq.name.len() > 255
        || mq.name.contains('/')
        || mq.name.contains('\0')
        || mq.name == "."
        || mq.name == ".."
    {
        return bad("a bad name");
    }
    if mq.mode & !0o777 != 0 {
        return bad("bad permission bits");
    }
    if mq.maxmsg <= 0
        || mq.msgsize <= 0
        || mq.messages.len() > MAX_MQ_MSGS
        || mq.msgsize as usize > MAX_MQ_MSGSIZE
        || mq.messages.len() as i64 > mq.maxmsg
        || mq
            .messages
            .iter()
            .any(|m| m.data.len() as i64 > mq.msgsize || m.prio >= 32768)
    {
        return bad("bad sizes or messages");
    }
    if owner != 0 && (mq.maxmsg > sysctl("msg_max") || mq.msgsize > sysctl("msgsize_max")) {
        return bad("larger than a user may make (fs.mqueue.msg_max, msgsize_max)");
    }
    Ok(())
}

/// Every `--inherit-fd N:PATH` names an fd that some task had leading
/// outside the tree above fd 2 (fds 0-2 are restart's own: redirect
/// restart's instead).
pub fn check_inherit(tasks: &[&TaskImage], inherit: &[(i32, String)]) -> Result<()> {
    for (n, path) in inherit {
        let known = tasks
            .iter()
            .flat_map(|t| &t.fds)
            .any(|f| f.fd == *n && matches!(f.kind, FdKind::External { .. }));
        if !known {
            return Err(ChkptError::Usage(format!(
                "--inherit-fd {n}:{path}: no task of the image has fd {n} leading outside the tree{}",
                if *n <= 2 {
                    " (fds 0-2 are restart's own: redirect restart's)"
                } else {
                    ""
                }
            )));
        }
    }
    Ok(())
}
