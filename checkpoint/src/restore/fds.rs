//! Rebuilding fd tables: pipes of the tree, files at their offsets, stdio.

use std::collections::HashMap;
use std::io::Write;

use super::ctx::TaskCtx;
use crate::error::{ChkptError, Result};
use crate::image::{FdImage, FdKind, PipeImage};
use crate::ptrace::{self, Injector};

const O_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
/// Status flags F_SETFL can change.
const SETFL_MASK: u32 =
    (libc::O_APPEND | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME) as u32;

/// Create every pipe of the tree in the root task, at fds `base + 2i` (read)
/// and `base + 2i + 1` (write), so that every task forked afterwards inherits
/// them, and put back the bytes that were buffered in each.
pub fn create_pipes(
    root: &Injector,
    scratch: u64,
    pipes: &[PipeImage],
    base: i32,
) -> Result<HashMap<u64, (i32, i32)>> {
    let mut out = HashMap::new();
    for (n, p) in pipes.iter().enumerate() {
        root.call("pipe2", libc::SYS_pipe2, [scratch, 0, 0, 0, 0, 0])?;
        let b = ptrace::read_mem(root.tid, scratch, 8)?;
        let fds = [
            i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        ];
        let want = [base + 2 * n as i32, base + 2 * n as i32 + 1];
        // pipe2 may return the wanted numbers already, or (when stdio is
        // closed) the read end low and the write end on want[0]: move the
        // write end first then, so that no dup2 clobbers the other end.
        let mut fds = fds;
        let order: [usize; 2] = if fds[1] == want[0] { [1, 0] } else { [0, 1] };
        for k in order {
            if fds[k] != want[k] {
                root.call(
                    "dup2",
                    libc::SYS_dup2,
                    [fds[k] as u64, want[k] as u64, 0, 0, 0, 0],
                )?;
                root.call("close", libc::SYS_close, [fds[k] as u64, 0, 0, 0, 0, 0])?;
                fds[k] = want[k];
            }
        }
        if p.data.len() > 65536 {
            root.call(
                "fcntl",
                libc::SYS_fcntl,
                [
                    want[1] as u64,
                    libc::F_SETPIPE_SZ as u64,
                    p.data.len() as u64,
                    0,
                    0,
                    0,
                ],
            )?;
        }
        if !p.data.is_empty() {
            let path = format!("/proc/{}/fd/{}", root.tid, want[1]);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| ChkptError::io(&path, e))?;
            f.write_all(&p.data).map_err(|e| ChkptError::io(&path, e))?;
        }
        out.insert(p.ino, (want[0], want[1]));
    }
    Ok(out)
}

pub fn restore(c: &TaskCtx) -> Result<()> {
    let i = c.inj;
    let fds = &c.task.fds;
    close_missing_stdio(i, fds)?;
    for f in fds {
        let cloexec = if f.flags & O_CLOEXEC != 0 {
            O_CLOEXEC as u64
        } else {
            0
        };
        match &f.kind {
            FdKind::InheritedStdio { .. } => {}
            FdKind::Pidfd { pid } => {
                // PIDFD_THREAD is O_EXCL, PIDFD_NONBLOCK O_NONBLOCK
                let keep = (libc::O_EXCL | libc::O_NONBLOCK) as u32;
                let p = i.call(
                    "pidfd_open",
                    libc::SYS_pidfd_open,
                    [*pid as u64, (f.flags & keep) as u64, 0, 0, 0, 0],
                )?;
                if p == f.fd as u64 {
                    // made at its own number: pidfd_open set close-on-exec
                    let fd_flags = if cloexec != 0 { libc::FD_CLOEXEC } else { 0 };
                    i.call(
                        "fcntl(F_SETFD)",
                        libc::SYS_fcntl,
                        [p, libc::F_SETFD as u64, fd_flags as u64, 0, 0, 0],
                    )?;
                } else {
                    i.call("dup3", libc::SYS_dup3, [p, f.fd as u64, cloexec, 0, 0, 0])?;
                    i.call("close", libc::SYS_close, [p, 0, 0, 0, 0, 0])?;
                }
            }
            _ => install(i, f, c.pipe_fds, c.file_fds)?,
        }
    }
    // epoll registrations name this task's fds: all in place now (once
    // per epoll, by the first task that has it)
    for f in fds {
        if let FdKind::Epoll { file, items } = &f.kind {
            if c.first_holder.get(file) == Some(&c.task.pid) {
                super::anon::register(c, f.fd, items)?;
            }
        }
    }
    if c.work_end > c.work_base {
        i.call(
            "close_range",
            libc::SYS_close_range,
            [c.work_base as u64, c.work_end as u64 - 1, 0, 0, 0, 0],
        )?;
    }
    // after the close: closing any fd of a file drops the process's POSIX
    // locks on it
    super::locks::take(c)
}

/// Stdio the image does not keep is closed; stdio it inherits stays.
pub fn close_missing_stdio(i: &Injector, fds: &[FdImage]) -> Result<()> {
    for n in 0..3 {
        if !fds.iter().any(|f| f.fd == n) {
            i.call("close", libc::SYS_close, [n as u64, 0, 0, 0, 0, 0])
                .or_else(ignore_ebadf)?;
        }
    }
    Ok(())
}

/// Put fd `f` of a task (a pipe of the tree, or an open file restart
/// made for it) in place from restart's working fds (`pipe_fds`, by pipe
/// inode; `file_fds`, by open file number).
pub fn install(
    i: &Injector,
    f: &FdImage,
    pipe_fds: &HashMap<u64, (i32, i32)>,
    file_fds: &HashMap<u32, i32>,
) -> Result<()> {
    let cloexec = if f.flags & O_CLOEXEC != 0 {
        O_CLOEXEC as u64
    } else {
        0
    };
    if let FdKind::Pipe { ino, write_end } = &f.kind {
        let &(r, w) = pipe_fds.get(ino).ok_or_else(|| {
            ChkptError::Inconsistent(format!("pipe {ino} is not in the node file"))
        })?;
        let from = if *write_end { w } else { r };
        i.call(
            "dup3",
            libc::SYS_dup3,
            [from as u64, f.fd as u64, cloexec, 0, 0, 0],
        )?;
        let fl = (f.flags & SETFL_MASK) as u64;
        i.call(
            "fcntl",
            libc::SYS_fcntl,
            [f.fd as u64, libc::F_SETFL as u64, fl, 0, 0, 0],
        )?;
        return Ok(());
    }
    let file = f.kind.file().unwrap_or(u32::MAX);
    let from = file_fds
        .get(&file)
        .ok_or_else(|| ChkptError::Inconsistent(format!("open file #{file} was not opened")))?;
    i.call(
        "dup3",
        libc::SYS_dup3,
        [*from as u64, f.fd as u64, cloexec, 0, 0, 0],
    )?;
    Ok(())
}

fn ignore_ebadf(e: ChkptError) -> Result<u64> {
    match &e {
        ChkptError::Injected { errno, .. } if errno.raw_os_error() == Some(libc::EBADF) => Ok(0),
        _ => Err(e),
    }
}
