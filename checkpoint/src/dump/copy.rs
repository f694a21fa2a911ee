//! The page copy: from a process (running or frozen) into the data section
//! of its memory file, by two threads through cache-sized buffers, with a
//! CRC32 of every page copied.
//!
//! The running rounds of an incremental SN may write with `O_DIRECT`
//! ([`DataFile::go_direct`]), in 2 MiB pieces. On this machine class (a VM
//! that gives freed memory back to its host) a new page-cache page costs a
//! host fault when first touched: SN 2's 52 MiB took 20 ms through the page
//! cache when its pages were still backed and 100-190 ms when they were
//! not (a 5x spread from run to run); by direct I/O it costs the disk's
//! time, 30-60 ms at low load, more at load 9 (each write's completion
//! waits for a CPU). So a copy of more than [`PROBE_MIN`] starts through
//! the page cache, times its first [`PROBE`] bytes of writes, and goes on
//! directly only when they were slow. The frozen round always writes
//! through the page cache: a direct write waits for the disk, the freeze
//! must not. A full SN keeps the page cache too: it is what a restart
//! reads.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{ChkptError, Result};
use crate::image::PAGE;

/// Where page data starts in a memory file (the header is at 0, the
/// metadata goes after the data once it is known).
pub const DATA_OFF: u64 = PAGE;

/// The data section of one memory file being written: page-sized slots,
/// and the CRC of what each holds.
pub struct DataFile {
    pub file: File,
    pub path: PathBuf,
    /// Slots handed out so far.
    pub slots: u64,
    /// CRC32 of each slot's page.
    pub crcs: Vec<u32>,
    /// Slot ranges (first, pages) written since [`DataFile::drain`]: what
    /// a copy of the file taken before then lacks.
    written: Vec<(u64, u64)>,
    /// The same file opened again with `O_DIRECT`, for running rounds.
    direct: Option<File>,
    /// Write directly without timing page-cache writes first (tests).
    direct_always: bool,
    /// Read the process's pages through /proc/PID/mem only (see
    /// [`DataFile::keep_shared`]).
    by_mem: bool,
}

impl DataFile {
    pub fn new(file: File, path: PathBuf) -> Self {
        DataFile {
            file,
            path,
            slots: 0,
            crcs: Vec::new(),
            written: Vec::new(),
            direct: None,
            direct_always: false,
            by_mem: false,
        }
    }

    /// Read through /proc/PID/mem, never `process_vm_readv`: that call pins
    /// the pages it reads, and the kernel gives a pinned page that is
    /// shared copy-on-write (since a fork) a private copy first. Reading
    /// a forked parent and child that way made two copies of every page
    /// they shared, in the running job (512 MiB shared: 1.3 s, and twice
    /// the memory; /proc/PID/mem reads them in 0.08 s, against 0.065 s
    /// for `process_vm_readv` on unshared pages). Set for processes of
    /// trees of more than one task.
    pub fn keep_shared(&mut self) {
        self.by_mem = true;
    }

    /// Write the pages of running rounds with `O_DIRECT` (see the module
    /// docs), where the file system takes it; otherwise nothing changes.
    pub fn go_direct(&mut self) {
        self.direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
            .ok();
    }

    /// The byte ranges of the file written since the last drain (merged,
    /// in order), and forget them.
    pub fn drain(&mut self) -> Vec<(u64, u64)> {
        let mut w = std::mem::take(&mut self.written);
        w.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (slot, pages) in w {
            let (s, e) = (DATA_OFF + slot * PAGE, DATA_OFF + (slot + pages) * PAGE);
            match out.last_mut() {
                Some(l) if s <= l.1 => l.1 = l.1.max(e),
                _ => out.push((s, e)),
            }
        }
        out
    }

    /// `pages` new consecutive slots; returns the first.
    pub fn alloc(&mut self, pages: u64) -> u64 {
        let s = self.slots;
        self.slots += pages;
        self.crcs.resize(self.slots as usize, 0);
        s
    }

    /// The CRC32 of `pages` consecutive slots from `slot`.
    pub fn crc_of(&self, slot: u64, pages: u64) -> u32 {
        let mut h: Option<crc32fast::Hasher> = None;
        for s in slot..slot + pages {
            let c = self.crcs.get(s as usize).copied().unwrap_or(0);
            let page = crc32fast::Hasher::new_with_initial_len(c, PAGE);
            match &mut h {
                None => h = Some(page),
                Some(h) => h.combine(&page),
            }
        }
        h.map_or(0, |h| h.finalize())
    }
}

