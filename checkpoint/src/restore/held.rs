//! What a task held beyond plain files, pipes and sockets, made again in
//! the root task before any fork (with the job's file-system identity, so
//! every path is looked up, and every FIFO, file and queue created, as the
//! job's user): FIFOs (made again if gone, their bytes put back if they
//! came back empty), deleted files (an unnamed `O_TMPFILE` file in the
//! directory they were in, with their content), inotify instances (each
//! watch added again by path, with its number), POSIX message queues (see
//! [`mqueue`](super::mqueue)), and pipes or terminals that led outside the
//! tree (restart's stdin/stdout, or `--inherit-fd`). What an image may ask
//! of these is checked before anything starts ([`held_check`](super::held_check)).

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use crate::error::{ChkptError, Result};
use crate::image::{
    DeletedImage, FanotifyImage, FdImage, FdKind, FifoImage, InotifyWatch, TaskImage,
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
    /// The same for deleted files the tree maps (made before, kept open).
    mapped: &'a HashMap<u64, i32>,
    ptys: super::pty::Ptys<'a>,
}

impl<'a> Maker<'a> {
    pub fn new(
        root: &'a Injector,
        scratch: u64,
        tasks: &'a [&'a TaskImage],
        inherit: &'a [(i32, String)],
        mapped: &'a HashMap<u64, i32>,
    ) -> Self {
        Maker {
            root,
            scratch,
            tasks,
            inherit,
            deleted: HashMap::new(),
            mapped,
            ptys: super::pty::Ptys::new(root, scratch, tasks),
        }
    }

    /// Make the open file description of `f`; `None` if it is not one of
    /// the kinds of this module.
    pub fn create(&mut self, f: &FdImage) -> Result<Option<u64>> {
        Ok(Some(match &f.kind {
            FdKind::Fifo { fifo, .. } => self.fifo(f, fifo)?,
            FdKind::Deleted { del, .. } => self.deleted(f, del)?,
            FdKind::Inotify { watches, .. } => self.inotify(watches)?,
            FdKind::Fanotify { fa, .. } => self.fanotify(fa)?,
            FdKind::Mqueue { mq, .. } => super::mqueue::create(self.root, self.scratch, f, mq)?,
            FdKind::External { .. } => self.external(f)?,
            FdKind::PtyMaster { pty, .. } => self.ptys.master(pty)?,
            FdKind::PtySlave { index, .. } => self.ptys.slave(f, *index)?,
            _ => return Ok(None),
        }))
    }

    /// Close what was kept for later fds.
    pub fn finish(self) -> Result<()> {
        for fd in self.deleted.values() {
            self.root
                .call("close", libc::SYS_close, [*fd, 0, 0, 0, 0, 0])?;
        }
        self.ptys.finish()
    }

    fn open(&self, path: &str, flags: u32, mode: u32) -> Result<u64> {
        super::rootfile::open_in(self.root, self.scratch, path, flags, mode)
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
    /// job's user, with its content (or the one made for its mappings);
    /// later open file descriptions of the same file reopen it through
    /// /proc.
    fn deleted(&mut self, f: &FdImage, del: &DeletedImage) -> Result<u64> {
        let tmp = match (self.mapped.get(&del.ino), self.deleted.get(&del.ino)) {
            (Some(&fd), _) => fd as u64,
            (None, Some(&fd)) => fd,
            (None, None) => {
                let fd = super::rootfile::unnamed_file(
                    self.root,
                    self.scratch,
                    &del.path,
                    del.mode,
                    self.content_of(del),
                )?;
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

    /// fanotify_init with the group's flags, then each mark by path: its
    /// mask, then its ignored mask (with the flags that go with it).
    fn fanotify(&self, fa: &FanotifyImage) -> Result<u64> {
        const FAN_MARK_ADD: u64 = 0x1;
        const FAN_MARK_MOUNT: u64 = 0x10;
        const FAN_MARK_IGNORED_MASK: u64 = 0x20;
        const FAN_MARK_EVICTABLE: u64 = 0x200;
        let fd = self.root.call(
            "fanotify_init",
            libc::SYS_fanotify_init,
            [fa.flags as u64, fa.event_flags as u64, 0, 0, 0, 0],
        )?;
        // fdinfo lists the newest mark first: added oldest first, they list
        // in the same order again
        for m in fa.marks.iter().rev() {
            let mut b = m.path.as_bytes().to_vec();
            b.push(0);
            ptrace::write_mem(self.root.tid, self.scratch, &b)?;
            let kind = FAN_MARK_ADD | if m.mount { FAN_MARK_MOUNT } else { 0 };
            let flags = m.flags as u64;
            let add = |extra: u64, mask: u64| {
                self.root.call(
                    "fanotify_mark",
                    libc::SYS_fanotify_mark,
                    [
                        fd,
                        kind | extra,
                        mask,
                        libc::AT_FDCWD as u64,
                        self.scratch,
                        0,
                    ],
                )
            };
            if m.mask != 0 {
                add(flags & FAN_MARK_EVICTABLE, m.mask)?;
            }
            if m.ignored_mask != 0 {
                add(flags | FAN_MARK_IGNORED_MASK, m.ignored_mask)?;
            }
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
