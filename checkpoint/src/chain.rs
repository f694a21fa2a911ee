//! `checkpoint rm PID SN`: removing one SN of a chain while every later SN
//! stays restorable.
//!
//! Only the SN right after the removed one can refer to it (an SN refers
//! to its parent, and the parent of SN k+1 is k). So its memory files are
//! rewritten first: the pages it kept in SN k are copied in from k's files
//! (or, where k kept them in its own parent, still refer to that one), and
//! it now names k's parent. Each rewritten file replaces the old one by
//! `renameat`, whole; SN k is removed only once none refers to it, global
//! file first. Its number becomes a tombstone (see [`store`](crate::store)).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::checked_dir::CheckedDir;
use crate::error::{ChkptError, Result};
use crate::image::{
    self, FileKind, GlobalImage, MmImage, Names, NodeImage, PageRun, RunData, TaskImage, PAGE,
};
use crate::store;

/// What `rm` did.
#[derive(Debug)]
pub struct Removed {
    /// The SN whose memory files took over pages of the removed one.
    pub merged_into: Option<u32>,
    /// Bytes copied into it.
    pub bytes: u64,
}

/// Remove SN `sn` of the application directory `dir`, for `caller`.
pub fn remove(dir: &Path, sn: u32, caller: u32) -> Result<Removed> {
    let dir = CheckedDir::open(dir)?;
    let owner = dir.stat()?.st_uid;
    if caller != 0 && caller != owner {
        return Err(ChkptError::Permission(format!(
            "{} belongs to uid {owner}",
            dir.path().display()
        )));
    }
    let _lock = store::lock(&dir)?;
    let hist = store::History::read(&dir);
    if !hist.committed.contains(&sn) {
        return Err(ChkptError::NoSuchCheckpoint {
            dir: dir.path().to_path_buf(),
            sn,
        });
    }
    let next = hist.committed.iter().copied().find(|&s| s > sn);
    let mut bytes = 0;
    let mut merged_into = None;
    if let Some(j) = next {
        // Everything SN j needs is checked (CRCs too) before pages move:
        // a corrupted page must not come out of the merge with a new CRC.
        crate::restore::load(dir.path(), j, None)?;
        bytes = merge_into(&dir, sn, j)?;
        merged_into = Some(j);
    }
    store::tombstone(&dir, sn)?;
    let names = Names { sn };
    dir.remove_file(&names.global())?;
    for name in dir.entries()? {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with('.') && store::sn_of(name) == Some(sn) {
            dir.remove_file(name)?;
        }
    }
    Ok(Removed { merged_into, bytes })
}

/// Make SN `j` independent of SN `k` (its parent).
fn merge_into(dir: &CheckedDir, k: u32, j: u32) -> Result<u64> {
    let nj = Names { sn: j };
    let (g, gfile) = image::read_in::<GlobalImage>(dir, &nj.global(), FileKind::Global)?;
    let owner = (gfile.uid, gfile_gid(&gfile.file)?);
    let mut global = g.meta;
    let stage = format!(".tmp-rm-v{k}");
    let _ = dir.remove_flat_tree(&stage);
    let st = store::private_dir(dir, &stage, "removing a checkpoint")?;
    let mut bytes = 0;
    let mut views = Vec::new();
    let mut first_node = None;
    for node in image::nodes_here(&global, dir, &nj) {
        let n: NodeImage = image::read_in(dir, &nj.node(node), FileKind::Node)?.0.meta;
        for te in &n.tasks {
            let mj: MmImage = image::read_in(dir, &nj.task_mm(te.pid), FileKind::Mm)?
                .0
                .meta;
            let mm = if mj.parent == Some(k) {
                let (mm, copied) = merged_mm(dir, &st, k, j, te.pid)?;
                bytes += copied;
                mm
            } else {
                mj
            };
            let t: TaskImage = image::read_in(dir, &nj.task(te.pid), FileKind::Task)?
                .0
                .meta;
            views.push((t, mm));
        }
        first_node.get_or_insert(n);
    }
    global.parent = views.iter().find_map(|(_, m)| m.parent);
    image::write_small(&st, &nj.global(), FileKind::Global, &global)?;
    if let Some(n) = &first_node {
        let refs: Vec<_> = views.iter().map(|(t, m)| (t, m)).collect();
        let desc = crate::describe::description(&global, n, &refs);
        st.create_file(&nj.description())?
            .write_all(desc.as_bytes())
            .map_err(|e| ChkptError::io(st.join(&nj.description()), e))?;
    }
    for name in st.entries()? {
        let Some(name) = name.to_str() else { continue };
        st.chown_file(name, owner.0, owner.1)?;
        st.rename_into(name, dir, name)?;
    }
    dir.remove_dir_if_same(&stage, &st)?;
    Ok(bytes)
}

