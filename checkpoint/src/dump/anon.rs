//! Files without a path (`anon_inode:`): eventfd, timerfd, signalfd,
//! epoll and pidfd, read from /proc/PID/fdinfo. What is registered in an epoll is
//! checked with kcmp(KCMP_EPOLL_TFD) to be the very file the task has at
//! that fd number: only then can restart register it again by number.

use crate::error::{ChkptError, Result};
use crate::image::{EpollItem, FdKind};
use crate::procfs;

/// The kind of an `anon_inode:` fd, `None` if this version does not save it.
pub fn classify(pid: i32, fd: i32, target: &str, fdinfo: &str) -> Result<Option<FdKind>> {
    let bad = |what: &str| ChkptError::Parse {
        what: format!("/proc/{pid}/fdinfo/{fd}"),
        detail: what.to_string(),
    };
    let hex = |k: &str| {
        procfs::status_field(fdinfo, k)
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .ok_or_else(|| bad(k))
    };
    let dec = |k: &str| {
        procfs::status_field(fdinfo, k)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| bad(k))
    };
    Ok(Some(match target {
        "anon_inode:[eventfd]" => FdKind::EventFd {
            file: 0,
            count: hex("eventfd-count")?,
            semaphore: dec("eventfd-semaphore").unwrap_or(0) != 0,
        },
        "anon_inode:[timerfd]" => FdKind::TimerFd {
            file: 0,
            clock: dec("clockid")? as i32,
            ticks: dec("ticks")?,
            value_ns: timespec(fdinfo, "it_value").ok_or_else(|| bad("it_value"))?,
            interval_ns: timespec(fdinfo, "it_interval").ok_or_else(|| bad("it_interval"))?,
        },
        "anon_inode:[signalfd]" => FdKind::SignalFd {
            file: 0,
            mask: hex("sigmask")?,
        },
        "anon_inode:[eventpoll]" => FdKind::Epoll {
            file: 0,
            items: epoll_items(pid, fd, fdinfo)?,
        },
        "anon_inode:[pidfd]" => {
            let target = procfs::status_field(fdinfo, "Pid")
                .and_then(|v| v.trim().parse::<i32>().ok())
                .ok_or_else(|| bad("Pid"))?;
            if target <= 0 {
                return Err(ChkptError::unsupported(
                    pid,
                    format!("fd {fd} ({target})"),
                    "a pidfd of a process that has exited (or of another PID namespace) is not saved by this version",
                ));
            }
            FdKind::Pidfd { pid: target }
        }
        _ => return Ok(None),
    }))
}

/// `key: (sec, nsec)` of a timerfd's fdinfo, in nanoseconds.
fn timespec(fdinfo: &str, key: &str) -> Option<u64> {
    let v = procfs::status_field(fdinfo, key)?;
    let v = v.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (s, ns) = v.split_once(',')?;
    Some(s.trim().parse::<u64>().ok()? * 1_000_000_000 + ns.trim().parse::<u64>().ok()?)
}

/// `tfd: N events: HEX data: HEX …` lines of an epoll's fdinfo.
fn epoll_items(pid: i32, epfd: i32, fdinfo: &str) -> Result<Vec<EpollItem>> {
    let mut out = Vec::new();
    for l in fdinfo.lines().filter(|l| l.starts_with("tfd:")) {
        let mut it = l.split_whitespace();
        let mut get = |k: &str| {
            while let Some(w) = it.next() {
                if w == k {
                    return it.next();
                }
            }
            None
        };
        let item = (|| {
            let tfd = get("tfd:")?.parse::<i32>().ok()?;
            let events = u32::from_str_radix(get("events:")?, 16).ok()?;
            let data = u64::from_str_radix(get("data:")?, 16).ok()?;
            Some(EpollItem { tfd, events, data })
        })()
        .ok_or_else(|| ChkptError::Parse {
            what: format!("/proc/{pid}/fdinfo/{epfd}"),
            detail: l.to_string(),
        })?;
        if !same_target(pid, epfd, item.tfd) {
            return Err(ChkptError::unsupported(
                pid,
                format!("fd {epfd} (epoll)"),
                format!(
                    "it watches a file that fd {} no longer holds (closed or replaced since)",
                    item.tfd
                ),
            ));
        }
        out.push(item);
    }
    Ok(out)
}

/// Is the file epoll `epfd` of `pid` registered as `tfd` still fd `tfd`?
fn same_target(pid: i32, epfd: i32, tfd: i32) -> bool {
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = Slot {
        efd: epfd as u32,
        tfd: tfd as u32,
        toff: 0,
    };
    // SAFETY: kcmp compares kernel objects; it only reads `slot`.
    unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            7, /* KCMP_EPOLL_TFD */
            tfd as u64,
            &slot as *const Slot as u64,
        ) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timerfd_fdinfo() {
        let t = "pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1\nclockid: 1\nticks: 3\nsettime flags: 00\nit_value: (0, 399828512)\nit_interval: (1, 5)\n";
        match classify(1, 3, "anon_inode:[timerfd]", t).unwrap() {
            Some(FdKind::TimerFd {
                clock,
                ticks,
                value_ns,
                interval_ns,
                ..
            }) => {
                assert_eq!((clock, ticks), (1, 3));
                assert_eq!((value_ns, interval_ns), (399_828_512, 1_000_000_005));
            }
            k => panic!("{k:?}"),
        }
        let e = "pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1\neventfd-count:                5\neventfd-id: 3\neventfd-semaphore: 1\n";
        assert_eq!(
            classify(1, 3, "anon_inode:[eventfd]", e).unwrap(),
            Some(FdKind::EventFd {
                file: 0,
                count: 5,
                semaphore: true
            })
        );
        assert_eq!(classify(1, 3, "anon_inode:[io_uring]", e).unwrap(), None);
    }
}
