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

use crate::ranges::{intersect, minus};

use super::precopy::ProcMem;
use super::task::TaskDump;

const PRESENT: u64 = 1 << 63;
const EXCLUSIVE: u64 = 1 << 56;
const PFN: u64 = (1 << 55) - 1;

/// Pages looked at a time: 4 KiB of pagemap, and at most 2 MiB of each
/// process's memory when contents must be compared.
const BATCH: u64 = 512;

/// The pages each child of the tree shares with its parent since a fork,
/// found while frozen, marked so in its page map.
pub fn mark(tasks: &[TaskDump], mems: &mut HashMap<i32, ProcMem>) -> Result<()> {
    for d in tasks {
        let shared = match tasks.iter().find(|p| p.task.pid == d.task.ppid) {
            Some(parent) => shared_with(d, parent, mems)?,
            None => Vec::new(),
        };
        let Some(m) = mems.get_mut(&d.task.pid) else {
            continue;
        };
        // pages shared when the last SN was taken (and not written since,
        // or the tracker would have said so) that are not any more (the
        // parent wrote its copy, or went): saved now, while frozen
        let gone = minus(&m.cow_ranges(), &shared);
        m.copy_now(&gone)?;
        m.mark_cow(&shared);
    }
    Ok(())
}

/// The pages `d` shares with `parent`, of those both hold.
fn shared_with(
    d: &TaskDump,
    parent: &TaskDump,
    mems: &HashMap<i32, ProcMem>,
) -> Result<Vec<(u64, u64)>> {
    let (Some(cm), Some(pm)) = (mems.get(&d.task.pid), mems.get(&parent.task.pid)) else {
        return Ok(Vec::new());
    };
    let mut maybe = Vec::new();
    for (s, e) in inherited(&d.mm.vmas, &parent.mm.vmas) {
        maybe.extend(intersect(&cm.held_in(s, e), &pm.held_in(s, e)));
    }
    if maybe.is_empty() {
        return Ok(Vec::new());
    }
    // compared before the freeze, and written by neither since
    let equal = minus(
        &minus(&cm.pre_equal, &cm.frozen_written()),
        &pm.frozen_written(),
    );
    shared_pages(d.task.pid, parent.task.pid, &maybe, &equal)
}

/// Before the freeze, where frame numbers are hidden (not root): the
/// pages each child and its parent both map more than once with the same
/// content, in mappings alike in both, compared while the job runs. The
/// freeze then reads only the pages written since (see [`shared_with`]):
/// comparing 1 GiB of pages while frozen would be most of a second.
pub fn compare_early(tree: &[(i32, i32)], mems: &mut HashMap<i32, ProcMem>) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return;
    }
    for &(pid, ppid) in tree {
        if !tree.iter().any(|t| t.0 == ppid) {
            continue;
        }
        let (Some(cm), Some(pm)) = (mems.get(&pid), mems.get(&ppid)) else {
            continue;
        };
        let maps = |p: i32| {
            crate::procfs::read_to_string(format!("/proc/{p}/maps"))
                .and_then(|t| crate::procfs::parse_maps(&t))
        };
        // (a process gone meanwhile: nothing compared, the freeze does it)
        let (Ok(mine), Ok(theirs)) = (maps(pid), maps(ppid)) else {
            continue;
        };
        let mut maybe = Vec::new();
        for m in mine.iter().filter(|m| !m.shared()) {
            let alike = theirs.iter().any(|t| {
                t.start == m.start
                    && t.end == m.end
                    && !t.shared()
                    && t.path == m.path
                    && t.offset == m.offset
            });
            if alike {
                maybe.extend(intersect(
                    &cm.held_in(m.start, m.end),
                    &pm.held_in(m.start, m.end),
                ));
            }
        }
        if maybe.is_empty() {
            continue;
        }
        let Ok(equal) = shared_pages(pid, ppid, &maybe, &[]) else {
            continue;
        };
        if let Some(m) = mems.get_mut(&pid) {
            m.pre_equal = equal;
        }
    }
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

