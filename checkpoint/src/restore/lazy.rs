//! `restart --lazy`: which pages are left out of a task at restore, and
//! the userfaultfd through which they come in on first touch.
//!
//! The pages of private anonymous mappings (heap, stacks, anonymous
//! `mmap`) are not read at restore: the mappings are created empty and
//! registered with a userfaultfd created inside the task by an injected
//! `userfaultfd()` (the task still has root's rights then: faults from
//! kernel code — a `read()` into a lazy page — are served too), taken into
//! restart with `pidfd_getfd` and closed in the task: only the page server
//! ([`serve`](super::serve)) holds it. Everything else is read as usual,
//! and so are the pages that system calls injected later touch (the rseq
//! areas: registering one writes it).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::error::{ChkptError, Result};
use crate::image::{TaskImage, Vma, VmaKind, PAGE};
use crate::uffd;

use super::ctx::TaskCtx;
use super::pages::Piece;

/// Events the server must see: a fork (the child's own userfaultfd), a
/// move (mremap), pages dropped (madvise) or unmapped — each changes
/// which pages are still to come, and where.
pub const FEATURES: u64 = uffd::FEATURE_EVENT_FORK
    | uffd::FEATURE_EVENT_REMAP
    | uffd::FEATURE_EVENT_REMOVE
    | uffd::FEATURE_EVENT_UNMAP;

/// Can this mapping be filled lazily (userfaultfd MISSING mode)?
pub fn lazy_kind(v: &Vma) -> bool {
    !v.shared && matches!(v.kind, VmaKind::Anon | VmaKind::Heap | VmaKind::Stack)
}

/// Split a task's pieces into those read at restore and those left to
/// the server: the pieces of lazy mappings, but the pages of rseq areas.
pub fn split(t: &TaskImage, vmas: &[Vma], pieces: &[Piece]) -> (Vec<Piece>, Vec<Piece>) {
    let eager_pages: Vec<u64> = t
        .threads
        .iter()
        .filter(|th| th.rseq.addr != 0)
        .flat_map(|th| {
            let a = th.rseq.addr & !(PAGE - 1);
            let b = (th.rseq.addr + th.rseq.len as u64 + PAGE - 1) & !(PAGE - 1);
            (a..b).step_by(PAGE as usize)
        })
        .collect();
    let lazy_vma = |a: u64| {
        vmas.iter()
            .any(|v| v.start <= a && a < v.end && lazy_kind(v))
    };
    let (mut eager, mut lazy) = (Vec::new(), Vec::new());
    for p in pieces {
        if !lazy_vma(p.addr) {
            eager.push(*p);
            continue;
        }
        // cut the piece around eager pages
        let mut at = p.addr;
        let end = p.addr + p.len;
        let mut cuts: Vec<u64> = eager_pages
            .iter()
            .copied()
            .filter(|&e| e >= p.addr && e < end)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        for e in cuts {
            if e > at {
                lazy.push(sub(p, at, e));
            }
            eager.push(sub(p, e, e + PAGE));
            at = e + PAGE;
        }
        if at < end {
            lazy.push(sub(p, at, end));
        }
    }
    (eager, lazy)
}

/// Cut `pieces` into those inside `ranges` (in any order, may overlap)
/// and the rest.
pub fn divide(pieces: &[Piece], ranges: &[(u64, u64)]) -> (Vec<Piece>, Vec<Piece>) {
    let mut rs = ranges.to_vec();
    rs.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in rs {
        match merged.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let (mut inside, mut rest) = (Vec::new(), Vec::new());
    for p in pieces {
        let end = p.addr + p.len;
        let mut at = p.addr;
        for &(s, e) in merged.iter().filter(|&&(s, e)| s < end && e > p.addr) {
            let (s, e) = (s.max(p.addr), e.min(end));
            if s > at {
                rest.push(sub(p, at, s));
            }
            inside.push(sub(p, s, e));
            at = e;
        }
        if at < end {
            rest.push(sub(p, at, end));
        }
    }
    (inside, rest)
}

fn sub(p: &Piece, a: u64, b: u64) -> Piece {
    Piece {
        addr: a,
        len: b - a,
        file: p.file,
        off: p.off + (a - p.addr),
    }
}

/// Create the task's userfaultfd, take it, close it in the task, and
/// register every lazy mapping that has pages to come.
pub fn register(c: &TaskCtx, lazy: &[Piece]) -> Result<OwnedFd> {
    take_uffd(c, FEATURES, lazy)
}

/// The task's userfaultfd with `features`, made by an injected
/// `userfaultfd()` (the task still has root's rights), taken into restart
/// with `pidfd_getfd` and closed in the task; every mapping of the lazy
/// kind that has some of `pieces` registered with it (MISSING mode).
pub fn take_uffd(c: &TaskCtx, features: u64, pieces: &[Piece]) -> Result<OwnedFd> {
    let pid = c.inj.tid;
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let fd = c
        .inj
        .call("userfaultfd", libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])?;
    let sys = |op: &str| {
        let op = op.to_string();
        move |err| ChkptError::Sys { op, pid, err }
    };
    let taken = uffd::pidfd_open(pid)
        .and_then(|p| uffd::pidfd_getfd(&p, fd as i32))
        .map_err(sys("pidfd_getfd of the task's userfaultfd"));
    c.inj.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    let ufd = taken?;
    uffd::api(ufd.as_raw_fd(), features).map_err(sys("UFFDIO_API"))?;
    for v in c.mm.vmas.iter().filter(|v| lazy_kind(v)) {
        if pieces
            .iter()
            .any(|p| p.addr < v.end && p.addr + p.len > v.start)
        {
            uffd::register(
                ufd.as_raw_fd(),
                v.start,
                v.end - v.start,
                uffd::REGISTER_MODE_MISSING,
            )
            .map_err(sys("UFFDIO_REGISTER"))?;
        }
    }
    Ok(ufd)
}

