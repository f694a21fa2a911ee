//! A task's mappings as the image records them (refusing what restore
//! could not rebuild), its shared memory (copied while frozen) and the mm
//! parameters. Private memory is [`precopy`](super::precopy)'s.

use crate::error::{ChkptError, Result};
use crate::image::{
    self, MmParams, PageRun, RunData, SharedMemObject, Vma, VmaKind, MAX_DELETED_BYTES, PAGE,
};
use crate::procfs::{self, MapLine};

use super::copy::{DataFile, Job};

/// Ranges (offset, length) of each shared memory object already saved.
pub type SharedSeen = std::collections::HashMap<u64, Vec<(u64, u64)>>;

/// Size of every shared memory object seen: the end of its furthest range.
pub fn shared_sizes(seen: &SharedSeen) -> Vec<SharedMemObject> {
    let mut v: Vec<SharedMemObject> = seen
        .iter()
        .filter(|(&id, _)| id & (1u64 << 63) == 0)
        .map(|(&id, r)| SharedMemObject {
            id,
            size: r.iter().map(|x| x.0 + x.1).max().unwrap_or(0),
        })
        .collect();
    v.sort_unstable_by_key(|o| o.id);
    v
}

/// Turn /proc/PID/maps into VMAs, refusing what restore could not rebuild.
pub fn vmas(pid: i32, maps: &[MapLine]) -> Result<Vec<Vma>> {
    maps.iter().map(|m| vma(pid, m)).collect()
}

fn vma(pid: i32, m: &MapLine) -> Result<Vma> {
    let refuse = |why: &str| {
        Err(ChkptError::unsupported(
            pid,
            format!("mapping {:x}-{:x} {}", m.start, m.end, m.path),
            why.to_string(),
        ))
    };
    let kind = match m.path.as_str() {
        "[heap]" => VmaKind::Heap,
        "[stack]" => VmaKind::Stack,
        "[vdso]" => VmaKind::Vdso,
        "[vvar]" => VmaKind::Vvar,
        "[vvar_vclock]" => VmaKind::VvarVclock,
        "[vsyscall]" => VmaKind::Vsyscall,
        p if p.starts_with("/SYSV") => {
            let seg = super::sysv::describe(m.inode as i32)?;
            if m.offset != 0 || image::page_align(seg.size) != m.end - m.start {
                return refuse("a SysV shm segment mapped only in part");
            }
            VmaKind::SysvShm {
                shmid: m.inode as i32,
            }
        }
        p if m.shared()
            && (p.starts_with("/dev/zero (deleted)")
                || p.starts_with("[anon_shmem")
                || (p.starts_with("/memfd:") && p.ends_with(" (deleted)"))) =>
        {
            VmaKind::SharedAnon {
                id: m.inode,
                pgoff: m.offset,
            }
        }
        _ if m.shared() && m.inode == 0 => return refuse("unknown kind of shared mapping"),
        p if p.is_empty() || p.starts_with("[anon:") => VmaKind::Anon,
        p if p.ends_with(" (deleted)") && p.starts_with('/') => deleted_file(pid, m, p)?,
        p if p.starts_with('/') => {
            let meta = std::fs::metadata(p).map_err(|e| ChkptError::io(p, e))?;
            if !meta.is_file() {
                return refuse("only regular files can be mapped");
            }
            VmaKind::File {
                path: p.to_string(),
                offset: m.offset,
                size: meta.len(),
            }
        }
        _ => return refuse("unknown kind of mapping"),
    };
    Ok(Vma {
        start: m.start,
        end: m.end,
        prot: m.prot(),
        shared: m.shared(),
        kind,
        runs: Vec::new(),
    })
}

