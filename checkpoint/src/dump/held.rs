//! What a task holds beyond plain files, pipes and sockets, read at
//! checkpoint: file locks (fdinfo `lock:` lines), FIFOs (path and buffered
//! bytes), deleted-but-open regular files (their content), inotify
//! instances (each watch's path, found from its file handle) and POSIX
//! message queues (attributes and messages). What cannot be saved is
//! refused here, naming the PID, the fd and why.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use crate::error::{ChkptError, Result};
use crate::image::{
    DeletedImage, FdKind, FifoImage, FileLock, HeldLock, InotifyWatch, LockKind, MqMessage,
    MqueueImage, MAX_DELETED_BYTES, MAX_INOTIFY_WD, MAX_MQ_MSGS, MAX_MQ_MSGSIZE,
};

const MQUEUE_MAGIC: i64 = 0x1980_0202;

/// The locks of the `lock:` lines of an fd's fdinfo (`1: POSIX  ADVISORY
/// WRITE 1234 08:01:5678 0 EOF`). POSIX locks are the process's and show
/// on each of its fds of the file: `seen` keeps them once. FLOCK and
/// OFDLCK ones belong to this open file description. Leases are refused.
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
            other => {
                return Err(ChkptError::unsupported(
                    pid,
                    format!("fd {fd}"),
                    format!("a lease ({other}) is not saved by this version"),
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
        return inotify(pid, fd, info, frozen, &refuse).map(Some);
    }
    if target.starts_with("anon_inode:") || target.contains(":[") {
        return Ok(None);
    }
    let st = match nix::sys::statfs::statfs(link.as_str()) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    if st.filesystem_type().0 as i64 == MQUEUE_MAGIC {
        return mqueue(pid, fd, target, frozen, &refuse).map(Some);
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
                    super::files::pipe_data(pid, fd)?
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

/// An inotify instance: each watch's path comes from its file handle
/// (`open_by_handle_at`, which needs CAP_DAC_READ_SEARCH: root only).
fn inotify(
    pid: i32,
    fd: i32,
    info: &str,
    frozen: bool,
    refuse: &dyn Fn(String) -> ChkptError,
) -> Result<FdKind> {
    let mut watches = Vec::new();
    for l in info.lines().filter(|l| l.starts_with("inotify ")) {
        let get = |k: &str| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .ok_or_else(|| ChkptError::Parse {
                    what: format!("/proc/{pid}/fdinfo/{fd}"),
                    detail: l.to_string(),
                })
        };
        let hex = |k: &str| -> Result<u64> {
            u64::from_str_radix(get(k)?, 16).map_err(|_| ChkptError::Parse {
                what: format!("/proc/{pid}/fdinfo/{fd}"),
                detail: l.to_string(),
            })
        };
        let wd: i32 = get("wd:")?.parse().unwrap_or(-1);
        if !(1..=MAX_INOTIFY_WD).contains(&wd) {
            return Err(refuse(format!(
                "inotify watch descriptor {wd} is above {MAX_INOTIFY_WD}: not saved by this version"
            )));
        }
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(refuse(
                "inotify watches are found by file handle (open_by_handle_at): only root can checkpoint them".into(),
            ));
        }
        let path = handle_path(
            hex("sdev:")?,
            hex("fhandle-type:")? as i32,
            get("f_handle:")?,
        )
        .map_err(|e| {
            refuse(format!(
                "the path of inotify watch {wd} cannot be found: {e}"
            ))
        })?;
        watches.push(InotifyWatch {
            wd,
            mask: hex("mask:")? as u32,
            path,
        });
    }
    watches.sort_by_key(|w| w.wd);
    if frozen && queued(pid, fd)? > 0 {
        return Err(refuse(
            "inotify events are waiting to be read: they are not saved by this version".into(),
        ));
    }
    Ok(FdKind::Inotify { file: 0, watches })
}

/// Bytes waiting to be read on fd `fd` of `pid` (FIONREAD on a duplicate).
fn queued(pid: i32, fd: i32) -> Result<i32> {
    let dup = crate::uffd::pidfd_open(pid)
        .and_then(|p| crate::uffd::pidfd_getfd(&p, fd))
        .map_err(|err| ChkptError::Sys {
            op: "pidfd_getfd".into(),
            pid,
            err,
        })?;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(dup.as_raw_fd(), libc::FIONREAD, &mut n) };
    Ok(n)
}

