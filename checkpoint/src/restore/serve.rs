//! The page server of `restart --lazy`: a process forked from `restart`
//! just before the tasks are let go, which outlives it. It holds every
//! restored address space's userfaultfd and, on one thread (so that a page
//! is never put back after the process dropped it): serves each missing
//! page a thread touches with the 64 KiB block around it, follows forks,
//! moves, drops and unmaps, and in between copies the rest in address order.
//! Each block is checked against its CRC as it is loaded; all were checked
//! before the tasks were created, so a mismatch here means a file changed
//! since: the tree is killed (it cannot go on with wrong memory). When an
//! address space has all its pages, its userfaultfd is closed and the
//! kernel takes the mappings back; when none is left, the server exits.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use crate::error::{ChkptError, Result};
use crate::image::{CRC_BLOCK, PAGE};
use crate::uffd::{self, Msg};

use super::lazy::Pending;
use super::pages::{check_at, Check, DataFile, Piece};

/// One address space being filled.
pub struct Space {
    pub uffd: OwnedFd,
    pub pending: Pending,
}

/// Bytes copied at a time in the background.
const PREFETCH: u64 = 256 << 10;

/// What loading a piece came to.
enum Loaded {
    Done,
    /// The address space changes (an event is waiting): read events
    /// first; this part of the piece is still to come.
    Again(Piece),
    /// The address space is gone (its process exited).
    Gone,
}

pub struct Server<'a> {
    pub spaces: Vec<Space>,
    pub files: &'a [DataFile],
    pub checks: &'a [Check],
    /// The restored tasks, killed if page data turns out wrong.
    pub pids: Vec<i32>,
    /// Page data still arriving (post-copy): asked for before it is read.
    pub fetch: Option<&'a super::fetch::Fetch>,
}

