//! The checks, before anything starts, of what an image asks restart to
//! make on the job's behalf (locks, FIFOs, deleted files, inotify
//! watches, message queues, `--inherit-fd`): sane, and for an image a
//! user owns, no more than that user could have made.

use crate::error::{ChkptError, Result};
use crate::image::{
    FdKind, LockKind, MqueueImage, TaskImage, MAX_DELETED_BYTES, MAX_INOTIFY_WD, MAX_MQ_MSGS,
    MAX_MQ_MSGSIZE,
};

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
        if h.lock.kind == LockKind::Lease && (h.lock.start != 0 || h.lock.end.is_some()) {
            return Err(format!("fd {}: a lease on part of a file", h.fd));
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
            FdKind::Fanotify { .. } if owner != 0 => {
                // made with CAP_SYS_ADMIN: a user never had one to save
                return Err(format!("fd {fd}: a fanotify group in a user's image"));
            }
            FdKind::Fanotify { fa, .. } if fa.marks.iter().any(|m| !abs(&m.path)) => {
                return Err(format!("fd {fd}: a bad fanotify mark record"));
            }
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

/// Every pidfd names a task of the image (a process, or a thread of the
/// process that holds it): a forged one gets no pidfd of anything else.
pub fn check_pidfds(tasks: &[&TaskImage]) -> Result<()> {
    for t in tasks {
        for f in &t.fds {
            let FdKind::Pidfd { pid } = f.kind else {
                continue;
            };
            let known =
                tasks.iter().any(|o| o.pid == pid) || t.threads.iter().any(|th| th.tid == pid);
            if !known {
                return Err(ChkptError::Inconsistent(format!(
                    "task {} fd {}: a pidfd of {pid}, which is not one of the image's processes or its threads",
                    t.pid, f.fd
                )));
            }
        }
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