/// Copy `len` bytes at `addr` of the process into slots from `slot`.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub addr: u64,
    pub len: u64,
    pub slot: u64,
}

/// Read `len` bytes at `addr` of the tracee into `buf` (process_vm_readv,
/// falling back to /proc/PID/mem for areas it cannot read, e.g. PROT_NONE).
fn read_remote(pid: i32, addr: u64, buf: &mut [u8], mem: &File) -> Result<()> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: local covers buf; remote memory is only read by the kernel.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if n == buf.len() as isize {
        return Ok(());
    }
    read_mem(pid, addr, buf, mem)
}

/// Read `buf.len()` bytes at `addr` of the tracee through its /proc/PID/mem.
fn read_mem(pid: i32, addr: u64, buf: &mut [u8], mem: &File) -> Result<()> {
    mem.read_exact_at(buf, addr).map_err(|e| ChkptError::Sys {
        op: format!("reading memory at {addr:#x}"),
        pid,
        err: e,
    })
}

/// Copy threads: this machine class has 2 cores; CRIU copies with one.
const COPIERS: usize = 2;
/// Measured here on 1 GiB, one thread: 256 KiB buffer 0.65 s, 1 MiB 0.85 s,
/// 8 MiB 1.7-2.0 s: the buffer must stay in the CPU cache between the read
/// and the write.
const BUF: usize = 256 << 10;
/// At most this many ranges in one `process_vm_readv` (IOV_MAX is 1024).
const MAX_IOV: usize = 512;
/// A direct write's size: the buffer need not stay in the CPU cache (the
/// device reads it), and fewer, larger writes keep the disk busy (52 MiB:
/// 45-75 ms in 256 KiB writes, 30 ms in 4 MiB ones).
const DIRECT_BUF: usize = 2 << 20;
/// A copy larger than this (where direct writes are possible) first times
/// [`PROBE`] bytes of writes through the page cache.
const PROBE_MIN: u64 = 4 << 20;
const PROBE: u64 = 2 << 20;
/// Page-cache writes slower than this per [`BUF`] (new pages the host must
/// fault in: 0.72 ms, against 0.07 ms when they are backed; a direct write
/// of that size takes about 0.2 ms) send the rest of the copy direct.
const SLOW_WRITE_NS: u64 = 250_000;
/// Alignment of the copy buffer: what `O_DIRECT` asks of memory.
const ALIGN: usize = PAGE as usize;

/// Jobs of at most `size` bytes, with consecutive slots, read by one
/// `process_vm_readv` and written by one `pwrite`: scattered single pages
/// (5 % of a GiB changed is 13,000 of them) cost two system calls a
/// buffer, not two a page.
fn batches(jobs: &[Job], size_max: usize) -> Vec<Vec<Job>> {
    let mut out: Vec<Vec<Job>> = Vec::new();
    let mut size = 0u64;
    for j in jobs {
        let mut done = 0;
        while done < j.len {
            let n = (j.len - done).min(size_max as u64);
            let piece = Job {
                addr: j.addr + done,
                len: n,
                slot: j.slot + done / PAGE,
            };
            let joins = out.last().and_then(|b| b.last()).is_some_and(|l| {
                l.slot + l.len / PAGE == piece.slot
                    && size + n <= size_max as u64
                    && out.last().is_some_and(|b| b.len() < MAX_IOV)
            });
            if joins {
                if let Some(b) = out.last_mut() {
                    b.push(piece);
                }
                size += n;
            } else {
                out.push(vec![piece]);
                size = n;
            }
            done += n;
        }
    }
    out
}

/// Shared state of the copy threads.
struct Work<'a> {
    pid: i32,
    batches: &'a [Vec<Job>],
    next: &'a AtomicUsize,
    copied: &'a AtomicU64,
    mem: &'a File,
    out: &'a File,
    /// `out` opened with `O_DIRECT`, when this copy writes that way.
    direct: Option<&'a File>,
    path: &'a PathBuf,
    /// (slot, crc) results, stored into the DataFile afterwards.
    crcs: &'a Mutex<Vec<(u64, u32)>>,
    /// Pieces that could not be read, when that is tolerated (the process
    /// runs and may have just unmapped them); `None`: a failure is an error.
    failed: Option<&'a Mutex<Vec<Job>>>,
    /// Time spent in page-cache writes (ns).
    write_ns: &'a AtomicU64,
    /// Read through `mem` only ([`DataFile::keep_shared`]).
    by_mem: bool,
}

