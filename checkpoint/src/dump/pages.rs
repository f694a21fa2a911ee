//! What a checkpoint knows of each page of a private mapping while it is
//! being saved: an interval map from addresses to [`Page`] states, kept
//! as runs so that a sparse 64 GiB mapping costs what its pages cost.

use std::collections::BTreeMap;

use crate::image::PAGE;

/// The state of a page (a page that is in no run is absent: not in memory
/// or swap, it reads as zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// In memory but nothing to save: a page of the mapped file, or the
    /// shared zero page.
    Keep,
    /// Saved in this SN's data, in slot `n` (slots are page-sized and
    /// numbered from the start of the data section).
    Here(u64),
    /// Saved by the parent SN and unchanged since.
    Parent,
}

impl Page {
    /// The state of the page `n` pages further in a run of this state.
    fn advance(self, n: u64) -> Page {
        match self {
            Page::Here(s) => Page::Here(s + n),
            p => p,
        }
    }
}

/// A run: `[start, end)` in one state (a `Here` run holds consecutive slots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: u64,
    pub end: u64,
    pub page: Page,
}

/// Page states by address, as runs.
#[derive(Debug, Default, Clone)]
pub struct PageMap {
    runs: BTreeMap<u64, (u64, Page)>,
}

impl PageMap {
    /// Set `[start, end)` (page aligned) to `page` (`None`: absent).
    pub fn set(&mut self, start: u64, end: u64, page: Option<Page>) {
        if start >= end {
            return;
        }
        self.cut(start);
        self.cut(end);
        let inside: Vec<u64> = self.runs.range(start..end).map(|(&s, _)| s).collect();
        for s in inside {
            self.runs.remove(&s);
        }
        if let Some(p) = page {
            self.runs.insert(start, (end, p));
            self.merge_around(start);
        }
    }

    /// Split the run containing `at` (if any) so that a run starts there.
    fn cut(&mut self, at: u64) {
        let found = self
            .runs
            .range(..at)
            .next_back()
            .map(|(&s, &(e, p))| (s, e, p));
        if let Some((s, e, p)) = found {
            if e > at {
                self.runs.insert(s, (at, p));
                self.runs.insert(at, (e, p.advance((at - s) / PAGE)));
            }
        }
    }

    /// Join the run at `start` with its neighbours when they continue it.
    fn merge_around(&mut self, start: u64) {
        let Some(&(end, page)) = self.runs.get(&start) else {
            return;
        };
        let (mut s, mut e, mut p) = (start, end, page);
        if let Some((&ps, &(pe, pp))) = self.runs.range(..start).next_back() {
            if pe == start && pp.advance((start - ps) / PAGE) == page {
                self.runs.remove(&start);
                (s, p) = (ps, pp);
            }
        }
        if let Some(&(ne, np)) = self.runs.get(&e) {
            if p.advance((e - s) / PAGE) == np {
                self.runs.remove(&e);
                e = ne;
            }
        }
        self.runs.insert(s, (e, p));
    }

    /// The state of page `addr`.
    #[cfg(test)]
    pub fn get(&self, addr: u64) -> Option<Page> {
        self.runs
            .range(..=addr)
            .next_back()
            .filter(|(_, &(e, _))| e > addr)
            .map(|(&s, &(_, p))| p.advance((addr - s) / PAGE))
    }

    /// Runs inside `[start, end)`, clipped to it.
    pub fn runs_in(&self, start: u64, end: u64) -> Vec<Run> {
        let first = self
            .runs
            .range(..=start)
            .next_back()
            .map_or(start, |(&s, _)| s);
        self.runs
            .range(first..end)
            .filter(|(_, &(e, _))| e > start)
            .map(|(&s, &(e, p))| {
                let cs = s.max(start);
                Run {
                    start: cs,
                    end: e.min(end),
                    page: p.advance((cs - s) / PAGE),
                }
            })
            .collect()
    }

    /// The gaps (absent pages) of `[start, end)`.
    pub fn gaps_in(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = start;
        for r in self.runs_in(start, end) {
            if r.start > at {
                out.push((at, r.start));
            }
            at = r.end;
        }
        if at < end {
            out.push((at, end));
        }
        out
    }

    /// Forget everything outside `[start, end)` ranges of `keep` (sorted).
    pub fn retain(&mut self, keep: &[(u64, u64)]) {
        let mut at = 0u64;
        for &(s, e) in keep {
            self.set(at, s, None);
            at = e;
        }
        self.set(at, !(PAGE - 1), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE;

    #[test]
    fn set_split_merge() {
        let mut m = PageMap::default();
        m.set(0, 10 * P, Some(Page::Here(100)));
        assert_eq!(m.get(3 * P), Some(Page::Here(103)));
        m.set(2 * P, 4 * P, Some(Page::Parent));
        assert_eq!(m.get(P), Some(Page::Here(101)));
        assert_eq!(m.get(2 * P), Some(Page::Parent));
        assert_eq!(m.get(5 * P), Some(Page::Here(105)));
        // writing the same slots back merges the runs again
        m.set(2 * P, 4 * P, Some(Page::Here(102)));
        assert_eq!(
            m.runs_in(0, 20 * P),
            vec![Run {
                start: 0,
                end: 10 * P,
                page: Page::Here(100)
            }]
        );
        m.set(4 * P, 6 * P, None);
        assert_eq!(m.gaps_in(0, 12 * P), vec![(4 * P, 6 * P), (10 * P, 12 * P)]);
        assert_eq!(m.get(4 * P), None);
        let r = m.runs_in(3 * P, 8 * P);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].page, Page::Here(106));
        m.retain(&[(6 * P, 7 * P)]);
        assert_eq!(m.runs_in(0, u64::MAX).len(), 1);
        assert_eq!(m.get(6 * P), Some(Page::Here(106)));
    }

    proptest::proptest! {
        /// The map agrees with a page-by-page model after any updates.
        #[test]
        fn agrees_with_a_model(ops in proptest::collection::vec((0u64..40, 1u64..10, 0u8..4), 1..60)) {
            let mut m = PageMap::default();
            let mut model = vec![None; 64];
            let mut slot = 0u64;
            for (s, l, k) in ops {
                let e = (s + l).min(64);
                let page = match k { 0 => None, 1 => Some(Page::Keep), 2 => Some(Page::Parent), _ => Some(Page::Here(slot)) };
                for i in s..e {
                    model[i as usize] = page.map(|p| p.advance(i - s));
                }
                slot += 100;
                m.set(s * P, e * P, page);
            }
            for i in 0..64u64 {
                proptest::prop_assert_eq!(m.get(i * P), model[i as usize]);
            }
            let runs = m.runs_in(0, 64 * P);
            for w in runs.windows(2) {
                proptest::prop_assert!(w[0].end <= w[1].start);
                proptest::prop_assert!(!(w[0].end == w[1].start && w[0].page.advance((w[0].end - w[0].start) / P) == w[1].page));
            }
        }
    }
}
