//! Eager restore of private anonymous memory (heap, stacks, anonymous
//! `mmap`): restart copies the pages into the task with `UFFDIO_COPY`,
//! from its read-only mapping of the memory files (the page cache itself),
//! on two threads, each block compared with its CRC just before it is
//! copied (it is still in the CPU's cache for the copy: checking every
//! block first was a whole extra pass over the memory). A mismatch ends
//! the restore before any task ran; restart kills the tasks it made.
//!
//! Why not `pread` inside the task, as for the other areas: the kernel
//! would first give the task a zeroed page (a fault, or `MAP_POPULATE`),
//! then copy over it. `UFFDIO_COPY` allocates each page with its content:
//! one memory pass less, and no injected call per piece. The mappings are
//! registered (MISSING mode) with a userfaultfd created inside the task
//! while it still has root's rights, taken into restart with
//! `pidfd_getfd` and closed in the task; dropping restart's copy once the
//! pages are in unregisters them (the task never held it, never runs
//! while it exists). Pages nothing was saved of stay missing: zeros on
//! first touch, as before. A kernel without userfaultfd (or refusing it)
//! gets the old way: the blocks checked first, the task reading the pages
//! itself.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::error::{ChkptError, Result};
use crate::image::{TaskImage, Vma};
use crate::uffd;

use super::ctx::TaskCtx;
use super::lazy::{lazy_kind, take_uffd};
use super::pages::{check_block, checks_in, Check, DataFile, Piece};

/// What one thread takes at a time: one page table's worth (2 MiB,
/// aligned), so that the two threads never wait for each other's page
/// table lock.
const CHUNK: u64 = 2 << 20;

/// Checked, then copied, at a time: it stays in the CPU's cache between
/// the check and the copy.
const STEP: u64 = 256 << 10;

/// Copy threads (restart's own included): this machine class has 2 cores.
/// Measured here (1 GiB, 4 rounds at load 7-8, `task_memory` medians): 1
/// thread 530 ms, 2 and 4 threads 470 ms — most of the time is the
/// kernel (and this VM's host) providing fresh pages.
const COPIERS: usize = 2;

/// Tries in a row that copied nothing before giving up.
const MAX_IDLE: u32 = 1000;

/// Which mappings restart fills with `UFFDIO_COPY`: those the kernel can
/// register in MISSING mode (the ones `--lazy` leaves to its server).
pub fn copied_kind(v: &Vma) -> bool {
    lazy_kind(v)
}

/// A task's pieces: those it reads itself (`pread`, injected), and those
/// restart copies in — as `--lazy` splits them between the task and its
/// page server (the pages of rseq areas are read).
pub fn split(t: &TaskImage, vmas: &[Vma], pieces: &[Piece]) -> (Vec<Piece>, Vec<Piece>) {
    super::lazy::split(t, vmas, pieces)
}

/// Copy `pieces` (all in copied mappings, which hold no page yet) into
/// the task.
pub fn copy_in(c: &TaskCtx, pieces: &[Piece]) -> Result<()> {
    if pieces.is_empty() {
        return Ok(());
    }
    // no events: the task does not run while restart copies
    let ufd = match take_uffd(c, 0, pieces) {
        Ok(u) => u,
        // a kernel without userfaultfd, or refusing it: the task reads
        // these pages itself, as the others
        Err(ChkptError::Injected {
            name: "userfaultfd",
            ..
        }) => return read_checked(c, pieces),
        Err(e) => return Err(e),
    };
    let chunks = cut(pieces, CHUNK);
    let next = AtomicUsize::new(0);
    let fd = ufd.as_raw_fd();
    let pid = c.inj.tid;
    let (files, checks) = (c.files, c.checks);
    // set by a thread that failed: the others stop too
    let failed = AtomicBool::new(false);
    let run = || -> Result<()> {
        while let Some(p) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
            if failed.load(Ordering::Relaxed) {
                break;
            }
            for step in cut(std::slice::from_ref(p), STEP) {
                copy_piece(fd, pid, files, checks, &step).inspect_err(|_| {
                    failed.store(true, Ordering::Relaxed);
                })?;
            }
        }
        Ok(())
    };
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..COPIERS).map(|_| s.spawn(run)).collect();
        let mut r = run();
        for h in helpers {
            let theirs = h
                .join()
                .unwrap_or_else(|_| Err(ChkptError::Thread("a copy thread panicked".into())));
            r = r.and(theirs);
        }
        r
    })
}

/// Without a userfaultfd: every block of `pieces` checked, then the pages
/// read by the task (`pread`, injected; each page is faulted in zeroed
/// first: slower, same result).
fn read_checked(c: &TaskCtx, pieces: &[Piece]) -> Result<()> {
    for p in pieces {
        let f = c
            .files
            .get(p.file)
            .ok_or_else(|| ChkptError::Inconsistent(format!("no data file {}", p.file)))?;
        for k in checks_in(c.checks, p.file, p.off, p.len) {
            check_block(f, k)?;
        }
    }
    super::pread::read_pieces(c, pieces)
}

/// The pieces cut at every multiple of `size` in the address space (CRC
/// blocks are aligned there too: none is split between two parts when
/// `size` is a multiple of theirs).
fn cut(pieces: &[Piece], size: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    for p in pieces {
        let mut at = 0;
        while at < p.len {
            let boundary = (p.addr + at) / size * size + size;
            let len = (p.len - at).min(boundary - (p.addr + at));
            out.push(Piece {
                addr: p.addr + at,
                len,
                file: p.file,
                off: p.off + at,
            });
            at += len;
        }
    }
    out
}

/// One piece, from the file's mapping into the task, once every block it
/// touches matches its CRC (a version 1 image has none).
fn copy_piece(fd: RawFd, pid: i32, files: &[DataFile], checks: &[Check], p: &Piece) -> Result<()> {
    let f = files
        .get(p.file)
        .ok_or_else(|| ChkptError::Inconsistent(format!("no data file {}", p.file)))?;
    for c in checks_in(checks, p.file, p.off, p.len) {
        check_block(f, c)?;
    }
    let src = f
        .map
        .as_deref()
        .and_then(|m| m.get(p.off as usize..(p.off + p.len) as usize))
        .ok_or_else(|| ChkptError::bad_image(&f.path, "page data ends early"))?;
    let mut done = 0u64;
    let mut idle = 0;
    while done < p.len {
        match uffd::copy(
            fd,
            p.addr + done,
            src[done as usize..].as_ptr(),
            p.len - done,
        ) {
            Ok(n) if n > 0 => {
                done += n;
                idle = 0;
            }
            // the address space is changing (it cannot: the task is
            // stopped; bounded all the same)
            Ok(_) if idle < MAX_IDLE => idle += 1,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && idle < MAX_IDLE => idle += 1,
            // the source page vanished: the file was cut short since
            Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {
                return Err(ChkptError::bad_image(
                    &f.path,
                    format!(
                        "page data at offset {} is gone (file cut short)",
                        p.off + done
                    ),
                ));
            }
            Ok(_) => {
                return Err(ChkptError::Sys {
                    op: format!("UFFDIO_COPY at {:#x}", p.addr + done),
                    pid,
                    err: std::io::Error::from_raw_os_error(libc::EAGAIN),
                })
            }
            Err(err) => {
                return Err(ChkptError::Sys {
                    op: format!("UFFDIO_COPY at {:#x}", p.addr + done),
                    pid,
                    err,
                })
            }
        }
    }
    Ok(())
}
