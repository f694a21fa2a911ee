//! File locks taken again, by calls injected in the task once its fds are
//! in place: a POSIX lock by the task that held it, a flock, OFD lock or
//! lease (which belong to the open file description) once, by the first
//! task that has it. A conflicting lock taken since by another process
//! makes the restart fail (EAGAIN names the file and fd).
//!
//! The task still has restart's privileges at that point, and a lease
//! lets its holder hold up everyone else's opens of the file: a lease is
//! taken again only on a file the task's file-system uid owns (what the
//! kernel asks of a process without CAP_LEASE), or for a root job.

use crate::error::{ChkptError, Result};
use crate::image::{FileLock, LockKind};

use super::ctx::TaskCtx;

const F_OFD_SETLK: u64 = 37;

/// `struct flock` for x86_64: type, whence, start, len, pid.
fn flock(l: &FileLock) -> Vec<u8> {
    let mut b = vec![0u8; 32];
    let ty: i16 = if l.write {
        libc::F_WRLCK as i16
    } else {
        libc::F_RDLCK as i16
    };
    b[0..2].copy_from_slice(&ty.to_le_bytes());
    b[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_le_bytes());
    b[8..16].copy_from_slice(&l.start.to_le_bytes());
    let len = l.end.map_or(0, |e| e.saturating_sub(l.start) + 1);
    b[16..24].copy_from_slice(&len.to_le_bytes());
    b
}

/// Take the locks this task held through its fds.
pub fn take(c: &TaskCtx) -> Result<()> {
    for h in &c.task.locks {
        let l = &h.lock;
        let file = c
            .task
            .fds
            .iter()
            .find(|f| f.fd == h.fd)
            .and_then(|f| f.kind.file());
        let mine = match l.kind {
            LockKind::Posix => true,
            // the open file description's: taken once
            LockKind::Flock | LockKind::Ofd | LockKind::Lease => {
                file.is_some_and(|file| c.first_holder.get(&file) == Some(&c.task.pid))
            }
        };
        if !mine {
            continue;
        }
        {
            let fd = h.fd as u64;
            let r = match l.kind {
                LockKind::Flock => {
                    let op = if l.write {
                        libc::LOCK_EX
                    } else {
                        libc::LOCK_SH
                    } | libc::LOCK_NB;
                    c.inj
                        .call("flock", libc::SYS_flock, [fd, op as u64, 0, 0, 0, 0])
                }
                LockKind::Lease => {
                    may_lease(c, h.fd)?;
                    let ty = if l.write {
                        libc::F_WRLCK
                    } else {
                        libc::F_RDLCK
                    };
                    c.inj.call(
                        "fcntl(F_SETLEASE)",
                        libc::SYS_fcntl,
                        [fd, libc::F_SETLEASE as u64, ty as u64, 0, 0, 0],
                    )
                }
                LockKind::Posix | LockKind::Ofd => {
                    let cmd = if l.kind == LockKind::Posix {
                        libc::F_SETLK as u64
                    } else {
                        F_OFD_SETLK
                    };
                    let addr = c.put_bytes(&flock(l))?;
                    c.inj
                        .call("fcntl(lock)", libc::SYS_fcntl, [fd, cmd, addr, 0, 0, 0])
                }
            };
            r.map_err(|e| {
                ChkptError::Changed(format!(
                    "taking again a lock of process {} on fd {} ({e}): another process holds a conflicting one now",
                    c.task.pid, h.fd
                ))
            })?;
        }
    }
    Ok(())
}

/// May the task hold a lease on its fd `fd`: is its file the task's
/// file-system uid's (or the job root's)?
fn may_lease(c: &TaskCtx, fd: i32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let fsuid = c.task.uids[3];
    if fsuid == 0 {
        return Ok(());
    }
    let path = format!("/proc/{}/fd/{fd}", c.inj.tid);
    let owner = std::fs::metadata(&path)
        .map_err(|e| ChkptError::io(&path, e))?
        .uid();
    if owner != fsuid {
        return Err(ChkptError::Changed(format!(
            "process {} held a lease on fd {fd}, whose file belongs to uid {owner} now, not to the job's uid {fsuid}",
            c.task.pid
        )));
    }
    Ok(())
}
