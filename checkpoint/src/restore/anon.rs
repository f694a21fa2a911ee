//! Making again, inside the root task before any fork, the files without a
//! path that the tree held: eventfd, timerfd, signalfd, epoll (whose
//! registrations are made later, in the task that held it, once its fds
//! are in place: they name that task's fd numbers).

use crate::error::Result;
use crate::image::{EpollItem, FdKind};
use crate::ptrace::{self, Injector};

use super::ctx::TaskCtx;

/// TFD_IOC_SET_TICKS = _IOW('T', 0, u64): expirations not read yet.
const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;

/// Create the object of `kind` in `root`; returns its fd there.
pub fn create(root: &Injector, scratch: u64, kind: &FdKind) -> Result<Option<u64>> {
    let fd = match kind {
        FdKind::EventFd {
            count, semaphore, ..
        } => {
            let flags = if *semaphore { libc::EFD_SEMAPHORE } else { 0 };
            // eventfd2 takes an unsigned int: a larger count is written after
            let init = u32::try_from(*count).unwrap_or(0);
            let fd = root.call(
                "eventfd2",
                libc::SYS_eventfd2,
                [init as u64, flags as u64, 0, 0, 0, 0],
            )?;
            if u64::from(init) != *count {
                ptrace::write_mem(root.tid, scratch, &count.to_le_bytes())?;
                root.call("write(eventfd)", libc::SYS_write, [fd, scratch, 8, 0, 0, 0])?;
            }
            fd
        }
        FdKind::TimerFd {
            clock,
            ticks,
            value_ns,
            interval_ns,
            ..
        } => {
            let fd = root.call(
                "timerfd_create",
                libc::SYS_timerfd_create,
                [*clock as u64, 0, 0, 0, 0, 0],
            )?;
            // A periodic timer whose expirations were not read yet is
            // stopped by the kernel until they are, and its fdinfo then
            // shows it_value 0 — which would disarm it here. It is due:
            // make it expire at once, then every interval as before.
            let value_ns = if *value_ns == 0 && *interval_ns > 0 {
                1
            } else {
                *value_ns
            };
            let mut b = Vec::new();
            for v in [*interval_ns, value_ns] {
                b.extend_from_slice(&(v / 1_000_000_000).to_le_bytes());
                b.extend_from_slice(&(v % 1_000_000_000).to_le_bytes());
            }
            ptrace::write_mem(root.tid, scratch, &b)?;
            root.call(
                "timerfd_settime",
                libc::SYS_timerfd_settime,
                [fd, 0, scratch, 0, 0, 0],
            )?;
            if *ticks > 0 {
                ptrace::write_mem(root.tid, scratch, &ticks.to_le_bytes())?;
                root.call(
                    "ioctl(TFD_IOC_SET_TICKS)",
                    libc::SYS_ioctl,
                    [fd, TFD_IOC_SET_TICKS, scratch, 0, 0, 0],
                )?;
            }
            fd
        }
        FdKind::SignalFd { mask, .. } => {
            ptrace::write_mem(root.tid, scratch, &mask.to_le_bytes())?;
            root.call(
                "signalfd4",
                libc::SYS_signalfd4,
                [u64::MAX, scratch, 8, 0, 0, 0],
            )?
        }
        FdKind::Epoll { .. } => root.call("epoll_create1", libc::SYS_epoll_create1, [0; 6])?,
        _ => return Ok(None),
    };
    Ok(Some(fd))
}

/// Register again what epoll `epfd` (an fd of this task) watched.
pub fn register(c: &TaskCtx, epfd: i32, items: &[EpollItem]) -> Result<()> {
    for it in items {
        let mut b = Vec::new();
        b.extend_from_slice(&it.events.to_le_bytes());
        b.extend_from_slice(&it.data.to_le_bytes()); // struct epoll_event is packed
        let addr = c.put_bytes(&b)?;
        c.inj.call(
            "epoll_ctl",
            libc::SYS_epoll_ctl,
            [
                epfd as u64,
                libc::EPOLL_CTL_ADD as u64,
                it.tfd as u64,
                addr,
                0,
                0,
            ],
        )?;
    }
    Ok(())
}
