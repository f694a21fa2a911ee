//! Rebuilding a task's address space by injected system calls.

use super::ctx::{current_maps, TaskCtx, AREA_LEN, AREA_PARK, PARK_LEN};
use super::fill;
use super::mapfiles::MapFiles;
use super::pages::Piece;
use super::pread::read_pieces;
use crate::error::{ChkptError, Result};
use crate::image::{RunData, Vma, VmaKind};
use crate::ptrace::Injector;
use crate::ranges::minus;

const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;

fn special_name(k: &VmaKind) -> Option<&'static str> {
    match k {
        VmaKind::Vdso => Some("[vdso]"),
        VmaKind::Vvar => Some("[vvar]"),
        VmaKind::VvarVclock => Some("[vvar_vclock]"),
        _ => None,
    }
}

fn mremap(i: &Injector, from: u64, len: u64, to: u64) -> Result<()> {
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    i.call("mremap", libc::SYS_mremap, [from, len, len, flags, to, 0])
        .map(|_| ())
}

/// Keep the kernel's own vDSO and vvar pages (never copied: they belong to
/// this kernel) and move them where the process had them, via a parking
/// zone so that old and new places may overlap.
fn move_specials(c: &TaskCtx) -> Result<()> {
    let pid = c.inj.tid;
    let cur = current_maps(pid)?;
    let mut parked = Vec::new();
    let mut off = c.area + AREA_PARK;
    for m in cur
        .iter()
        .filter(|m| matches!(m.path.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]"))
    {
        let rec =
            c.mm.vmas
                .iter()
                .find(|v| special_name(&v.kind) == Some(m.path.as_str()));
        let len = m.end - m.start;
        match rec {
            None => {
                c.inj
                    .call("munmap", libc::SYS_munmap, [m.start, len, 0, 0, 0, 0])?;
            }
            Some(v) if v.end - v.start != len => {
                return Err(ChkptError::Kernel(format!(
                    "{} is {} bytes on this kernel but {} in the image",
                    m.path,
                    len,
                    v.end - v.start
                )))
            }
            Some(v) => {
                if off + len > c.area + AREA_PARK + PARK_LEN {
                    return Err(ChkptError::TooLarge(format!("a {len} byte {}", m.path)));
                }
                mremap(c.inj, m.start, len, off)?;
                parked.push((off, len, v.start));
                off += len;
            }
        }
    }
    for v in c.mm.vmas.iter().filter(|v| special_name(&v.kind).is_some()) {
        if !cur
            .iter()
            .any(|m| Some(m.path.as_str()) == special_name(&v.kind))
        {
            return Err(ChkptError::Kernel(format!(
                "this kernel has no {:?} mapping",
                v.kind
            )));
        }
    }
    for (from, len, to) in parked {
        mremap(c.inj, from, len, to)?;
    }
    Ok(())
}

/// The mappings this task keeps from its parent: those it shares pages of
/// with it ([`RunData::Cow`]). Such a task is forked once its parent's
/// memory is restored (see [`tree`](super::tree)), so it has them already.
fn inherited<'a>(c: &TaskCtx<'a>) -> Vec<&'a Vma> {
    c.mm.vmas
        .iter()
        .filter(|v| v.runs.iter().any(|r| r.data == RunData::Cow))
        .collect()
}

/// Unmap everything the restarter (or the parent it was forked from) left,
/// but the area, the kernel's pages and the `kept` mappings — which must be
/// there whole.
fn unmap_restarter(c: &TaskCtx, kept: &[&Vma]) -> Result<()> {
    let cur = current_maps(c.inj.tid)?;
    for v in kept {
        let mut at = v.start;
        while at < v.end {
            match cur.iter().find(|m| m.start <= at && at < m.end) {
                Some(m) => at = m.end,
                None => {
                    return Err(ChkptError::Inconsistent(format!(
                    "task {} shares pages of {:#x}-{:#x} with its parent, which does not map them",
                    c.task.pid, v.start, v.end
                )))
                }
            }
        }
    }
    for m in cur {
        let keep = matches!(
            m.path.as_str(),
            "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]"
        ) || (m.start >= c.area && m.end <= c.area + AREA_LEN);
        if keep {
            continue;
        }
        let kept_here: Vec<(u64, u64)> = kept.iter().map(|v| (v.start, v.end)).collect();
        for (a, b) in minus(&[(m.start, m.end)], &kept_here) {
            c.inj
                .call("munmap", libc::SYS_munmap, [a, b - a, 0, 0, 0, 0])?;
        }
    }
    Ok(())
}

