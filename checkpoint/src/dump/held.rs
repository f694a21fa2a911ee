//! What a task holds beyond plain files, pipes and sockets, read at
//! checkpoint: file locks (fdinfo `lock:` lines), FIFOs (path and buffered
//! bytes), deleted-but-open regular files (their content); inotify
//! instances ([`inotify`](super::inotify)) and POSIX message queues
//! ([`mqueue`](super::mqueue)) are told apart here. What cannot be saved
//! is refused, naming the PID, the fd and why.

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use crate::error::{ChkptError, Result};
use crate::image::{
    DeletedImage, FdKind, FifoImage, FileLock, HeldLock, LockKind, MAX_DELETED_BYTES,
};

/// The locks of the `lock:` lines of an fd's fdinfo (`1: POSIX  ADVISORY
/// WRITE 1234 08:01:5678 0 EOF`). POSIX locks are the process's and show
/// on each of its fds of the file: `seen` keeps them once. FLOCK and
/// OFDLCK ones belong to this open file description, and so do leases
/// (`LEASE ACTIVE READ`); a lease being broken is refused.
pub fn locks(pid: i32, fd: i32, info: &str, seen: &mut Vec<String>) -> Result<Vec<HeldLock>> {
    let mut out = Vec::new();
    for l in info.lines().filter_map(|l| l.strip_prefix("lock:")) {
        let w: Vec<&str> = l.split_whitespace().collect();
        let bad = || ChkptError::Parse {
            what: format!("/proc/{pid}/fdinfo/{fd}"),
            detail: l.to_string(),
        };
        if w.get(1) == Some(&"->") {
            continue; // a waiter, not a holder
        }
        let (Some(kind), Some(access), Some(dev), Some(start), Some(end)) =
            (w.get(1), w.get(3), w.get(5), w.get(6), w.get(7))
        else {
            return Err(bad());
        };
        let kind = match *kind {
            "POSIX" => LockKind::Posix,
            "FLOCK" => LockKind::Flock,
            "OFDLCK" => LockKind::Ofd,
            "LEASE" if w.get(2) == Some(&"ACTIVE") => LockKind::Lease,
            "LEASE" => {
                return Err(ChkptError::unsupported(
                    pid,
                    format!("fd {fd}"),
                    "a lease being broken (another process opened the file) is not saved: try again once it is given up",
                ))
            }
            other => {
                return Err(ChkptError::unsupported(
                    pid,
                    format!("fd {fd}"),
                    format!("a lock of kind {other} is not saved by this version"),
                ))
            }
        };
        if kind == LockKind::Posix {
            let key = format!("{dev} {start} {end} {access}");
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
        }
        let lock = FileLock {
            kind,
            write: *access == "WRITE",
            start: start.parse().map_err(|_| bad())?,
            end: if *end == "EOF" {
                None
            } else {
                Some(end.parse().map_err(|_| bad())?)
            },
        };
        out.push(HeldLock { fd, lock });
    }
    Ok(out)
}

/// The kind of a FIFO, deleted file, inotify instance or message queue;
/// `None` for anything else. `frozen`: the tree is stopped, read what
/// they hold (otherwise only look for what would be refused).
pub fn classify(
    pid: i32,
    fd: i32,
    target: &str,
    info: &str,
    pos: u64,
    frozen: bool,
) -> Result<Option<FdKind>> {
    let refuse = |why: String| ChkptError::unsupported(pid, format!("fd {fd} ({target})"), why);
    let link = format!("/proc/{pid}/fd/{fd}");
    if target == "anon_inode:inotify" {
        return super::inotify::read(pid, fd, info, frozen, &refuse).map(Some);
    }
    if target == "anon_inode:[fanotify]" {
        return super::fanotify::read(pid, fd, info, frozen, &refuse).map(Some);
    }
    if target.starts_with("anon_inode:") || target.contains(":[") {
        return Ok(None);
    }
    let st = match nix::sys::statfs::statfs(link.as_str()) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    if st.filesystem_type().0 as i64 == super::mqueue::MQUEUE_MAGIC {
        return super::mqueue::read(pid, fd, target, frozen, &refuse).map(Some);
    }
    let meta = std::fs::metadata(&link).map_err(|e| ChkptError::io(&link, e))?;
    let deleted = target.strip_suffix(" (deleted)");
    if meta.file_type().is_fifo() {
        if deleted.is_some() {
            return Err(refuse(
                "a FIFO that was deleted cannot be opened again".into(),
            ));
        }
        return Ok(Some(FdKind::Fifo {
            file: 0,
            fifo: FifoImage {
                path: target.to_string(),
                ino: meta.ino(),
                mode: meta.mode() & 0o7777,
                data: if frozen {
                    super::fdkind::pipe_data(pid, fd)?
                } else {
                    Vec::new()
                },
            },
        }));
    }
    let Some(path) = deleted else {
        return Ok(None);
    };
    if !meta.file_type().is_file() || !path.starts_with('/') {
        return Err(refuse(
            "only deleted regular files are saved, not other deleted files".into(),
        ));
    }
    if meta.len() > MAX_DELETED_BYTES {
        return Err(refuse(format!(
            "the file was deleted and is {} bytes long: its content is saved up to {} MiB",
            meta.len(),
            MAX_DELETED_BYTES >> 20
        )));
    }
    let content = if frozen {
        std::fs::read(&link).map_err(|e| ChkptError::io(&link, e))?
    } else {
        Vec::new()
    };
    Ok(Some(FdKind::Deleted {
        file: 0,
        del: DeletedImage {
            path: path.to_string(),
            pos,
            mode: meta.mode() & 0o7777,
            size: content.len() as u64,
            content,
            ino: meta.ino(),
        },
    }))
}

/// Keep the buffered bytes of a FIFO and the content of a deleted file on
/// the first fd of each (by inode) only: restart fills each once.
pub fn dedupe(
    tree: &[(i32, i32)],
    fds: &mut std::collections::HashMap<i32, Vec<crate::image::FdImage>>,
) {
    let mut seen = Vec::new();
    for &(pid, _) in tree {
        for f in fds.get_mut(&pid).into_iter().flatten() {
            match &mut f.kind {
                FdKind::Fifo { fifo, .. } => {
                    if seen.contains(&(0, fifo.ino)) {
                        fifo.data.clear();
                    } else {
                        seen.push((0, fifo.ino));
                    }
                }
                FdKind::Deleted { del, .. } => {
                    if seen.contains(&(1, del.ino)) {
                        del.content.clear();
                    } else {
                        seen.push((1, del.ino));
                    }
                }
                _ => {}
            }
        }
    }
}