/// Of `ranges` (sorted, page aligned), the pages `child` shares with
/// `parent`, as sorted ranges. Pages of `equal` (sorted) are known to
/// have the same content in both (compared before the freeze, neither
/// written since): where frames are hidden, they are not compared again.
pub fn shared_pages(
    child: i32,
    parent: i32,
    ranges: &[(u64, u64)],
    equal: &[(u64, u64)],
) -> Result<Vec<(u64, u64)>> {
    let two = [Proc::open(child)?, Proc::open(parent)?];
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut k = 0;
    for &(s, e) in ranges {
        let mut at = s;
        while at < e {
            let n = ((e - at) / PAGE).min(BATCH);
            let [c, p] = [two[0].entries(at, n)?, two[1].entries(at, n)?];
            let mut verdicts: Vec<Verdict> =
                c.iter().zip(&p).map(|(&c, &p)| verdict(c, p)).collect();
            for (i, v) in verdicts.iter_mut().enumerate() {
                let addr = at + i as u64 * PAGE;
                while equal.get(k).is_some_and(|r| r.1 <= addr) {
                    k += 1;
                }
                let known = equal.get(k).is_some_and(|r| r.0 <= addr);
                if *v == Verdict::SameIfEqual && known {
                    *v = Verdict::Shared;
                }
            }
            let contents = Contents::read(&two, at, &verdicts)?;
            for (i, v) in verdicts.iter().enumerate() {
                let addr = at + i as u64 * PAGE;
                let shared = match v {
                    Verdict::Shared => true,
                    Verdict::Private => false,
                    Verdict::SameIfEqual => contents.equal(addr),
                };
                if shared {
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

/// What pagemap entries `c` (child) and `p` (parent) say of one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Both map the same frame.
    Shared,
    /// Not the same page.
    Private,
    /// Frames hidden (not root), both mapped more than once: the same
    /// page if the contents are equal.
    SameIfEqual,
}

fn verdict(c: u64, p: u64) -> Verdict {
    if c & PRESENT == 0 || p & PRESENT == 0 || c & EXCLUSIVE != 0 || p & EXCLUSIVE != 0 {
        return Verdict::Private;
    }
    match (c & PFN, p & PFN) {
        (0, _) | (_, 0) => Verdict::SameIfEqual,
        (a, b) if a == b => Verdict::Shared,
        _ => Verdict::Private,
    }
}

/// A process's pagemap and memory, open.
struct Proc {
    pid: i32,
    pagemap: File,
    mem: File,
}

impl Proc {
    fn open(pid: i32) -> Result<Self> {
        let f = |what: &str| {
            let path = format!("/proc/{pid}/{what}");
            File::open(&path).map_err(|e| ChkptError::io(&path, e))
        };
        Ok(Proc {
            pid,
            pagemap: f("pagemap")?,
            mem: f("mem")?,
        })
    }

    /// `n` pagemap entries from address `at`.
    fn entries(&self, at: u64, n: u64) -> Result<Vec<u64>> {
        entries(&self.pagemap, self.pid, at, n)
    }

    fn read(&self, at: u64, buf: &mut [u8]) -> Result<()> {
        self.mem
            .read_exact_at(buf, at)
            .map_err(|err| ChkptError::Sys {
                op: format!("reading memory at {at:#x}"),
                pid: self.pid,
                err,
            })
    }
}

/// Both processes' memory over the span of a batch's pages whose content
/// decides (read through /proc/PID/mem: it never unshares a page).
struct Contents {
    start: u64,
    child: Vec<u8>,
    parent: Vec<u8>,
}

impl Contents {
    fn read(two: &[Proc; 2], at: u64, verdicts: &[Verdict]) -> Result<Self> {
        let needed = |v: &&Verdict| **v == Verdict::SameIfEqual;
        let first = verdicts.iter().position(|v| needed(&v));
        let last = verdicts.iter().rposition(|v| needed(&v));
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(Contents {
                start: at,
                child: Vec::new(),
                parent: Vec::new(),
            });
        };
        let start = at + first as u64 * PAGE;
        let len = (last - first + 1) * PAGE as usize;
        let (mut child, mut parent) = (vec![0u8; len], vec![0u8; len]);
        two[0].read(start, &mut child)?;
        two[1].read(start, &mut parent)?;
        Ok(Contents {
            start,
            child,
            parent,
        })
    }

    fn equal(&self, addr: u64) -> bool {
        let Some(off) = addr.checked_sub(self.start).map(|o| o as usize) else {
            return false;
        };
        let end = off + PAGE as usize;
        end <= self.child.len() && self.child[off..end] == self.parent[off..end]
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::VmaKind;

    #[test]
    fn pages_are_shared_only_when_both_map_one_frame() {
        let e = |pfn: u64, excl: bool| PRESENT | pfn | if excl { EXCLUSIVE } else { 0 };
        assert_eq!(verdict(e(7, false), e(7, false)), Verdict::Shared);
        assert_eq!(verdict(e(7, false), e(8, false)), Verdict::Private);
        // a page mapped once is nobody else's
        assert_eq!(verdict(e(7, true), e(7, false)), Verdict::Private);
        // absent in one of them
        assert_eq!(verdict(7, e(7, false)), Verdict::Private);
        // frames hidden (not root): the content decides
        assert_eq!(verdict(e(0, false), e(0, false)), Verdict::SameIfEqual);
        assert_eq!(verdict(e(0, true), e(0, false)), Verdict::Private);
    }

    #[test]
    fn contents_compare_page_by_page() {
        let mut child = vec![1u8; 3 * PAGE as usize];
        let parent = child.clone();
        child[PAGE as usize + 5] = 9;
        let c = Contents {
            start: 0x10000,
            child,
            parent,
        };
        assert!(c.equal(0x10000));
        assert!(!c.equal(0x10000 + PAGE));
        assert!(c.equal(0x10000 + 2 * PAGE));
        // outside what was read
        assert!(!c.equal(0x10000 + 3 * PAGE));
        assert!(!c.equal(0x0f000));
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
