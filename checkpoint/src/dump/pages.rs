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
    /// The very page the parent process holds at this address (shared
    /// copy-on-write since a fork): not saved again (see [`cow`](super::cow)).
    Cow,
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

    /// [`set`](Self::set) each of `updates` — `(start, end, page)`, sorted
    /// and not overlapping — in one pass: the part of the map they span is
    /// taken out, merged with them and put back, where thousands of
    /// single-page updates one by one (5 % of a GiB written: 13,000) cost
    /// a dozen tree operations each.
    pub fn set_all(&mut self, updates: &[(u64, u64, Option<Page>)]) {
        let (Some(first), Some(last)) = (updates.first(), updates.last()) else {
            return;
        };
        let sorted = updates.windows(2).all(|w| w[0].1 <= w[1].0);
        if !sorted || updates.iter().any(|u| u.0 >= u.1) {
            for &(s, e, p) in updates {
                self.set(s, e, p);
            }
            return;
        }
        let (start, end) = (first.0, last.1);
        self.cut(start);
        self.cut(end);
        // taken out and put back entry by entry: the rest of the map (other
        // mappings) is not moved
        let old: Vec<(u64, u64, Page)> = self
            .runs
            .range(start..end)
            .map(|(&s, &(e, p))| (s, e, p))
            .collect();
        for r in &old {
            self.runs.remove(&r.0);
        }
        let mut out = Vec::with_capacity(old.len() + updates.len());
        let (mut i, mut at) = (0, start);
        for &(us, ue, up) in updates {
            old_until(&old, &mut i, at, us, &mut out);
            if let Some(p) = up {
                push_run(&mut out, us, ue, p);
            }
            // replaced; one reaching past the update keeps its tail
            while old.get(i).is_some_and(|r| r.1 <= ue) {
                i += 1;
            }
            at = ue;
        }
        old_until(&old, &mut i, at, end, &mut out);
        let edges = (out.first().map(|r| r.0), out.last().map(|r| r.0));
        self.runs
            .extend(out.into_iter().map(|(s, e, p)| (s, (e, p))));
        // the first and last new runs may continue their neighbours
        if let (Some(a), Some(b)) = edges {
            self.merge_around(a);
            let last = self.runs.range(..=b).next_back().map(|(&s, _)| s);
            if let Some(b) = last {
                self.merge_around(b);
            }
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

/// Append `[s, e)` in state `p` to sorted runs, joined to the last one
/// when it continues it.
fn push_run(out: &mut Vec<(u64, u64, Page)>, s: u64, e: u64, p: Page) {
    match out.last_mut() {
        Some((ls, le, lp)) if *le == s && lp.advance((s - *ls) / PAGE) == p => *le = e,
        _ => out.push((s, e, p)),
    }
}

/// Append the parts of `old` runs (sorted, from index `i`) between `at` and
/// `limit`; `i` moves past the runs that end by `limit`.
fn old_until(
    old: &[(u64, u64, Page)],
    i: &mut usize,
    at: u64,
    limit: u64,
    out: &mut Vec<(u64, u64, Page)>,
) {
    while let Some(&(s, e, p)) = old.get(*i) {
        if s >= limit {
            break;
        }
        let (cs, ce) = (s.max(at), e.min(limit));
        if cs < ce {
            push_run(out, cs, ce, p.advance((cs - s) / PAGE));
        }
        if e > limit {
            break;
        }
        *i += 1;
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

        /// Updates in one pass leave the map as the same updates one by one.
        #[test]
        fn set_all_agrees_with_set(
            before in proptest::collection::vec((0u64..40, 1u64..10, 0u8..4), 0..20),
            cuts in proptest::collection::vec((0u64..6, 1u64..4, 0u8..4), 1..20),
        ) {
            let page = |k: u8, slot: u64| match k { 0 => None, 1 => Some(Page::Keep), 2 => Some(Page::Parent), _ => Some(Page::Here(slot)) };
            let mut m = PageMap::default();
            for (i, &(s, l, k)) in before.iter().enumerate() {
                m.set(s * P, (s + l) * P, page(k, 1000 * i as u64));
            }
            // sorted, disjoint updates: each starts a gap after the last
            let mut updates = Vec::new();
            let mut at = 0;
            for (i, &(gap, l, k)) in cuts.iter().enumerate() {
                let s = at + gap;
                updates.push((s * P, (s + l) * P, page(k, 100 * i as u64 + 7)));
                at = s + l;
            }
            let mut one = m.clone();
            for &(s, e, p) in &updates {
                one.set(s, e, p);
            }
            m.set_all(&updates);
            proptest::prop_assert_eq!(m.runs_in(0, 200 * P), one.runs_in(0, 200 * P));
            proptest::prop_assert_eq!(m.runs.len(), one.runs.len());
        }
    }

    #[test]
    fn set_all_in_the_middle_of_a_run() {
        let mut m = PageMap::default();
        m.set(0, 100 * P, Some(Page::Parent));
        m.set_all(&[
            (10 * P, 11 * P, Some(Page::Here(0))),
            (30 * P, 31 * P, Some(Page::Here(1))),
        ]);
        assert_eq!(m.runs_in(0, 100 * P).len(), 5);
        assert_eq!(m.get(10 * P), Some(Page::Here(0)));
        assert_eq!(m.get(31 * P), Some(Page::Parent));
        // and back: the runs join again
        m.set_all(&[
            (10 * P, 11 * P, Some(Page::Parent)),
            (30 * P, 31 * P, Some(Page::Parent)),
        ]);
        assert_eq!(m.runs_in(0, 100 * P).len(), 1);
    }
}