impl Server<'_> {
    /// Serve until every page is in.
    pub fn run(mut self) -> Result<()> {
        let mut buf = vec![0u8; PREFETCH as usize + 2 * CRC_BLOCK as usize];
        let mut not_in_yet = false;
        while !self.spaces.is_empty() {
            let busy = self.spaces.iter().any(|s| !s.pending.is_empty());
            // (post-copy: while the next data is not in, look again soon)
            self.wait(match (busy, not_in_yet) {
                (true, false) => 0,
                (true, true) => 1,
                (false, _) => 100,
            });
            let mut i = 0;
            while i < self.spaces.len() {
                let msgs = uffd::read_msgs(self.spaces[i].uffd.as_raw_fd()).unwrap_or_default();
                for m in msgs {
                    self.handle(i, m, &mut buf)?;
                }
                i += 1;
            }
            not_in_yet = self.prefetch(&mut buf)?;
            self.spaces.retain(|s| !s.pending.is_empty());
        }
        Ok(())
    }

    fn wait(&self, ms: i32) {
        let mut fds: Vec<libc::pollfd> = self
            .spaces
            .iter()
            .map(|s| libc::pollfd {
                fd: s.uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of pollfd for the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, ms) };
    }

    fn handle(&mut self, i: usize, m: Msg, buf: &mut [u8]) -> Result<()> {
        match m {
            Msg::Fault { addr } => self.fault(i, addr & !(PAGE - 1), buf)?,
            Msg::Fork { ufd } => {
                // SAFETY: the kernel installed this fd in our table for us.
                let uffd = unsafe { OwnedFd::from_raw_fd(ufd) };
                let pending = self.spaces[i].pending.clone();
                self.spaces.push(Space { uffd, pending });
            }
            Msg::Remap { from, to, len } => self.spaces[i].pending.moved(from, to, len),
            Msg::Gone { start, end } => {
                self.spaces[i].pending.take(start, end);
            }
            Msg::Other(_) => {}
        }
        Ok(())
    }

    /// A thread waits on `addr`: bring in its block (or a zero page if
    /// nothing of it was saved), then wake it.
    fn fault(&mut self, i: usize, addr: u64, buf: &mut [u8]) -> Result<()> {
        let b = addr & !(CRC_BLOCK - 1);
        let pieces = self.spaces[i].pending.take(b, b + CRC_BLOCK);
        self.ensure(&pieces)?;
        let mut covered = false;
        for (n, p) in pieces.iter().enumerate() {
            covered |= p.addr <= addr && addr < p.addr + p.len;
            match self.load(i, p, buf)? {
                Loaded::Done => {}
                Loaded::Again(rest) => {
                    // put back what was not loaded; the fault comes again
                    self.spaces[i].pending.put(rest);
                    for q in &pieces[n + 1..] {
                        self.spaces[i].pending.put(*q);
                    }
                    return Ok(());
                }
                Loaded::Gone => {
                    self.spaces[i].pending = Pending::default();
                    return Ok(());
                }
            }
        }
        let fd = self.spaces[i].uffd.as_raw_fd();
        // a page nothing was saved of reads as zeros; if it is there by now
        // (or was just copied), the thread only needs waking
        if covered || uffd::zeropage(fd, addr, PAGE).is_err() {
            let _ = uffd::wake(fd, addr, PAGE);
        }
        Ok(())
    }

    /// Load the next pending piece, if its data is there; whether it had
    /// to be left for later (post-copy: not in yet).
    fn prefetch(&mut self, buf: &mut [u8]) -> Result<bool> {
        let Some(i) = self.spaces.iter().position(|s| !s.pending.is_empty()) else {
            return Ok(false);
        };
        let Some(p) = self.spaces[i].pending.next(PREFETCH) else {
            return Ok(false);
        };
        if let Some(fetch) = self.fetch {
            // take what krgd's background pulls brought; faults pull the rest
            let ready = fetch
                .ready(self.files, self.checks, &[(p.file, p.off, p.len)])
                .inspect_err(|_| self.kill_tree())?;
            if !ready {
                self.spaces[i].pending.put(p);
                return Ok(true);
            }
        }
        match self.load(i, &p, buf)? {
            Loaded::Done => {}
            Loaded::Again(rest) => self.spaces[i].pending.put(rest),
            Loaded::Gone => self.spaces[i].pending = Pending::default(),
        }
        Ok(false)
    }

    /// Post-copy: wait until the data of `pieces` is here (krgd pulls it
    /// from the origin). If it cannot be had, the memory cannot be
    /// completed: the tree cannot go on.
    fn ensure(&self, pieces: &[Piece]) -> Result<()> {
        let Some(fetch) = self.fetch else {
            return Ok(());
        };
        let ranges: Vec<(usize, u64, u64)> =
            pieces.iter().map(|p| (p.file, p.off, p.len)).collect();
        fetch
            .need(self.files, self.checks, &ranges)
            .inspect_err(|_| self.kill_tree())
    }

    /// Read a piece's data, check it, copy it into the address space.
    fn load(&self, i: usize, p: &Piece, buf: &mut [u8]) -> Result<Loaded> {
        let data = &mut buf[..p.len as usize];
        self.read_checked(p, data)?;
        let fd = self.spaces[i].uffd.as_raw_fd();
        let mut done = 0u64;
        while done < p.len {
            let r = uffd::copy(
                fd,
                p.addr + done,
                data[done as usize..].as_ptr(),
                p.len - done,
            );
            match r {
                Ok(n) if n > 0 => done += n,
                Ok(_) => done += PAGE,
                Err(e) => match e.raw_os_error() {
                    // a page already there (the process forked or wrote it
                    // through another way): skip it
                    Some(libc::EEXIST) => done += PAGE,
                    Some(libc::EAGAIN) => {
                        return Ok(Loaded::Again(Piece {
                            addr: p.addr + done,
                            len: p.len - done,
                            file: p.file,
                            off: p.off + done,
                        }))
                    }
                    Some(libc::ESRCH) | Some(libc::ENOENT) | Some(libc::EFAULT) => {
                        return Ok(Loaded::Gone)
                    }
                    _ => {
                        return Err(ChkptError::Sys {
                            op: format!("UFFDIO_COPY at {:#x}", p.addr + done),
                            pid: self.pids.first().copied().unwrap_or(0),
                            err: e,
                        })
                    }
                },
            }
        }
        Ok(Loaded::Done)
    }

    /// `p`'s data into `out`, every block it touches checked against its CRC.
    fn read_checked(&self, p: &Piece, out: &mut [u8]) -> Result<()> {
        let f = &self.files[p.file];
        let mut block = vec![0u8; CRC_BLOCK as usize];
        let mut at = 0u64;
        while at < p.len {
            let off = p.off + at;
            let Some(c) = check_at(self.checks, p.file, off) else {
                // a version 1 image: no CRC to check
                f.file
                    .read_exact_at(&mut out[at as usize..], off)
                    .map_err(|e| ChkptError::io(&f.path, e))?;
                return Ok(());
            };
            let b = &mut block[..c.len as usize];
            f.file
                .read_exact_at(b, c.off)
                .map_err(|e| ChkptError::io(&f.path, e))?;
            if crc32fast::hash(b) != c.crc {
                self.kill_tree();
                return Err(ChkptError::bad_image(
                    &f.path,
                    format!(
                        "page data at offset {} changed after restart began (CRC mismatch): the restored processes {:?} were killed",
                        c.off, self.pids
                    ),
                ));
            }
            let from = (off - c.off) as usize;
            let n = ((c.off + c.len - off).min(p.len - at)) as usize;
            out[at as usize..at as usize + n].copy_from_slice(&b[from..from + n]);
            at += n as u64;
        }
        Ok(())
    }

    /// The restored tasks and every descendant they have now.
    fn kill_tree(&self) {
        let mut all = self.pids.clone();
        let mut k = 0;
        while k < all.len() {
            let p = all[k];
            let kids =
                std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
            all.extend(
                kids.split_whitespace()
                    .filter_map(|s| s.parse::<i32>().ok()),
            );
            k += 1;
        }
        for p in all {
            // SAFETY: killing the processes this restart created.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}
