//! Saving a process's private memory mostly while it runs.
//!
//! Every private mapping is registered with the process's tracker (see
//! [`track`](super::track)). A round asks the kernel which known pages were
//! written (or dropped) since the last round — `PAGEMAP_SCAN` with
//! `PAGE_IS_WRITTEN`, which protects them again in the same walk — and which
//! pages appeared where none was known; protects the new ones; and copies
//! what changed. A page copied after being protected and not reported
//! written since holds what the process has; so the last round, run while
//! the tree is frozen, copies only what changed during the previous one,
//! and costs a page-table walk (about 1 ms per GiB) plus that.
//!
//! Pages unchanged since the parent SN (the tracker was there all along,
//! and the SN it last protected at is the parent) are not copied at all:
//! they stay [`Page::Parent`]. A mapping the tracker does not hold (new
//! since the last round, moved by mremap — which unregisters it — or one
//! the kernel refuses to register) is copied whole in the frozen round.

use crate::error::{ChkptError, Result};
use crate::image::{self, MmImage, PageRun, RunData, Vma, PAGE};
use crate::procfs;
use crate::uffd::{self, Pagemap, Region, Scan};

use super::copy::{self, DataFile, Job};
use super::pages::{Page, PageMap};

/// A change of the page map: `[start, end)` and its new state.
type Update = (u64, u64, Option<Page>);
use super::track::Tracker;

/// Mappings of the kernel's own pages: never saved, never tracked.
pub fn is_special(path: &str) -> bool {
    matches!(path, "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]")
}

/// Does a page of these categories hold something to save? Anything in
/// swap; in memory, anything but a page of the mapped file or the zero page.
fn saveable(c: u64) -> bool {
    c & uffd::PAGE_IS_SWAPPED != 0
        || (c & uffd::PAGE_IS_PRESENT != 0 && c & (uffd::PAGE_IS_FILE | uffd::PAGE_IS_PFNZERO) == 0)
}

/// Bytes of a round's copy between two calls of its `part_done` (see
/// [`ProcMem::round_in_parts`]).
pub const PART: u64 = 16 << 20;

/// What is called after each part of a round's copy, with the data file.
pub type PartDone<'a> = dyn FnMut(&mut DataFile) -> Result<()> + 'a;

/// `jobs` cut, in order, into runs of at least `part` bytes (the last
/// one less).
fn in_parts(jobs: &[Job], part: u64) -> Vec<&[Job]> {
    let mut out = Vec::new();
    let (mut from, mut bytes) = (0, 0);
    for (i, j) in jobs.iter().enumerate() {
        bytes += j.len;
        if bytes >= part {
            out.push(&jobs[from..=i]);
            (from, bytes) = (i + 1, 0);
        }
    }
    if from < jobs.len() {
        out.push(&jobs[from..]);
    }
    out
}

/// The memory of one process being saved.
pub struct ProcMem {
    pub pid: i32,
    pm: Pagemap,
    pub tracker: Option<Tracker>,
    map: PageMap,
    pub data: DataFile,
    /// The SN whose pages are referred to as [`Page::Parent`].
    pub parent: Option<u32>,
    /// Bytes copied in the last round.
    pub last_round: u64,
    /// The round running is the frozen one.
    frozen: bool,
    /// What the frozen round found written since the round before (or
    /// copied whole, untracked), as ranges.
    frozen_written: Vec<(u64, u64)>,
    /// Pages with the same content as the parent process's, compared
    /// before the freeze (see [`cow::compare_early`](super::cow)).
    pub pre_equal: Vec<(u64, u64)>,
}

fn sys(pid: i32, op: &str) -> impl Fn(std::io::Error) -> ChkptError + '_ {
    move |err| ChkptError::Sys {
        op: op.to_string(),
        pid,
        err,
    }
}