/// A mapping kept from the parent: its pages stay where this task shares
/// them with the parent; every other page is dropped (an anonymous page
/// reads zeros again, a page of a file its content) and this task's own
/// saved pages are put in as into a new mapping.
fn reuse_vma(c: &TaskCtx, v: &Vma) -> Result<()> {
    let i = c.inj;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    i.call(
        "mprotect",
        libc::SYS_mprotect,
        [v.start, v.end - v.start, v.prot as u64 | rw, 0, 0, 0],
    )?;
    let shared: Vec<(u64, u64)> = v
        .runs
        .iter()
        .filter(|r| r.data == RunData::Cow)
        .map(|r| (r.addr, r.addr + r.pages * crate::image::PAGE))
        .collect();
    for (a, b) in minus(&[(v.start, v.end)], &shared) {
        i.call(
            "madvise(MADV_DONTNEED)",
            libc::SYS_madvise,
            [a, b - a, libc::MADV_DONTNEED as u64, 0, 0, 0],
        )?;
    }
    fill(c, v)?;
    if !copied(c, v) {
        protect(c, v)?;
    }
    Ok(())
}

/// The pieces of `[start, end)`, in address order.
fn pieces_in<'a>(c: &'a TaskCtx, start: u64, end: u64) -> &'a [Piece] {
    let lo = c.pieces.partition_point(|p| p.addr + p.len <= start);
    let hi = c.pieces.partition_point(|p| p.addr < end);
    &c.pieces[lo..hi.max(lo)]
}

/// Read the saved pages of a mapping into place: pread from the memory
/// files, inside the task.
fn fill(c: &TaskCtx, v: &Vma) -> Result<()> {
    read_pieces(c, pieces_in(c, v.start, v.end))
}

fn create_vma(c: &TaskCtx, v: &Vma, files: &mut MapFiles) -> Result<()> {
    let i = c.inj;
    let len = v.end - v.start;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let fixed = libc::MAP_FIXED as u64;
    match &v.kind {
        VmaKind::Anon | VmaKind::Heap | VmaKind::Stack => {
            let mut flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64 | fixed;
            if v.kind == VmaKind::Stack {
                flags |= libc::MAP_GROWSDOWN as u64;
            }
            // Mostly saved areas read with pread: fault every page in at
            // once (much cheaper than one fault per page inside the pread
            // that follows). Areas restart copies into stay empty.
            let saved: u64 = pieces_in(c, v.start, v.end).iter().map(|p| p.len).sum();
            if saved * 2 > len && !copied(c, v) {
                flags |= libc::MAP_POPULATE as u64;
            }
            i.call(
                "mmap",
                libc::SYS_mmap,
                [v.start, len, rw, flags, u64::MAX, 0],
            )?;
        }
        VmaKind::File { path, offset, .. } => {
            // writable, or may be made writable (opened read-write)
            let write_shared = v.shared
                && (v.prot & libc::PROT_WRITE as u32 != 0
                    || c.task.attrs.may_write.contains(&v.start));
            let mode = if write_shared {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            };
            let fd = files.fd(c, path, mode)?;
            // a private mapping nothing is written into gets its
            // protection at once (no mprotect after)
            let as_is = !v.shared && pieces_in(c, v.start, v.end).is_empty() && !copied(c, v);
            let (prot, flags) = if v.shared {
                (v.prot as u64, libc::MAP_SHARED as u64 | fixed)
            } else if as_is {
                (v.prot as u64, libc::MAP_PRIVATE as u64 | fixed)
            } else {
                (v.prot as u64 | rw, libc::MAP_PRIVATE as u64 | fixed)
            };
            i.call(
                "mmap",
                libc::SYS_mmap,
                [v.start, len, prot, flags, fd, *offset],
            )?;
            if as_is {
                return Ok(());
            }
        }
        VmaKind::SysvShm { shmid } => {
            let addr = i.call(
                "shmat",
                libc::SYS_shmat,
                [*shmid as u64, v.start, 0, 0, 0, 0],
            )?;
            if addr != v.start {
                return Err(ChkptError::Inconsistent(format!(
                    "SysV shm {shmid} attached at {addr:#x}, not {:#x}",
                    v.start
                )));
            }
        }
        VmaKind::DeletedFile { ino, offset, .. } => {
            let fd = c.deleted_fds.get(ino).ok_or_else(|| {
                ChkptError::Inconsistent(format!("deleted file {ino} was not made again"))
            })?;
            let (prot, flags) = if v.shared {
                (v.prot as u64, libc::MAP_SHARED as u64 | fixed)
            } else {
                (v.prot as u64 | rw, libc::MAP_PRIVATE as u64 | fixed)
            };
            i.call(
                "mmap",
                libc::SYS_mmap,
                [v.start, len, prot, flags, *fd as u64, *offset],
            )?;
        }
        VmaKind::SharedAnon { id, pgoff } => {
            let fd = c.shm_fds.get(id).ok_or_else(|| {
                ChkptError::Inconsistent(format!("shared memory {id} is not in the node file"))
            })?;
            let flags = libc::MAP_SHARED as u64 | fixed;
            i.call(
                "mmap",
                libc::SYS_mmap,
                [v.start, len, v.prot as u64 | rw, flags, *fd as u64, *pgoff],
            )?;
        }
        _ => return Ok(()),
    }
    fill(c, v)?;
    if !copied(c, v) {
        protect(c, v)?;
    }
    Ok(())
}