fn gfile_gid(f: &File) -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(f.metadata()
        .map_err(|e| ChkptError::io("global file", e))?
        .gid())
}

/// SN `j`'s memory image of `pid` (which refers to SN `k`), with what it
/// kept in SN `k` copied in, written (data and metadata) into `st`.
/// Returns it and the bytes copied.
fn merged_mm(
    dir: &CheckedDir,
    st: &CheckedDir,
    k: u32,
    j: u32,
    pid: i32,
) -> Result<(MmImage, u64)> {
    let (dj, fj) = image::read_in::<MmImage>(dir, &Names { sn: j }.task_mm(pid), FileKind::Mm)?;
    let name = Names { sn: j }.task_mm(pid);
    let out = st.create_file(&name)?;
    let mut w = Writer {
        out,
        path: st.join(&name),
        at: crate::image::PAGE,
        copied: 0,
    };
    let mut mm = dj.meta;
    let (dk, fk) = image::read_in::<MmImage>(dir, &Names { sn: k }.task_mm(pid), FileKind::Mm)?;
    for v in &mut mm.vmas {
        let mut runs = Vec::new();
        for r in &v.runs {
            match &r.data {
                RunData::Here { off, .. } => {
                    runs.push(w.copy_run(&fj.file, dj.data_off + off, r.addr, r.pages)?);
                }
                RunData::Cow => runs.push(r.clone()),
                RunData::Parent => {
                    runs.extend(w.take_parent(&dk.meta, &fk.file, dk.data_off, r)?)
                }
            }
        }
        v.runs = runs;
    }
    let still = mm
        .vmas
        .iter()
        .flat_map(|v| &v.runs)
        .any(|r| r.data == RunData::Parent);
    mm.parent = dk.meta.parent.filter(|_| still);
    let data_len = w.at - PAGE;
    image::finish_with_data(&w.out, &w.path, FileKind::Mm, &mm, PAGE, data_len)?;
    Ok((mm, w.copied))
}

/// Writes the data section of a new memory file.
struct Writer {
    out: File,
    path: std::path::PathBuf,
    /// Where the next page goes (absolute offset).
    at: u64,
    copied: u64,
}

impl Writer {
    /// Copy `pages` pages at `src_off` of `src` (which were at `addr`):
    /// a new run, with its block CRCs.
    fn copy_run(&mut self, src: &File, src_off: u64, addr: u64, pages: u64) -> Result<PageRun> {
        let off = self.at - PAGE;
        let (first, last) = image::run_blocks(addr, pages);
        let mut crcs = Vec::new();
        let mut buf = vec![0u8; image::CRC_BLOCK as usize];
        for b in first..=last {
            let (s, len) = image::block_part(addr, pages, b);
            let chunk = &mut buf[..len as usize];
            src.read_exact_at(chunk, src_off + (s - addr))
                .map_err(|e| ChkptError::io("page data", e))?;
            crcs.push(crc32fast::hash(chunk));
            self.out
                .write_all_at(chunk, self.at)
                .map_err(|e| ChkptError::io(&self.path, e))?;
            self.at += len;
            self.copied += len;
        }
        Ok(PageRun {
            addr,
            pages,
            data: RunData::Here { off, crcs },
        })
    }

    /// The runs of `[r.addr, +r.pages)` as the parent image `pm` has them:
    /// its own pages copied here, its parent's still referred to.
    fn take_parent(
        &mut self,
        pm: &MmImage,
        pf: &File,
        pdata: u64,
        r: &PageRun,
    ) -> Result<Vec<PageRun>> {
        let (a, b) = (r.addr, r.addr + r.pages * PAGE);
        let mut out = Vec::new();
        let mut at = a;
        let mut prs: Vec<&PageRun> = pm
            .vmas
            .iter()
            .filter(|v| !v.shared)
            .flat_map(|v| &v.runs)
            .filter(|p| p.addr < b && p.addr + p.pages * PAGE > a)
            .collect();
        prs.sort_by_key(|p| p.addr);
        for p in prs {
            let (s, e) = (p.addr.max(a), (p.addr + p.pages * PAGE).min(b));
            if s != at {
                break;
            }
            match &p.data {
                RunData::Here { off, .. } => {
                    out.push(self.copy_run(pf, pdata + off + (s - p.addr), s, (e - s) / PAGE)?)
                }
                RunData::Parent => out.push(PageRun {
                    addr: s,
                    pages: (e - s) / PAGE,
                    data: RunData::Parent,
                }),
                // an SN never keeps such pages for the next one
                RunData::Cow => break,
            }
            at = e;
        }
        if at != b {
            return Err(ChkptError::Inconsistent(format!(
                "pages {at:#x}-{b:#x} kept in the parent SN are not there"
            )));
        }
        Ok(out)
    }
}