impl ProcMem {
    /// `parent`: the SN the tracker last protected at and its memory image
    /// of this process; its saved pages start as [`Page::Parent`], and the
    /// running rounds write with `O_DIRECT` (see [`copy`]).
    pub fn new(
        pid: i32,
        mut data: DataFile,
        tracker: Option<Tracker>,
        parent: Option<(u32, &MmImage)>,
    ) -> Result<Self> {
        let pm = Pagemap::open(pid).map_err(sys(pid, "opening pagemap"))?;
        let mut map = PageMap::default();
        let parent = parent.filter(|_| tracker.is_some()).map(|(sn, mm)| {
            // (pages shared with the parent process stay so while the
            // tracker does not see them written; whether they still are is
            // looked at while frozen: see cow::mark)
            for r in mm.vmas.iter().filter(|v| !v.shared).flat_map(|v| &v.runs) {
                let page = match r.data {
                    RunData::Cow => Page::Cow,
                    _ => Page::Parent,
                };
                map.set(r.addr, r.addr + r.pages * PAGE, Some(page));
            }
            sn
        });
        if parent.is_some() {
            data.go_direct();
        }
        Ok(ProcMem {
            pid,
            pm,
            tracker,
            map,
            data,
            parent,
            last_round: 0,
            frozen: false,
            frozen_written: Vec::new(),
            pre_equal: Vec::new(),
        })
    }

    /// The private mappings of the process now, in address order.
    fn private_vmas(&self) -> Result<Vec<(u64, u64)>> {
        let maps =
            procfs::parse_maps(&procfs::read_to_string(format!("/proc/{}/maps", self.pid))?)?;
        Ok(maps
            .iter()
            .filter(|m| !m.shared() && !is_special(&m.path))
            .map(|m| (m.start, m.end))
            .collect())
    }

    /// One round; `frozen`: the last one, with the tree stopped.
    pub fn round(&mut self, frozen: bool, progress: &dyn Fn(u64)) -> Result<u64> {
        self.round_in_parts(frozen, progress, None)
    }

    /// [`ProcMem::round`]; with `part_done`, its copy goes in parts of
    /// about [`PART`] bytes and `part_done` is called with the data file
    /// after each (a migration sends what is copied while the next part
    /// is).
    pub fn round_in_parts(
        &mut self,
        frozen: bool,
        progress: &dyn Fn(u64),
        mut part_done: Option<&mut PartDone<'_>>,
    ) -> Result<u64> {
        self.frozen = frozen;
        let vmas = self.private_vmas()?;
        self.map.retain(&vmas);
        let mut jobs = Vec::new();
        for &(s, e) in &vmas {
            let mut tracked = self.tracker.is_some() && self.pm.wp_async_registered(s);
            if !tracked {
                // whatever was known at these addresses belonged to a
                // mapping that is gone (or was moved away)
                self.map.set(s, e, None);
                if let (false, Some(t)) = (frozen, &self.tracker) {
                    tracked = uffd::register(t.raw(), s, e - s, uffd::REGISTER_MODE_WP).is_ok();
                }
            }
            if tracked {
                let mut mine = Vec::new();
                let r = self.tracked(s, e, &mut mine).and_then(|()| {
                    if frozen {
                        self.kept_changed(s, e, &mut mine)
                    } else {
                        Ok(())
                    }
                });
                match r {
                    Ok(()) => jobs.extend(mine),
                    // the running process changed this mapping under us:
                    // start it over next round
                    Err(_) if !frozen => self.map.set(s, e, None),
                    Err(err) => return Err(err),
                }
            } else if frozen {
                self.frozen_written.push((s, e));
                let mut res = Vec::new();
                self.pm
                    .scan(s, e, Scan::resident(), &mut res)
                    .map_err(sys(self.pid, "PAGEMAP_SCAN"))?;
                self.take(&res, &mut jobs);
            }
        }
        crate::timings::mark(if frozen {
            "frozen_scan"
        } else {
            "precopy_scan"
        });
        let parts = match part_done {
            Some(_) => in_parts(&jobs, PART),
            None => vec![&jobs[..]],
        };
        let mut bytes = 0;
        for part in parts {
            let done = copy::copy(self.pid, part, &mut self.data, progress, !frozen)?;
            for j in &done.failed {
                // not copied: found again (and copied) by the next round
                self.map.set(j.addr, j.addr + j.len, None);
            }
            bytes += done.bytes;
            if let Some(f) = part_done.as_mut() {
                f(&mut self.data)?;
            }
        }
        crate::timings::mark(if frozen {
            "frozen_copy"
        } else {
            "precopy_copy"
        });
        self.last_round = bytes;
        Ok(bytes)
    }