/// The path of the file a handle names on the filesystem `sdev` (the
/// kernel's dev_t: major << 20 | minor).
fn handle_path(sdev: u64, htype: i32, hex: &str) -> std::io::Result<String> {
    let (maj, min) = (sdev >> 20, sdev & 0xfffff);
    let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
    // a mount of the whole filesystem (root "/") gives the real path
    let mnt = mi
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.get(2) == Some(&format!("{maj}:{min}").as_str()))
        .min_by_key(|w| w.get(3) != Some(&"/"))
        .and_then(|w| w.get(4).map(|s| s.replace("\\040", " ")))
        .ok_or_else(|| std::io::Error::other(format!("no mount of device {maj}:{min}")))?;
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    let dir = std::fs::File::open(&mnt)?;
    // struct file_handle: handle_bytes, handle_type, then the bytes
    let mut fh = Vec::with_capacity(8 + bytes.len());
    fh.extend_from_slice(&(bytes.len() as u32).to_ne_bytes());
    fh.extend_from_slice(&htype.to_ne_bytes());
    fh.extend_from_slice(&bytes);
    // SAFETY: open_by_handle_at reads the handle built above, returns an fd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            dir.as_raw_fd(),
            fh.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    let f = unsafe { OwnedFd::from_raw_fd(r as i32) };
    let p = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
    let p = p.to_string_lossy().into_owned();
    if p.ends_with(" (deleted)") || !p.starts_with('/') {
        return Err(std::io::Error::other(format!("it has no path ({p})")));
    }
    Ok(p)
}

/// A POSIX message queue: attributes, owner, and (frozen) its messages,
/// taken out through a new open of the queue and put back in the same
/// order. A queue that notifies someone (`mq_notify`) is refused.
fn mqueue(
    pid: i32,
    fd: i32,
    target: &str,
    frozen: bool,
    refuse: &dyn Fn(String) -> ChkptError,
) -> Result<FdKind> {
    let (name, unlinked) = match target.strip_suffix(" (deleted)") {
        Some(n) => (n, true),
        None => (target, false),
    };
    let name = name.trim_start_matches('/').to_string();
    let link = format!("/proc/{pid}/fd/{fd}");
    let q = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&link)
        .map_err(|e| {
            refuse(format!(
                "the message queue cannot be opened to read it: {e}"
            ))
        })?;
    let meta = q.metadata().map_err(|e| ChkptError::io(&link, e))?;
    let mut status = String::new();
    {
        use std::io::Read;
        (&q).read_to_string(&mut status).ok();
    }
    if procfs_field(&status, "NOTIFY_PID:").is_some_and(|p| p != "0") {
        return Err(refuse(
            "a message queue with a notification registered (mq_notify) is not saved".into(),
        ));
    }
    let mut attr: libc::mq_attr = unsafe_zeroed();
    // SAFETY: mq_getsetattr with no new attributes writes one mq_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mq_getsetattr,
            q.as_raw_fd(),
            std::ptr::null::<libc::mq_attr>(),
            &mut attr,
        )
    };
    if r < 0 {
        return Err(ChkptError::io(&link, std::io::Error::last_os_error()));
    }
    if attr.mq_curmsgs as usize > MAX_MQ_MSGS || attr.mq_msgsize as usize > MAX_MQ_MSGSIZE {
        return Err(refuse(
            "the message queue is larger than the kernel's limits".into(),
        ));
    }
    let messages = if frozen {
        take_and_put_back(&q, attr.mq_curmsgs, attr.mq_msgsize)
            .map_err(|e| ChkptError::io(&link, e))?
    } else {
        Vec::new()
    };
    Ok(FdKind::Mqueue {
        file: 0,
        mq: MqueueImage {
            name,
            unlinked,
            mode: meta.mode() & 0o777,
            uid: meta.uid(),
            gid: meta.gid(),
            maxmsg: attr.mq_maxmsg,
            msgsize: attr.mq_msgsize,
            messages,
        },
    })
}

fn procfs_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let mut it = text.split_whitespace();
    while let Some(w) = it.next() {
        if w == key {
            return it.next();
        }
    }
    None
}

fn unsafe_zeroed() -> libc::mq_attr {
    // SAFETY: mq_attr is plain integers: all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Receive every message (highest priority first), then send them back
/// in that order: the queue holds what it held, in the same order.
fn take_and_put_back(
    q: &std::fs::File,
    count: i64,
    msgsize: i64,
) -> std::io::Result<Vec<MqMessage>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; msgsize.max(1) as usize];
    let past = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    for _ in 0..count {
        let mut prio: u32 = 0;
        // SAFETY: the buffer holds msgsize bytes; the fd is non-blocking.
        let n = unsafe {
            libc::syscall(
                libc::SYS_mq_timedreceive,
                q.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut prio,
                &past,
            )
        };
        if n < 0 {
            break; // taken meanwhile by another process
        }
        out.push(MqMessage {
            prio,
            data: buf[..n as usize].to_vec(),
        });
    }
    for m in &out {
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
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(out)
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
