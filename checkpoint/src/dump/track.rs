//! krg's dirty-page tracker in a process: a userfaultfd with asynchronous
//! write protection (the kernel resolves write faults itself and only
//! clears a bit, which `PAGEMAP_SCAN` reads back), created inside the
//! process by an injected `userfaultfd()` and left there, close-on-exec,
//! at a high fd number so that it lives as long as the process does.
//!
//! Created with UFFD_USER_MODE_ONLY, the flag unprivileged users may use:
//! the process gains nothing it could not have made itself. Its feature
//! word is a signature ([`uffd::TRACKER_FEATURES`]) by which a later
//! checkpoint finds it; whether it is *this* process's tracker (a child
//! inherits its parent's over fork) is told by its inode, which the
//! previous SN recorded.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::error::{ChkptError, Result};
use crate::image;
use crate::procfs;
use crate::ptrace::{self, Injector};
use crate::uffd;

/// A tracker of ours in a process, and our own descriptor of it.
pub struct Tracker {
    /// Its fd number in the process.
    pub fd: i32,
    pub ino: u64,
    uffd: OwnedFd,
}

impl Tracker {
    pub fn raw(&self) -> i32 {
        self.uffd.as_raw_fd()
    }

    pub fn record(&self) -> image::Tracker {
        image::Tracker {
            fd: self.fd,
            ino: self.ino,
        }
    }
}

/// fds of `pid` that are userfaultfds carrying krg's signature: (fd, inode).
pub fn ours(pid: i32) -> Vec<(i32, u64)> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let link = std::fs::read_link(e.path()).unwrap_or_default();
        if link.to_str() != Some("anon_inode:[userfaultfd]") {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let sig = uffd::fdinfo_features(&info)
            .is_some_and(|f| f & uffd::TRACKER_FEATURES == uffd::TRACKER_FEATURES);
        let ino = procfs::status_field(&info, "ino").and_then(|i| i.parse().ok());
        if let (true, Some(ino)) = (sig, ino) {
            out.push((fd, ino));
        }
    }
    out.sort_unstable();
    out
}

/// Take the tracker at `fd` of `pid` (checked to be the inode `ino`).
pub fn adopt(pid: i32, fd: i32, ino: u64) -> Result<Tracker> {
    let pidfd = uffd::pidfd_open(pid).map_err(|e| ChkptError::Sys {
        op: "pidfd_open".into(),
        pid,
        err: e,
    })?;
    let uffd = uffd::pidfd_getfd(&pidfd, fd).map_err(|e| ChkptError::Sys {
        op: format!("pidfd_getfd of fd {fd}"),
        pid,
        err: e,
    })?;
    let st = nix::sys::stat::fstat(&uffd).map_err(|e| ChkptError::Sys {
        op: format!("fstat of fd {fd}"),
        pid,
        err: e.into(),
    })?;
    if st.st_ino != ino {
        return Err(ChkptError::Changed(format!(
            "process {pid}'s fd {fd} changed while being checkpointed"
        )));
    }
    Ok(Tracker { fd, ino, uffd })
}

/// Where to put a new tracker: just under RLIMIT_NOFILE's soft limit, at
/// most fd 1023 (a huge limit must not make the fd table huge).
fn target_fd(pid: i32) -> u64 {
    let soft = procfs::read_to_string(format!("/proc/{pid}/limits"))
        .map(|t| procfs::parse_limits(&t))
        .ok()
        .and_then(|l| l.get(libc::RLIMIT_NOFILE as usize).map(|r| r.cur))
        .unwrap_or(1024);
    soft.clamp(4, 1024) - 1
}

/// Create a tracker in `pid` (stopping its main thread for a few injected
/// calls, the rest of the process runs on), closing `stale` fds of ours
/// first (a tracker inherited from a parent, or of a chain now gone).
/// Negotiates its features through our own descriptor.
pub fn create(pid: i32, stale: &[i32]) -> Result<Tracker> {
    let maps = procfs::parse_maps(&procfs::read_to_string(format!("/proc/{pid}/maps"))?)?;
    let at = crate::ptrace::find_syscall_insn(pid, &maps)?;
    ptrace::seize_and_interrupt(pid)?;
    let made = (|| -> Result<i32> {
        let inj = Injector::new(pid, at)?;
        let r = (|| -> Result<i32> {
            for &fd in stale {
                inj.raw(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0])?;
            }
            let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | uffd::UFFD_USER_MODE_ONLY;
            let fd = inj.call("userfaultfd", libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])?;
            let high = inj.raw(
                libc::SYS_fcntl,
                [fd, libc::F_DUPFD_CLOEXEC as u64, target_fd(pid), 0, 0, 0],
            )?;
            if high >= 0 {
                inj.raw(libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
                Ok(high as i32)
            } else {
                Ok(fd as i32)
            }
        })();
        inj.restore()?;
        r
    })();
    let detached = ptrace::detach(pid);
    let fd = made?;
    detached?;
    let pidfd = uffd::pidfd_open(pid).map_err(|e| ChkptError::Sys {
        op: "pidfd_open".into(),
        pid,
        err: e,
    })?;
    let uffd = uffd::pidfd_getfd(&pidfd, fd).map_err(|e| ChkptError::Sys {
        op: format!("pidfd_getfd of the tracker (fd {fd})"),
        pid,
        err: e,
    })?;
    uffd::api(uffd.as_raw_fd(), uffd::TRACKER_FEATURES).map_err(|e| ChkptError::Sys {
        op: "UFFDIO_API (asynchronous write protection)".into(),
        pid,
        err: e,
    })?;
    let st = nix::sys::stat::fstat(&uffd).map_err(|e| ChkptError::Sys {
        op: "fstat of the tracker".into(),
        pid,
        err: e.into(),
    })?;
    Ok(Tracker {
        fd,
        ino: st.st_ino,
        uffd,
    })
}