    /// The frozen round's second look at the pages of `[s, e)` left as
    /// the kernel's (a zero page, a page of the mapped file: not saved):
    /// any that holds data of its own now is taken. A page can become so
    /// without being reported written: found with a process restored
    /// lazily and moved again (`a_churning_process_keeps_its_memory_across_moves`),
    /// where pages kept as zero pages were present, write-protected and
    /// not reported written at the freeze, though they held what the
    /// process wrote — and came back as zeros.
    fn kept_changed(&mut self, s: u64, e: u64, jobs: &mut Vec<Job>) -> Result<()> {
        let kept: Vec<(u64, u64)> = self
            .map
            .runs_in(s, e)
            .into_iter()
            .filter(|r| r.page == Page::Keep)
            .map(|r| (r.start, r.end))
            .collect();
        let mut now = Vec::new();
        for (a, b) in kept {
            self.pm
                .scan(a, b, Scan::resident(), &mut now)
                .map_err(sys(self.pid, "PAGEMAP_SCAN (kept pages)"))?;
        }
        now.retain(|r| saveable(r.categories));
        self.frozen_written
            .extend(now.iter().map(|r| (r.start, r.end)));
        self.take(&now, jobs);
        Ok(())
    }

    /// A round over one tracked mapping `[s, e)`.
    fn tracked(&mut self, s: u64, e: u64, jobs: &mut Vec<Job>) -> Result<()> {
        let pid = self.pid;
        let Some(t) = &self.tracker else {
            return Ok(());
        };
        let uffd = t.raw();
        // known pages written (or dropped) since the last round: protected
        // again by the same walk
        let mut written = Vec::new();
        for (a, b) in ranges(&self.map.runs_in(s, e)) {
            self.pm
                .scan(a, b, Scan::written(true), &mut written)
                .map_err(sys(pid, "PAGEMAP_SCAN (written pages)"))?;
        }
        if self.frozen {
            self.frozen_written
                .extend(written.iter().map(|r| (r.start, r.end)));
        }
        // pages where none was known: protected, then looked at again —
        // a zero page written between the first look and the protection
        // would otherwise be taken for a zero page with its write hidden
        let mut seen = Vec::new();
        for (a, b) in self.map.gaps_in(s, e) {
            self.pm
                .scan(a, b, Scan::resident(), &mut seen)
                .map_err(sys(pid, "PAGEMAP_SCAN (resident pages)"))?;
        }
        let mut found = Vec::new();
        for r in &seen {
            uffd::writeprotect(uffd, r.start, r.end - r.start, true)
                .map_err(sys(pid, "UFFDIO_WRITEPROTECT"))?;
            self.pm
                .scan(r.start, r.end, Scan::resident(), &mut found)
                .map_err(sys(pid, "PAGEMAP_SCAN (resident pages)"))?;
        }
        // what the written pages are now (scanned in stretches: thousands
        // of scattered written pages would be thousands of calls)
        let mut around = Vec::new();
        for (a, b) in stretches(&written) {
            self.pm
                .scan(a, b, Scan::resident(), &mut around)
                .map_err(sys(pid, "PAGEMAP_SCAN (resident pages)"))?;
        }
        let now = intersect(&around, &written);
        let mut now = self.real_swap(&now);
        let mut from = 0;
        for w in &written {
            from += now[from..].partition_point(|n| n.end <= w.start);
            for (a, b) in subtract(w.start, w.end, &now[from..]) {
                self.map.set(a, b, None);
            }
        }
        now.extend(found);
        self.take(&now, jobs);
        Ok(())
    }