impl Work<'_> {
    /// Read one batch into `buf`: one call for all of it, or piece by
    /// piece (with the /proc/PID/mem fallback) when that fails.
    fn read(&self, batch: &[Job], buf: &mut [u8]) -> Result<()> {
        let total: usize = batch.iter().map(|j| j.len as usize).sum();
        let remote: Vec<libc::iovec> = batch
            .iter()
            .map(|j| libc::iovec {
                iov_base: j.addr as *mut libc::c_void,
                iov_len: j.len as usize,
            })
            .collect();
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: total,
        };
        if !self.by_mem {
            // SAFETY: local covers `total` bytes of buf; remote memory is only read.
            let n = unsafe {
                libc::process_vm_readv(self.pid, &local, 1, remote.as_ptr(), remote.len() as _, 0)
            };
            if n == total as isize {
                return Ok(());
            }
        }
        let mut at = 0;
        for j in batch {
            let part = &mut buf[at..at + j.len as usize];
            let r = match self.by_mem {
                true => read_mem(self.pid, j.addr, part, self.mem),
                false => read_remote(self.pid, j.addr, part, self.mem),
            };
            if let Err(e) = r {
                let Some(failed) = self.failed else {
                    return Err(e);
                };
                if let Ok(mut f) = failed.lock() {
                    f.push(*j);
                }
            }
            at += j.len as usize;
        }
        Ok(())
    }

    /// Write `data` at `at` of the file: directly when asked, through the
    /// page cache when not, or when the file system refuses this write
    /// (EINVAL: an alignment it does not take).
    fn write(&self, data: &[u8], at: u64) -> Result<()> {
        if let Some(d) = self.direct {
            match d.write_all_at(data, at) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                r => return r.map_err(|e| ChkptError::io(self.path, e)),
            }
        }
        let t = std::time::Instant::now();
        self.out
            .write_all_at(data, at)
            .map_err(|e| ChkptError::io(self.path, e))?;
        let ns = t.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.write_ns.fetch_add(ns, Ordering::Relaxed);
        Ok(())
    }

    fn run(&self, mut tick: impl FnMut()) -> Result<()> {
        let size = if self.direct.is_some() {
            DIRECT_BUF
        } else {
            BUF
        };
        // page aligned, for O_DIRECT
        let mut raw = vec![0u8; size + ALIGN];
        let off = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        let buf = &mut raw[off..off + size];
        let mut mine = Vec::new();
        loop {
            let k = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(batch) = self.batches.get(k) else {
                break;
            };
            let Some(first) = batch.first() else { continue };
            let total: usize = batch.iter().map(|j| j.len as usize).sum();
            self.read(batch, buf)?;
            self.write(&buf[..total], DATA_OFF + first.slot * PAGE)?;
            for (i, page) in buf[..total].chunks(PAGE as usize).enumerate() {
                mine.push((first.slot + i as u64, crc32fast::hash(page)));
            }
            self.copied.fetch_add(total as u64, Ordering::Relaxed);
            tick();
        }
        if let Ok(mut c) = self.crcs.lock() {
            c.extend(mine);
        }
        Ok(())
    }
}

/// Run the copy threads over `work`'s batches; this thread copies too and
/// reports progress.
fn run_threads(work: &Work, progress: &dyn Fn(u64)) -> Result<()> {
    // bytes of an earlier pass were reported by it
    let mut shown = work.copied.load(Ordering::Relaxed);
    std::thread::scope(|sc| -> Result<()> {
        let helpers: Vec<_> = (1..COPIERS.min(work.batches.len()))
            .map(|_| sc.spawn(|| work.run(|| {})))
            .collect();
        let mut result = work.run(|| {
            let c = work.copied.load(Ordering::Relaxed);
            progress(c.saturating_sub(shown));
            shown = c;
        });
        for h in helpers {
            let r = h
                .join()
                .map_err(|_| ChkptError::Thread("a page copy thread panicked".into()))
                .and_then(|r| r);
            result = result.and(r);
        }
        progress(work.copied.load(Ordering::Relaxed).saturating_sub(shown));
        result
    })
}

