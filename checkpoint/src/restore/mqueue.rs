//! POSIX message queues at restart: a queue that still exists is opened
//! by name (as the job's user); one that is gone, or was removed while
//! open, is made again by the job's user with its attributes, mode and
//! messages (and removed again).

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::error::{ChkptError, Result};
use crate::image::{FdImage, MqueueImage};
use crate::ptrace::{self, Injector};

/// A queue that still exists is opened as it is (like a file); one
/// that is gone (or was removed while open) is made again as the
/// job's user with its messages (and removed again).
pub fn create(root: &Injector, scratch: u64, f: &FdImage, mq: &MqueueImage) -> Result<u64> {
    let mut b = mq.name.as_bytes().to_vec();
    b.push(0);
    let name = scratch;
    ptrace::write_mem(root.tid, name, &b)?;
    let acc = (f.flags & libc::O_ACCMODE as u32) as u64;
    let flags = acc | (f.flags & libc::O_NONBLOCK as u32) as u64;
    // struct mq_attr: flags, maxmsg, msgsize, curmsgs (+ reserved)
    let mut attr = [0u8; 64];
    attr[8..16].copy_from_slice(&mq.maxmsg.to_le_bytes());
    attr[16..24].copy_from_slice(&mq.msgsize.to_le_bytes());
    let attr_at = scratch + 512;
    ptrace::write_mem(root.tid, attr_at, &attr)?;
    let create = flags | (libc::O_CREAT | libc::O_EXCL) as u64;
    let made = root.call(
        "mq_open",
        libc::SYS_mq_open,
        [name, create, (mq.mode & 0o777) as u64, attr_at, 0, 0],
    );
    let fd = match made {
        Ok(fd) => fd,
        Err(ChkptError::Injected { errno, .. })
            if errno.raw_os_error() == Some(libc::EEXIST) && !mq.unlinked =>
        {
            return root.call("mq_open", libc::SYS_mq_open, [name, flags, 0, 0, 0, 0]);
        }
        Err(e) => return Err(e),
    };
    root.call(
        "fchmod",
        libc::SYS_fchmod,
        [fd, (mq.mode & 0o777) as u64, 0, 0, 0, 0],
    )?;
    fill_queue(&format!("/proc/{}/fd/{fd}", root.tid), mq)?;
    if mq.unlinked {
        ptrace::write_mem(root.tid, name, &b)?;
        root.call("mq_unlink", libc::SYS_mq_unlink, [name, 0, 0, 0, 0, 0])?;
    }
    Ok(fd)
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