    /// Regions said to be in swap, reduced to the pages really there (the
    /// others hold the tracker's marker of a dropped page: absent).
    fn real_swap(&self, regions: &[Region]) -> Vec<Region> {
        let mut out = Vec::new();
        for r in regions {
            if r.categories & uffd::PAGE_IS_PRESENT != 0
                || r.categories & uffd::PAGE_IS_SWAPPED == 0
            {
                out.push(*r);
                continue;
            }
            for (s, e) in self.pm.in_swap(r.start, r.end).unwrap_or_default() {
                out.push(Region {
                    start: s,
                    end: e,
                    categories: r.categories,
                });
            }
        }
        out
    }

    /// Record resident regions: saveable pages get slots (the ones they
    /// had, if any) and a copy job; the others are kept as they are. The
    /// map is updated in one pass ([`PageMap::set_all`]) and slots are
    /// handed out in address order, so that scattered pages still fill
    /// copy batches with consecutive slots.
    fn take(&mut self, regions: &[Region], jobs: &mut Vec<Job>) {
        let mut regions = self.real_swap(regions);
        regions.sort_unstable_by_key(|r| r.start);
        let (Some(first), Some(last)) = (regions.first(), regions.last()) else {
            return;
        };
        let known = self.map.runs_in(first.start, last.end);
        let mut k = 0;
        let mut updates = Vec::with_capacity(regions.len());
        for r in &regions {
            if !saveable(r.categories) {
                updates.push((r.start, r.end, Some(Page::Keep)));
                continue;
            }
            while known.get(k).is_some_and(|run| run.end <= r.start) {
                k += 1;
            }
            let mut at = r.start;
            for run in known[k..].iter().take_while(|run| run.start < r.end) {
                let (s, e) = (run.start.max(r.start), run.end.min(r.end));
                if s > at {
                    self.new_slots(at, s, jobs, &mut updates);
                }
                match run.page {
                    Page::Here(slot) => jobs.push(Job {
                        addr: s,
                        len: e - s,
                        slot: slot + (s - run.start) / PAGE,
                    }),
                    _ => self.new_slots(s, e, jobs, &mut updates),
                }
                at = e;
            }
            if at < r.end {
                self.new_slots(at, r.end, jobs, &mut updates);
            }
        }
        self.map.set_all(&updates);
    }

    fn new_slots(&mut self, a: u64, b: u64, jobs: &mut Vec<Job>, updates: &mut Vec<Update>) {
        let slot = self.data.alloc((b - a) / PAGE);
        updates.push((a, b, Some(Page::Here(slot))));
        jobs.push(Job {
            addr: a,
            len: b - a,
            slot,
        });
    }

    /// The ranges of `[start, end)` whose pages the image will hold (saved
    /// in this SN or an earlier one, or the parent process's), in address
    /// order.
    pub fn held_in(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let runs: Vec<_> = self
            .map
            .runs_in(start, end)
            .into_iter()
            .filter(|r| matches!(r.page, Page::Here(_) | Page::Parent | Page::Cow))
            .collect();
        ranges(&runs)
    }

    /// What the frozen round found written (sorted ranges); everything
    /// when the process was not copied by rounds (no tracker, or no
    /// frozen round yet).
    pub fn frozen_written(&self) -> Vec<(u64, u64)> {
        if self.tracker.is_none() || !self.frozen {
            return vec![(0, u64::MAX)];
        }
        let mut v = self.frozen_written.clone();
        v.sort_unstable();
        v
    }

    /// The pages marked as the parent process's, as sorted ranges.
    pub fn cow_ranges(&self) -> Vec<(u64, u64)> {
        let runs: Vec<_> = self
            .map
            .runs_in(0, u64::MAX)
            .into_iter()
            .filter(|r| r.page == Page::Cow)
            .collect();
        ranges(&runs)
    }

    /// Save `ranges` (sorted) now, in new slots: the tree is frozen.
    pub fn copy_now(&mut self, ranges: &[(u64, u64)]) -> Result<()> {
        let (mut jobs, mut updates) = (Vec::new(), Vec::new());
        for &(a, b) in ranges {
            self.new_slots(a, b, &mut jobs, &mut updates);
        }
        self.map.set_all(&updates);
        copy::copy(self.pid, &jobs, &mut self.data, &|_| {}, false)?;
        Ok(())
    }

