//! POSIX message queues at checkpoint: name, owner, mode, attributes,
//! and (frozen) the messages, taken out through a new open of the queue
//! and put back in the same order.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use crate::error::{ChkptError, Result};
use crate::image::{FdKind, MqMessage, MqueueImage, MAX_MQ_MSGS, MAX_MQ_MSGSIZE};

/// `f_type` of the mqueue file system.
pub const MQUEUE_MAGIC: i64 = 0x1980_0202;

/// A POSIX message queue: attributes, owner, and (frozen) its messages,
/// taken out through a new open of the queue and put back in the same
/// order. A queue that notifies someone (`mq_notify`) is refused.
pub fn read(
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
