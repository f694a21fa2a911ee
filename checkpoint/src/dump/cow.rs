//! Pages a child shares copy-on-write with its parent since a fork (both
//! still map the one physical page): found while the tree is frozen and
//! saved as [`RunData::Cow`](crate::image::RunData::Cow), so that restore
//! forks the child from its restored parent and keeps them shared instead
//! of making two private copies (a forked server's memory would double).
//!
//! Root reads the frame numbers in /proc/PID/pagemap: the child's page is
//! the parent's when both map the same frame at the same address. Others
//! see no frame numbers (the kernel hides them); for them a page counts as
//! shared when it is mapped more than once in both processes (pagemap's
//! "exclusively mapped" bit, shown to everyone, is clear in both) and has
//! the same content in both — which two pages with equal content that a
//! third process shares with each could also pass (documented).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::{ChkptError, Result};
use crate::image::{Vma, PAGE};

use super::precopy::ProcMem;
use super::task::TaskDump;

const PRESENT: u64 = 1 << 63;
const EXCLUSIVE: u64 = 1 << 56;
const PFN: u64 = (1 << 55) - 1;

/// Pagemap entries read at a time (64 KiB).
const BATCH: u64 = 8192;

/// The pages each child of the tree shares with its parent since a fork,
/// found while frozen, marked so in its page map.
pub fn mark(tasks: &[TaskDump], mems: &mut HashMap<i32, ProcMem>) -> Result<()> {
    for d in tasks {
        let Some(parent) = tasks.iter().find(|p| p.task.pid == d.task.ppid) else {
            continue;
        };
        let (Some(cm), Some(pm)) = (mems.get(&d.task.pid), mems.get(&parent.task.pid)) else {
            continue;
        };
        let mut maybe = Vec::new();
        for (s, e) in inherited(&d.mm.vmas, &parent.mm.vmas) {
            maybe.extend(intersect(&cm.held_in(s, e), &pm.held_in(s, e)));
        }
        if maybe.is_empty() {
            continue;
        }
        let shared = shared_pages(d.task.pid, parent.task.pid, &maybe)?;
        if let Some(m) = mems.get_mut(&d.task.pid) {
            m.mark_cow(&shared);
        }
    }
    Ok(())
}

/// The mappings the child may share pages of with its parent: private,
/// anonymous or of a file, and mapped by the parent at the same place in
/// the same way — what a fork leaves, and what restore can hand down.
pub fn inherited(child: &[Vma], parent: &[Vma]) -> Vec<(u64, u64)> {
    child
        .iter()
        .filter(|v| v.inheritable())
        .filter(|v| parent.iter().any(|p| p.same_mapping(v)))
        .map(|v| (v.start, v.end))
        .collect()
}

/// The parts of sorted ranges `a` inside sorted ranges `b`.
pub fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (s, e) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if s < e {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Of `ranges` (sorted, page aligned), the pages `child` shares with
/// `parent`, as sorted ranges.
pub fn shared_pages(child: i32, parent: i32, ranges: &[(u64, u64)]) -> Result<Vec<(u64, u64)>> {
    let cmap = open(child)?;
    let pmap = open(parent)?;
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(s, e) in ranges {
        let mut at = s;
        while at < e {
            let n = ((e - at) / PAGE).min(BATCH);
            let c = entries(&cmap, child, at, n)?;
            let p = entries(&pmap, parent, at, n)?;
            for (i, (&ce, &pe)) in c.iter().zip(&p).enumerate() {
                let addr = at + i as u64 * PAGE;
                if same_page(ce, pe, || same_content(child, parent, addr))? {
                    match out.last_mut() {
                        Some(l) if l.1 == addr => l.1 = addr + PAGE,
                        _ => out.push((addr, addr + PAGE)),
                    }
                }
            }
            at += n * PAGE;
        }
    }
    Ok(out)
}

/// Do pagemap entries `c` (child) and `p` (parent) show one shared page?
/// `content` compares the pages when frame numbers are hidden.
fn same_page(c: u64, p: u64, content: impl FnOnce() -> Result<bool>) -> Result<bool> {
    if c & PRESENT == 0 || p & PRESENT == 0 || c & EXCLUSIVE != 0 || p & EXCLUSIVE != 0 {
        return Ok(false);
    }
    match (c & PFN, p & PFN) {
        (0, _) | (_, 0) => content(),
        (a, b) => Ok(a == b),
    }
}

fn open(pid: i32) -> Result<File> {
    let path = format!("/proc/{pid}/pagemap");
    File::open(&path).map_err(|e| ChkptError::io(&path, e))
}

/// `n` pagemap entries from address `at`.
fn entries(f: &File, pid: i32, at: u64, n: u64) -> Result<Vec<u64>> {
    let mut b = vec![0u8; (n * 8) as usize];
    f.read_exact_at(&mut b, at / PAGE * 8)
        .map_err(|err| ChkptError::Sys {
            op: "reading pagemap".into(),
            pid,
            err,
        })?;
    Ok(b.chunks_exact(8)
        .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
        .collect())
}

fn same_content(child: i32, parent: i32, addr: u64) -> Result<bool> {
    let a = crate::ptrace::read_mem(child, addr, PAGE as usize)?;
    let b = crate::ptrace::read_mem(parent, addr, PAGE as usize)?;
    Ok(a == b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::VmaKind;

    #[test]
    fn pages_are_shared_only_when_both_map_one_frame() {
        let no = || -> Result<bool> { panic!("content compared with frames visible") };
        let e = |pfn: u64, excl: bool| PRESENT | pfn | if excl { EXCLUSIVE } else { 0 };
        assert!(same_page(e(7, false), e(7, false), no).unwrap());
        assert!(!same_page(e(7, false), e(8, false), no).unwrap());
        // a page mapped once is nobody else's
        assert!(!same_page(e(7, true), e(7, false), no).unwrap());
        // absent in one of them
        assert!(!same_page(7, e(7, false), no).unwrap());
        // frames hidden (not root): the content decides
        assert!(same_page(e(0, false), e(0, false), || Ok(true)).unwrap());
        assert!(!same_page(e(0, false), e(0, false), || Ok(false)).unwrap());
    }

    #[test]
    fn range_intersections() {
        let a = [(0, 10), (20, 30), (40, 50)];
        let b = [(5, 25), (28, 45)];
        assert_eq!(
            intersect(&a, &b),
            vec![(5, 10), (20, 25), (28, 30), (40, 45)]
        );
        assert_eq!(intersect(&a, &[]), vec![]);
    }

    #[test]
    fn only_mappings_the_parent_has_alike_are_inherited() {
        let v = |start: u64, kind: VmaKind, shared: bool| Vma {
            start,
            end: start + 4 * PAGE,
            prot: 3,
            shared,
            kind,
            runs: Vec::new(),
        };
        let parent = [
            v(0x10000, VmaKind::Anon, false),
            v(0x20000, VmaKind::Heap, false),
            v(0x40000, VmaKind::SharedAnon { id: 1, pgoff: 0 }, true),
        ];
        let child = [
            v(0x10000, VmaKind::Anon, false),
            v(0x20000, VmaKind::Anon, false),
            v(0x30000, VmaKind::Anon, false),
            v(0x40000, VmaKind::SharedAnon { id: 1, pgoff: 0 }, true),
        ];
        assert_eq!(inherited(&child, &parent), vec![(0x10000, 0x14000)]);
    }
}