    /// Mark `ranges` (sorted, of saved pages) as the parent process's pages.
    pub fn mark_cow(&mut self, ranges: &[(u64, u64)]) {
        let updates: Vec<Update> = ranges
            .iter()
            .map(|&(s, e)| (s, e, Some(Page::Cow)))
            .collect();
        self.map.set_all(&updates);
    }

    /// The page runs of the private mappings among `vmas`, from the state
    /// reached by the frozen round.
    pub fn fill_runs(&self, vmas: &mut [Vma]) {
        for v in vmas.iter_mut().filter(|v| !v.shared) {
            v.runs = self
                .map
                .runs_in(v.start, v.end)
                .into_iter()
                .filter_map(|r| {
                    let pages = (r.end - r.start) / PAGE;
                    let data = match r.page {
                        Page::Keep => return None,
                        Page::Parent => RunData::Parent,
                        Page::Cow => RunData::Cow,
                        Page::Here(slot) => RunData::Here {
                            off: slot * PAGE,
                            crcs: block_crcs(&self.data, r.start, pages, slot),
                        },
                    };
                    Some(PageRun {
                        addr: r.start,
                        pages,
                        data,
                    })
                })
                .collect();
        }
    }
}

/// The CRC of each `CRC_BLOCK`-aligned block of a run saved from `slot`.
pub fn block_crcs(data: &DataFile, addr: u64, pages: u64, slot: u64) -> Vec<u32> {
    let (first, last) = image::run_blocks(addr, pages);
    (first..=last)
        .map(|b| {
            let (s, len) = image::block_part(addr, pages, b);
            data.crc_of(slot + (s - addr) / PAGE, len / PAGE)
        })
        .collect()
}

/// Runs merged into contiguous ranges.
fn ranges(runs: &[super::pages::Run]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for r in runs {
        match out.last_mut() {
            Some(l) if l.1 == r.start => l.1 = r.end,
            _ => out.push((r.start, r.end)),
        }
    }
    out
}

/// Written pages closer than this are looked at by one scan: a scan costs
/// about 3 us a call and 0.08 us a page here, so a gap of 40 pages costs
/// what a call does. (At 16 pages, 5 % of a GiB changed — every 20th
/// page — was 13,000 calls, 40 ms; one scan of the GiB is 20 ms.)
const JOIN: u64 = 64 * PAGE;

/// Sorted regions joined into stretches where less than [`JOIN`] apart.
fn stretches(regions: &[Region]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for r in regions {
        match out.last_mut() {
            Some(l) if r.start <= l.1 + JOIN => l.1 = l.1.max(r.end),
            _ => out.push((r.start, r.end)),
        }
    }
    out
}

/// The parts of (sorted) regions `a` inside (sorted) regions `b`, with
/// `a`'s categories.
fn intersect(a: &[Region], b: &[Region]) -> Vec<Region> {
    let mut out = Vec::new();
    let mut j = 0;
    for r in a {
        while j < b.len() && b[j].end <= r.start {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].start < r.end {
            let (s, e) = (r.start.max(b[k].start), r.end.min(b[k].end));
            if s < e {
                out.push(Region {
                    start: s,
                    end: e,
                    categories: r.categories,
                });
            }
            k += 1;
        }
    }
    out
}

/// `[a, b)` minus the (sorted) regions `cut` (looked at from the first
/// one that ends after `a` until the first one that starts after `b`).
fn subtract(a: u64, b: u64, cut: &[Region]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = a;
    for c in cut
        .iter()
        .skip_while(|c| c.end <= a)
        .take_while(|c| c.start < b)
    {
        if c.start > at {
            out.push((at, c.start));
        }
        at = at.max(c.end);
    }
    if at < b {
        out.push((at, b));
    }
    out
}

#[cfg(test)]
#[path = "precopy_tests.rs"]
mod tests;
