//! Pseudo-terminals of the tree: a master (`/dev/ptmx`) with its number,
//! the slave's settings, window size, lock and packet mode, read on a
//! duplicate of the job's fd (`pidfd_getfd`: opening /dev/ptmx again
//! would make a new terminal); and the slaves whose master is in the tree
//! (`/dev/pts/N`), which restart opens on the terminal it makes again
//! rather than giving the job its own stdio. Data waiting in either
//! direction is refused: it cannot be read without being taken.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::error::{ChkptError, Result};
use crate::image::{FdImage, FdKind, PtyImage};
use crate::procfs;
use crate::uffd;

const TCGETS2: libc::c_ulong = 0x802C_542A;
const TIOCGWINSZ: libc::c_ulong = 0x5413;
const TIOCGPKT: libc::c_ulong = 0x8004_5438;
const TIOCGPTLCK: libc::c_ulong = 0x8004_5439;
const TIOCGPTPEER: libc::c_ulong = 0x5441;
const FIONREAD: libc::c_ulong = 0x541B;
/// `struct termios2` on x86_64.
const TERMIOS2_LEN: usize = 44;

/// Is `target` (an fd's link) a pseudo-terminal master?
pub fn is_master(target: &str) -> bool {
    target == "/dev/ptmx" || target == "/dev/pts/ptmx"
}

/// The master at `fd` of `pid`; its settings read only when `frozen`.
pub fn master(pid: i32, fd: i32, frozen: bool) -> Result<FdKind> {
    let info = procfs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))?;
    let index = info
        .lines()
        .find_map(|l| l.strip_prefix("tty-index:"))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .ok_or_else(|| {
            ChkptError::unsupported(
                pid,
                format!("fd {fd} (/dev/ptmx)"),
                "its terminal number is not shown (kernel too old)",
            )
        })?;
    let mut pty = PtyImage {
        index,
        termios: Vec::new(),
        winsize: [0; 4],
        locked: false,
        packet: false,
    };
    if frozen {
        read_state(pid, fd, &mut pty)?;
    }
    Ok(FdKind::PtyMaster { file: 0, pty })
}

fn ioctl_int(fd: &OwnedFd, req: libc::c_ulong) -> std::io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int into v.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

fn read_state(pid: i32, fd: i32, pty: &mut PtyImage) -> Result<()> {
    let what = format!("fd {fd} (/dev/ptmx, /dev/pts/{})", pty.index);
    let sys = |op: &str| {
        let op = op.to_string();
        move |err| ChkptError::Sys { op, pid, err }
    };
    let dup = uffd::pidfd_open(pid)
        .and_then(|p| uffd::pidfd_getfd(&p, fd))
        .map_err(sys("pidfd_getfd of a pseudo-terminal"))?;
    let mut t = [0u8; TERMIOS2_LEN];
    // SAFETY: TCGETS2 on a master reads its slave's termios2 into t.
    if unsafe { libc::ioctl(dup.as_raw_fd(), TCGETS2, t.as_mut_ptr()) } < 0 {
        return Err(sys("TCGETS2")(std::io::Error::last_os_error()));
    }
    pty.termios = t.to_vec();
    let mut w = [0u16; 4];
    // SAFETY: TIOCGWINSZ writes a struct winsize (4 u16) into w.
    if unsafe { libc::ioctl(dup.as_raw_fd(), TIOCGWINSZ, w.as_mut_ptr()) } < 0 {
        return Err(sys("TIOCGWINSZ")(std::io::Error::last_os_error()));
    }
    pty.winsize = w;
    pty.locked = ioctl_int(&dup, TIOCGPTLCK).map_err(sys("TIOCGPTLCK"))? != 0;
    pty.packet = ioctl_int(&dup, TIOCGPKT).map_err(sys("TIOCGPKT"))? != 0;
    let waiting = |n: i32, side: &str| {
        Err(ChkptError::unsupported(
            pid,
            what.clone(),
            format!("{n} byte(s) wait to be read on its {side} side: they are not saved"),
        ))
    };
    let out = ioctl_int(&dup, FIONREAD).map_err(sys("FIONREAD"))?;
    if out > 0 {
        return waiting(out, "master");
    }
    if !pty.locked {
        let flags =
            (libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC) as libc::c_ulong;
        // SAFETY: TIOCGPTPEER returns a new fd on the slave, or -1.
        let s = unsafe { libc::ioctl(dup.as_raw_fd(), TIOCGPTPEER, flags) };
        if s >= 0 {
            // SAFETY: s is a new fd nothing else owns.
            let slave = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(s) };
            let inq = ioctl_int(&slave, FIONREAD).map_err(sys("FIONREAD"))?;
            if inq > 0 {
                return waiting(inq, "slave");
            }
        }
    }
    Ok(())
}

/// Slaves (`/dev/pts/N` on any fd, taken so far for a terminal leading
/// outside) whose master is in the tree become [`FdKind::PtySlave`].
pub fn pair_slaves(fds: &mut HashMap<i32, Vec<FdImage>>) {
    let masters: Vec<u32> = fds
        .values()
        .flatten()
        .filter_map(|f| match &f.kind {
            FdKind::PtyMaster { pty, .. } => Some(pty.index),
            _ => None,
        })
        .collect();
    for f in fds.values_mut().flatten() {
        let what = match &f.kind {
            FdKind::External { what, .. } | FdKind::InheritedStdio { what } => what,
            _ => continue,
        };
        let index = what
            .strip_prefix("/dev/pts/")
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(index) = index.filter(|i| masters.contains(i)) {
            f.kind = FdKind::PtySlave { file: 0, index };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaves_of_masters_in_the_tree_are_paired() {
        let pty = |index| PtyImage {
            index,
            termios: Vec::new(),
            winsize: [0; 4],
            locked: false,
            packet: false,
        };
        let fd = |fd, kind| FdImage { fd, flags: 2, kind };
        let mut fds = HashMap::new();
        fds.insert(
            1,
            vec![
                fd(
                    0,
                    FdKind::InheritedStdio {
                        what: "/dev/pts/3".into(),
                    },
                ),
                fd(
                    1,
                    FdKind::InheritedStdio {
                        what: "/dev/pts/9".into(),
                    },
                ),
                fd(
                    4,
                    FdKind::PtyMaster {
                        file: 0,
                        pty: pty(3),
                    },
                ),
                fd(
                    5,
                    FdKind::External {
                        file: 0,
                        what: "/dev/pts/3".into(),
                    },
                ),
            ],
        );
        pair_slaves(&mut fds);
        let v = &fds[&1];
        assert_eq!(v[0].kind, FdKind::PtySlave { file: 0, index: 3 });
        // another terminal stays the job's stdio
        assert!(matches!(v[1].kind, FdKind::InheritedStdio { .. }));
        assert_eq!(v[3].kind, FdKind::PtySlave { file: 0, index: 3 });
        assert!(is_master("/dev/ptmx") && !is_master("/dev/pts/3"));
    }
}