/// A mapping of a regular file deleted since: its content, read through
/// /proc/PID/map_files (root only), up to [`MAX_DELETED_BYTES`].
fn deleted_file(pid: i32, m: &MapLine, p: &str) -> Result<VmaKind> {
    use std::os::unix::fs::MetadataExt;
    let what = || format!("mapping {:x}-{:x} {}", m.start, m.end, p);
    let link = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let file = std::fs::File::open(&link).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => ChkptError::unsupported(
            pid,
            what(),
            "the mapped file was deleted: only root can read it back (run checkpoint as root)",
        ),
        _ => ChkptError::io(&link, e),
    })?;
    let meta = file.metadata().map_err(|e| ChkptError::io(&link, e))?;
    if !meta.is_file() {
        return Err(ChkptError::unsupported(
            pid,
            what(),
            "only deleted regular files are saved",
        ));
    }
    if meta.len() > MAX_DELETED_BYTES {
        return Err(ChkptError::unsupported(
            pid,
            what(),
            format!(
                "the mapped file was deleted and is {} bytes long: its content is saved up to {} MiB",
                meta.len(),
                MAX_DELETED_BYTES >> 20
            ),
        ));
    }
    let mut content = Vec::with_capacity(meta.len() as usize);
    std::io::Read::read_to_end(&mut &file, &mut content).map_err(|e| ChkptError::io(&link, e))?;
    Ok(VmaKind::DeletedFile {
        path: p.trim_end_matches(" (deleted)").to_string(),
        offset: m.offset,
        ino: meta.ino(),
        mode: meta.mode() & 0o7777,
        size: content.len() as u64,
        content,
    })
}

/// Keep the content of each deleted mapped file on its first mapping in
/// the tree only (restart fills the file once).
pub fn dedupe_deleted<'a>(all: impl Iterator<Item = &'a mut Vma>) {
    let mut seen = Vec::new();
    for v in all {
        if let VmaKind::DeletedFile { ino, content, .. } = &mut v.kind {
            if seen.contains(ino) {
                *content = Vec::new();
            } else {
                seen.push(*ino);
            }
        }
    }
}

/// Plan the copy of the shared memory mappings (MAP_SHARED anonymous,
/// memfd, SysV) among `vmas`, done while the tree is frozen: a fork or a
/// write-protect tracker would not see a page another task writes. Each
/// range of an object is saved whole (its pages may be in the object without
/// being mapped in this process), once for the whole tree. Their runs get
/// their CRCs from [`shared_crcs`] once copied.
pub fn shared_jobs(vmas: &mut [Vma], shared: &mut SharedSeen, data: &mut DataFile) -> Vec<Job> {
    let mut jobs = Vec::new();
    for v in vmas.iter_mut() {
        let (id, pgoff) = match v.kind {
            VmaKind::SharedAnon { id, pgoff } => (id, pgoff),
            // SysV ids live in another space: keep them apart from shmem inodes
            VmaKind::SysvShm { shmid } => ((1u64 << 63) | shmid as u64, 0),
            _ => continue,
        };
        let len = v.end - v.start;
        let seen = shared.entry(id).or_default();
        if !seen
            .iter()
            .any(|&(o, l)| o <= pgoff && pgoff + len <= o + l)
        {
            let slot = data.alloc(len / PAGE);
            v.runs.push(PageRun {
                addr: v.start,
                pages: len / PAGE,
                data: RunData::Here {
                    off: slot * PAGE,
                    crcs: Vec::new(),
                },
            });
            jobs.push(Job {
                addr: v.start,
                len,
                slot,
            });
        }
        seen.push((pgoff, len));
    }
    jobs
}

/// The CRCs of the shared memory runs planned by [`shared_jobs`].
pub fn shared_crcs(vmas: &mut [Vma], data: &DataFile) {
    for v in vmas.iter_mut().filter(|v| v.shared) {
        for r in &mut v.runs {
            if let RunData::Here { off, crcs } = &mut r.data {
                *crcs = super::precopy::block_crcs(data, r.addr, r.pages, *off / PAGE);
            }
        }
    }
}

/// The mm parameters prctl(PR_SET_MM_MAP) needs at restore.
pub fn params(pid: i32, brk: u64) -> Result<MmParams> {
    let stat = procfs::parse_stat(&procfs::read_to_string(format!("/proc/{pid}/stat"))?)?;
    let path = format!("/proc/{pid}/auxv");
    let auxv = std::fs::read(&path).map_err(|e| ChkptError::io(&path, e))?;
    let mut p = procfs::mm_params(&stat, &auxv);
    p.brk = brk;
    Ok(p)
}