fn protect(c: &TaskCtx, v: &Vma) -> Result<()> {
    c.inj
        .call(
            "mprotect",
            libc::SYS_mprotect,
            [v.start, v.end - v.start, v.prot as u64, 0, 0, 0],
        )
        .map(|_| ())
}

/// Does restart copy pages into this mapping ([`fill`](super::fill))? It
/// gets its protection once they are in.
fn copied(c: &TaskCtx, v: &Vma) -> bool {
    fill::copied_kind(v)
        && c.copied
            .iter()
            .any(|p| p.addr < v.end && p.addr + p.len > v.start)
}

/// `PR_SET_MM_MAP`: code/data/brk/stack/args/env bounds, auxv and the exe
/// link. Unlike the single PR_SET_MM_* options it needs no CAP_SYS_RESOURCE,
/// which root lacks on these machines.
///
/// A task that kept mappings of its parent has its parent's exe link
/// already; the kernel refuses to replace a link whose file is still
/// mapped (EBUSY), so the same link is left as it is.
fn set_mm_map(c: &TaskCtx, kept: bool) -> Result<()> {
    let p = &c.mm.params;
    let current = crate::procfs::readlink(format!("/proc/{}/exe", c.inj.tid)).ok();
    let exe_fd = if kept && current.as_deref() == Some(c.task.exe.as_str()) {
        u32::MAX as u64
    } else {
        let exe = c.put_str(&c.task.exe, 1)?;
        c.inj.call(
            "openat",
            libc::SYS_openat,
            [
                libc::AT_FDCWD as u64,
                exe,
                (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
                0,
                0,
                0,
            ],
        )?
    };
    let mut b = Vec::new();
    for w in [
        p.start_code,
        p.end_code,
        p.start_data,
        p.end_data,
        p.start_brk,
        p.brk,
        p.start_stack,
        p.arg_start,
        p.arg_end,
        p.env_start,
        p.env_end,
    ] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    let auxv_addr = c.scratch() + 512;
    b.extend_from_slice(&auxv_addr.to_le_bytes());
    b.extend_from_slice(&((p.auxv.len() * 8) as u32).to_le_bytes());
    b.extend_from_slice(&(exe_fd as u32).to_le_bytes());
    let map_len = b.len() as u64;
    b.resize(512, 0);
    for a in &p.auxv {
        b.extend_from_slice(&a.to_le_bytes());
    }
    let addr = c.put_bytes(&b)?;
    let r = c.inj.call(
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        [PR_SET_MM, PR_SET_MM_MAP, addr, map_len, 0, 0],
    );
    if exe_fd != u32::MAX as u64 {
        c.inj
            .call("close", libc::SYS_close, [exe_fd, 0, 0, 0, 0, 0])?;
    }
    r.map(|_| ())
}

/// Create one memfd per shared memory object in the root task (fds from
/// `base` on) before any child is forked, so every task inherits it.
pub fn create_shared(
    root: &Injector,
    scratch: u64,
    objs: &[crate::image::SharedMemObject],
    base: i32,
) -> Result<std::collections::HashMap<u64, i32>> {
    let mut out = std::collections::HashMap::new();
    crate::ptrace::write_mem(root.tid, scratch, b"krg-shm\0")?;
    for (n, &crate::image::SharedMemObject { id, size }) in objs.iter().enumerate() {
        let fd = root.call(
            "memfd_create",
            libc::SYS_memfd_create,
            [scratch, 0, 0, 0, 0, 0],
        )?;
        root.call("ftruncate", libc::SYS_ftruncate, [fd, size, 0, 0, 0, 0])?;
        let want = base + n as i32;
        if fd != want as u64 {
            root.call("dup2", libc::SYS_dup2, [fd, want as u64, 0, 0, 0, 0])?;
            root.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        }
        out.insert(id, want);
    }
    Ok(out)
}

/// Make, in the root task before any child is forked, one unnamed file
/// per deleted file the tree maps (see [`super::rootfile::unnamed_file`]), at
/// fds from `base` on, so every task inherits it; fds of the same file
/// (by inode) open it too. Returns inode → fd.
pub fn create_deleted(
    root: &Injector,
    scratch: u64,
    mms: &[&crate::image::MmImage],
    base: i32,
) -> Result<std::collections::HashMap<u64, i32>> {
    let mut out = std::collections::HashMap::new();
    for v in mms.iter().flat_map(|m| &m.vmas) {
        let VmaKind::DeletedFile {
            path,
            ino,
            mode,
            size,
            ..
        } = &v.kind
        else {
            continue;
        };
        if out.contains_key(ino) {
            continue;
        }
        // the content is on the first mapping of the file in the tree
        let content = mms
            .iter()
            .flat_map(|m| &m.vmas)
            .find_map(|w| match &w.kind {
                VmaKind::DeletedFile {
                    ino: i, content, ..
                } if i == ino && !content.is_empty() => Some(content.as_slice()),
                _ => None,
            })
            .unwrap_or(&[]);
        if content.len() as u64 != *size {
            return Err(ChkptError::Inconsistent(format!(
                "deleted file {path} is {size} bytes, but the image holds {} of them",
                content.len()
            )));
        }
        let fd = super::rootfile::unnamed_file(root, scratch, path, *mode, content)?;
        let want = base + out.len() as i32;
        if fd != want as u64 {
            root.call("dup2", libc::SYS_dup2, [fd, want as u64, 0, 0, 0, 0])?;
            root.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        }
        out.insert(*ino, want);
    }
    Ok(out)
}

/// The address space, filled but for the lazy pieces (registered later,
/// once the task's children are forked: see [`TaskCtx::restore`]).
pub fn restore(c: &TaskCtx) -> Result<()> {
    // The restarter's rseq area is about to disappear: the kernel would
    // kill the task with SIGSEGV at the next return to user space.
    let rseq = crate::ptrace::rseq_config(c.inj.tid)?;
    if rseq.addr != 0 {
        c.inj.call(
            "rseq(unregister)",
            libc::SYS_rseq,
            [rseq.addr, rseq.len as u64, 1, rseq.sig as u64, 0, 0],
        )?;
    }
    move_specials(c)?;
    let kept = inherited(c);
    unmap_restarter(c, &kept)?;
    let mut files = MapFiles::default();
    for v in &c.mm.vmas {
        let made = if kept.iter().any(|k| k.start == v.start) {
            reuse_vma(c, v)
        } else {
            create_vma(c, v, &mut files)
        };
        made.map_err(|e| ChkptError::Mapping {
            start: v.start,
            end: v.end,
            kind: format!("{:?}", v.kind),
            source: Box::new(e),
        })?;
    }
    files.close_all(c)?;
    fill::copy_in(c, c.copied)?;
    for v in c.mm.vmas.iter().filter(|v| copied(c, v)) {
        protect(c, v).map_err(|e| ChkptError::Mapping {
            start: v.start,
            end: v.end,
            kind: format!("{:?}", v.kind),
            source: Box::new(e),
        })?;
    }
    set_mm_map(c, !kept.is_empty())
}
