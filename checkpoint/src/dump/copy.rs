//! The page copy: from a process (running or frozen) into the data section
//! of its memory file, by two threads through cache-sized buffers, with a
//! CRC32 of every page copied.

use std::fs::File;
use std::os::unix::fs::FileExt;
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
}

impl DataFile {
    pub fn new(file: File, path: PathBuf) -> Self {
        DataFile {
            file,
            path,
            slots: 0,
            crcs: Vec::new(),
        }
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
    mem.read_exact_at(buf, addr).map_err(|e| ChkptError::Sys {
        op: format!("reading memory at {addr:#x}"),
        pid,
        err: e,
    })
}

/// Unit of work of the copy threads.
const CHUNK: u64 = 4 << 20;
/// Copy threads: this machine class has 2 cores; CRIU copies with one.
const COPIERS: usize = 2;
/// Measured here on 1 GiB, one thread: 256 KiB buffer 0.65 s, 1 MiB 0.85 s,
/// 8 MiB 1.7-2.0 s: the buffer must stay in the CPU cache between the read
/// and the write.
const BUF: usize = 256 << 10;

/// Shared state of the copy threads.
struct Work<'a> {
    pid: i32,
    pieces: &'a [Job],
    next: &'a AtomicUsize,
    copied: &'a AtomicU64,
    mem: &'a File,
    out: &'a File,
    path: &'a PathBuf,
    /// (slot, crc) results, stored into the DataFile afterwards.
    crcs: &'a Mutex<Vec<(u64, u32)>>,
    /// Pieces that could not be read, when that is tolerated (the process
    /// runs and may have just unmapped them); `None`: a failure is an error.
    failed: Option<&'a Mutex<Vec<Job>>>,
}

impl Work<'_> {
    fn run(&self, mut tick: impl FnMut()) -> Result<()> {
        let mut buf = vec![0u8; BUF];
        let mut mine = Vec::new();
        loop {
            let k = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(&Job { addr, len, slot }) = self.pieces.get(k) else {
                break;
            };
            let mut done = 0;
            while done < len {
                let n = (len - done).min(BUF as u64) as usize;
                if let Err(e) = read_remote(self.pid, addr + done, &mut buf[..n], self.mem) {
                    let Some(failed) = self.failed else {
                        return Err(e);
                    };
                    if let Ok(mut f) = failed.lock() {
                        f.push(Job { addr, len, slot });
                    }
                    break;
                }
                self.out
                    .write_all_at(&buf[..n], DATA_OFF + (slot * PAGE) + done)
                    .map_err(|e| ChkptError::io(self.path, e))?;
                for (i, page) in buf[..n].chunks(PAGE as usize).enumerate() {
                    mine.push((slot + done / PAGE + i as u64, crc32fast::hash(page)));
                }
                done += n as u64;
                self.copied.fetch_add(n as u64, Ordering::Relaxed);
                tick();
            }
        }
        if let Ok(mut c) = self.crcs.lock() {
            c.extend(mine);
        }
        Ok(())
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
/// returned in [`Copied::failed`] rather than failing the copy.
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
    let mut pieces = Vec::new();
    for j in jobs {
        let mut done = 0;
        while done < j.len {
            let n = (j.len - done).min(CHUNK);
            pieces.push(Job {
                addr: j.addr + done,
                len: n,
                slot: j.slot + done / PAGE,
            });
            done += n;
        }
    }
    let path = format!("/proc/{pid}/mem");
    let mem = File::open(&path).map_err(|e| ChkptError::io(&path, e))?;
    let next = AtomicUsize::new(0);
    let copied = AtomicU64::new(0);
    let crcs = Mutex::new(Vec::new());
    let failed = Mutex::new(Vec::new());
    let work = Work {
        pid,
        pieces: &pieces,
        next: &next,
        copied: &copied,
        mem: &mem,
        out: &out.file,
        path: &out.path,
        crcs: &crcs,
        failed: tolerant.then_some(&failed),
    };
    std::thread::scope(|sc| -> Result<()> {
        let helpers: Vec<_> = (1..COPIERS.min(pieces.len()))
            .map(|_| sc.spawn(|| work.run(|| {})))
            .collect();
        // This thread copies too, and is the one that reports progress.
        let mut shown = 0;
        let mut result = work.run(|| {
            let c = copied.load(Ordering::Relaxed);
            progress(c - shown);
            shown = c;
        });
        for h in helpers {
            let r = h
                .join()
                .map_err(|_| ChkptError::Thread("a page copy thread panicked".into()))
                .and_then(|r| r);
            result = result.and(r);
        }
        progress(copied.load(Ordering::Relaxed) - shown);
        result
    })?;
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
mod tests {
    use super::*;

    #[test]
    fn copies_own_memory_with_page_crcs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        let mut out = DataFile::new(File::create(&path).unwrap(), path.clone());
        let src: Vec<u8> = (0..5 * PAGE as usize)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let slot = out.alloc(5);
        assert_eq!(out.alloc(1), 5);
        let me = std::process::id() as i32;
        let n = copy(
            me,
            &[Job {
                addr: src.as_ptr() as u64,
                len: 5 * PAGE,
                slot,
            }],
            &mut out,
            &|_| {},
            false,
        )
        .unwrap();
        assert_eq!(n.bytes, 5 * PAGE);
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[DATA_OFF as usize..][..src.len()], &src[..]);
        assert_eq!(out.crcs[2], crc32fast::hash(&src[2 * 4096..3 * 4096]));
        assert_eq!(out.crc_of(1, 3), crc32fast::hash(&src[4096..4 * 4096]));
    }
}