/// `jobs` cut after their first `bytes` bytes (a job across the cut split
/// in two, at a page).
fn split_at_bytes(jobs: &[Job], bytes: u64) -> (Vec<Job>, Vec<Job>) {
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    let mut left = bytes;
    for j in jobs {
        if left == 0 {
            tail.push(*j);
        } else if j.len <= left {
            head.push(*j);
            left -= j.len;
        } else {
            let n = left / PAGE * PAGE;
            if n > 0 {
                head.push(Job { len: n, ..*j });
            }
            tail.push(Job {
                addr: j.addr + n,
                len: j.len - n,
                slot: j.slot + n / PAGE,
            });
            left = 0;
        }
    }
    (head, tail)
}

/// Reserve the file's blocks from the first slot `jobs` write to the end
/// of the last, in one call ([`crate::prealloc`]).
fn reserve_slots(jobs: &[Job], file: &File) {
    let first = jobs.iter().map(|j| j.slot).min();
    let end = jobs.iter().map(|j| j.slot * PAGE + j.len).max();
    if let (Some(first), Some(end)) = (first, end) {
        crate::prealloc::reserve(file, DATA_OFF + first * PAGE, end - first * PAGE);
    }
}

/// What a copy did: bytes copied, and the pieces it could not read (only
/// when that was tolerated).
pub struct Copied {
    pub bytes: u64,
    pub failed: Vec<Job>,
}

/// Copy every job of `pid` into `out`; `progress(bytes)` after each buffer.
/// `tolerant`: the process is running, and a piece it unmapped meanwhile is
/// returned in [`Copied::failed`] rather than failing the copy; only such a
/// copy writes with `O_DIRECT` (after [`DataFile::go_direct`]).
pub fn copy(
    pid: i32,
    jobs: &[Job],
    out: &mut DataFile,
    progress: &dyn Fn(u64),
    tolerant: bool,
) -> Result<Copied> {
    if jobs.is_empty() {
        return Ok(Copied {
            bytes: 0,
            failed: Vec::new(),
        });
    }
    out.written
        .extend(jobs.iter().map(|j| (j.slot, j.len.div_ceil(PAGE))));
    reserve_slots(jobs, &out.file);
    let path = format!("/proc/{pid}/mem");
    let mem = File::open(&path).map_err(|e| ChkptError::io(&path, e))?;
    let copied = AtomicU64::new(0);
    let crcs = Mutex::new(Vec::new());
    let failed = Mutex::new(Vec::new());
    let direct = out.direct.as_ref().filter(|_| tolerant);
    // one pass of the copy threads over `batches`: its page-cache write time
    let pass = |batches: &[Vec<Job>], direct: Option<&File>| -> Result<u64> {
        let (next, write_ns) = (AtomicUsize::new(0), AtomicU64::new(0));
        let work = Work {
            pid,
            batches,
            next: &next,
            copied: &copied,
            mem: &mem,
            out: &out.file,
            direct,
            path: &out.path,
            crcs: &crcs,
            failed: tolerant.then_some(&failed),
            write_ns: &write_ns,
            by_mem: out.by_mem,
        };
        run_threads(&work, progress)?;
        Ok(write_ns.load(Ordering::Relaxed))
    };
    let total: u64 = jobs.iter().map(|j| j.len).sum();
    let (probe, rest) = match direct {
        Some(_) if total > PROBE_MIN && !out.direct_always => split_at_bytes(jobs, PROBE),
        _ => (Vec::new(), jobs.to_vec()),
    };
    let slow = match probe.is_empty() {
        true => out.direct_always,
        false => {
            let b = batches(&probe, BUF);
            pass(&b, None)? > SLOW_WRITE_NS * b.len() as u64
        }
    };
    let direct = direct.filter(|_| slow);
    let b = batches(&rest, if direct.is_some() { DIRECT_BUF } else { BUF });
    pass(&b, direct)?;
    let results = crcs
        .into_inner()
        .map_err(|_| ChkptError::Thread("a page copy thread panicked".into()))?;
    for (slot, c) in results {
        if let Some(x) = out.crcs.get_mut(slot as usize) {
            *x = c;
        }
    }
    Ok(Copied {
        bytes: copied.load(Ordering::Relaxed),
        failed: failed
            .into_inner()
            .map_err(|_| ChkptError::Thread("a page copy thread panicked".into()))?,
    })
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
