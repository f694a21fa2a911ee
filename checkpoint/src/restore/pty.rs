//! Pseudo-terminals of the tree made again in the root task, as the job's
//! user: /dev/ptmx opened until the kernel hands out the recorded number
//! (numbers go lowest free first; the ones passed over are closed again),
//! the slave's settings, window size and packet mode set, the slaves
//! opened by name, and the lock put back once they are.

use std::collections::HashMap;

use crate::error::{ChkptError, Result};
use crate::image::{FdImage, FdKind, PtyImage, TaskImage};
use crate::ptrace::{self, Injector};

const TCSETS2: u64 = 0x402C_542B;
const TIOCSWINSZ: u64 = 0x5414;
const TIOCGPTN: u64 = 0x8004_5430;
const TIOCSPTLCK: u64 = 0x4004_5431;
const TIOCPKT: u64 = 0x5420;
const TERMIOS2_LEN: usize = 44;
/// Terminals opened at most while looking for the recorded number.
const MAX_TRIES: usize = 512;

/// The terminals made so far: number → (a kept fd of its master, locked).
pub struct Ptys<'a> {
    root: &'a Injector,
    scratch: u64,
    tasks: &'a [&'a TaskImage],
    made: HashMap<u32, (u64, bool)>,
}

impl<'a> Ptys<'a> {
    pub fn new(root: &'a Injector, scratch: u64, tasks: &'a [&'a TaskImage]) -> Self {
        Ptys {
            root,
            scratch,
            tasks,
            made: HashMap::new(),
        }
    }

    /// A new fd on the master of `pty` (the terminal made first if needed).
    pub fn master(&mut self, pty: &PtyImage) -> Result<u64> {
        let keep = self.ensure(pty)?;
        self.root.call(
            "fcntl(F_DUPFD_CLOEXEC)",
            libc::SYS_fcntl,
            [keep, libc::F_DUPFD_CLOEXEC as u64, 0, 0, 0, 0],
        )
    }

    /// The slave of terminal `index` opened as `f` was.
    pub fn slave(&mut self, f: &FdImage, index: u32) -> Result<u64> {
        let pty = self
            .tasks
            .iter()
            .flat_map(|t| &t.fds)
            .find_map(|g| match &g.kind {
                FdKind::PtyMaster { pty, .. } if pty.index == index => Some(pty.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                ChkptError::Inconsistent(format!("/dev/pts/{index} has no master in the image"))
            })?;
        self.ensure(&pty)?;
        let flags = f.flags
            & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC) as u32)
            | (libc::O_NOCTTY | libc::O_CLOEXEC) as u32;
        super::rootfile::open_in(
            self.root,
            self.scratch,
            &format!("/dev/pts/{index}"),
            flags,
            0,
        )
    }

    /// Lock again what was locked, close what was kept.
    pub fn finish(self) -> Result<()> {
        for &(fd, locked) in self.made.values() {
            if locked {
                self.int_ioctl(fd, TIOCSPTLCK, 1, "ioctl(TIOCSPTLCK)")?;
            }
            self.root
                .call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    fn ensure(&mut self, pty: &PtyImage) -> Result<u64> {
        if let Some(&(fd, _)) = self.made.get(&pty.index) {
            return Ok(fd);
        }
        if pty.termios.len() != TERMIOS2_LEN {
            return Err(ChkptError::Inconsistent(format!(
                "/dev/pts/{}: {} bytes of terminal settings",
                pty.index,
                pty.termios.len()
            )));
        }
        let fd = self.open_numbered(pty.index)?;
        self.made.insert(pty.index, (fd, pty.locked));
        // unlocked until its slaves are open (see finish)
        self.int_ioctl(fd, TIOCSPTLCK, 0, "ioctl(TIOCSPTLCK)")?;
        ptrace::write_mem(self.root.tid, self.scratch, &pty.termios)?;
        self.root.call(
            "ioctl(TCSETS2)",
            libc::SYS_ioctl,
            [fd, TCSETS2, self.scratch, 0, 0, 0],
        )?;
        let w: Vec<u8> = pty.winsize.iter().flat_map(|v| v.to_le_bytes()).collect();
        ptrace::write_mem(self.root.tid, self.scratch, &w)?;
        self.root.call(
            "ioctl(TIOCSWINSZ)",
            libc::SYS_ioctl,
            [fd, TIOCSWINSZ, self.scratch, 0, 0, 0],
        )?;
        self.int_ioctl(fd, TIOCPKT, pty.packet as i32, "ioctl(TIOCPKT)")?;
        Ok(fd)
    }

    /// /dev/ptmx opened until it is terminal `index`.
    fn open_numbered(&self, index: u32) -> Result<u64> {
        let mut passed = Vec::new();
        let r = (|| {
            for _ in 0..MAX_TRIES {
                let fd = super::rootfile::open_in(
                    self.root,
                    self.scratch,
                    "/dev/ptmx",
                    (libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) as u32,
                    0,
                )?;
                self.root.call(
                    "ioctl(TIOCGPTN)",
                    libc::SYS_ioctl,
                    [fd, TIOCGPTN, self.scratch, 0, 0, 0],
                )?;
                let b = ptrace::read_mem(self.root.tid, self.scratch, 4)?;
                let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if n == index {
                    return Ok(fd);
                }
                passed.push(fd);
                if n > index {
                    break;
                }
            }
            Err(ChkptError::Inconsistent(format!(
                "/dev/pts/{index} is in use: the job's terminal cannot get its number back"
            )))
        })();
        for fd in passed {
            self.root
                .call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        }
        r
    }

    fn int_ioctl(&self, fd: u64, req: u64, v: i32, name: &'static str) -> Result<()> {
        ptrace::write_mem(self.root.tid, self.scratch, &v.to_le_bytes())?;
        self.root
            .call(name, libc::SYS_ioctl, [fd, req, self.scratch, 0, 0, 0])
            .map(|_| ())
    }
}