/// Pages still to come of one address space: runs of pieces by address.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    runs: BTreeMap<u64, Piece>,
}

impl Pending {
    pub fn new(pieces: &[Piece]) -> Self {
        Pending {
            runs: pieces.iter().map(|p| (p.addr, *p)).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Take (remove and return) what is pending in `[a, b)`.
    pub fn take(&mut self, a: u64, b: u64) -> Vec<Piece> {
        let first = self.runs.range(..a).next_back().map_or(a, |(&s, _)| s);
        let keys: Vec<u64> = self.runs.range(first..b).map(|(&s, _)| s).collect();
        let mut out = Vec::new();
        for k in keys {
            let Some(p) = self.runs.remove(&k) else {
                continue;
            };
            let end = p.addr + p.len;
            if end <= a {
                self.runs.insert(k, p);
                continue;
            }
            let (s, e) = (p.addr.max(a), end.min(b));
            if p.addr < s {
                self.runs.insert(p.addr, sub(&p, p.addr, s));
            }
            if e < end {
                self.runs.insert(e, sub(&p, e, end));
            }
            out.push(sub(&p, s, e));
        }
        out
    }

    /// Put back a piece taken and not loaded.
    pub fn put(&mut self, p: Piece) {
        self.runs.insert(p.addr, p);
    }

    /// The first `max` bytes pending (within one piece), taken.
    pub fn next(&mut self, max: u64) -> Option<Piece> {
        let (&a, p) = self.runs.iter().next()?;
        let b = (a + max).min(p.addr + p.len);
        self.take(a, b).into_iter().next()
    }

    /// Pages of `[from, from + len)` moved to `to` (mremap).
    pub fn moved(&mut self, from: u64, to: u64, len: u64) {
        for p in self.take(from, from + len) {
            let at = to + (p.addr - from);
            self.runs.insert(at, Piece { addr: at, ..p });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(a: u64, pages: u64, off: u64) -> Piece {
        Piece {
            addr: a * PAGE,
            len: pages * PAGE,
            file: 0,
            off: off * PAGE,
        }
    }

    #[test]
    fn pieces_divided_by_ranges() {
        let ps = [piece(0, 10, 100), piece(20, 4, 200)];
        // overlapping, unsorted ranges, one across both pieces
        let r = [
            (8 * PAGE, 22 * PAGE),
            (2 * PAGE, 4 * PAGE),
            (3 * PAGE, 5 * PAGE),
        ];
        let (inside, rest) = divide(&ps, &r);
        assert_eq!(
            inside,
            vec![piece(2, 3, 102), piece(8, 2, 108), piece(20, 2, 200)]
        );
        assert_eq!(
            rest,
            vec![piece(0, 2, 100), piece(5, 3, 105), piece(22, 2, 202)]
        );
        assert_eq!(divide(&ps, &[]), (vec![], ps.to_vec()));
    }

    #[test]
    fn pending_take_move_next() {
        let mut p = Pending::new(&[piece(0, 10, 100), piece(20, 4, 200)]);
        let t = p.take(2 * PAGE, 4 * PAGE);
        assert_eq!(t, vec![piece(2, 2, 102)]);
        assert_eq!(p.take(2 * PAGE, 4 * PAGE), vec![]);
        p.moved(20 * PAGE, 40 * PAGE, 2 * PAGE);
        assert_eq!(p.take(40 * PAGE, 50 * PAGE), vec![piece(40, 2, 200)]);
        assert_eq!(p.next(3 * PAGE), Some(piece(0, 2, 100)));
        assert_eq!(p.next(100 * PAGE), Some(piece(4, 6, 104)));
        assert_eq!(p.next(PAGE), Some(piece(22, 1, 202)));
        assert_eq!(p.next(PAGE), Some(piece(23, 1, 203)));
        assert!(p.is_empty());
    }
}
