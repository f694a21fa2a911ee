//! One file of an image being received by a migration's target: its open
//! file (krgd writes what arrives into it), its announced length, and the
//! byte ranges in so far — an image is restored only once complete, but
//! for the page data a post-copy migration pulls after.

use std::sync::Arc;

/// One file being received.
pub struct Entry {
    pub name: String,
    pub file: Arc<std::fs::File>,
    pub len: u64,
    /// The byte ranges received, merged and in order.
    pub have: Vec<(u64, u64)>,
}

impl Entry {
    /// Bytes `[s, e)` are in.
    pub fn got(&mut self, s: u64, e: u64) {
        self.have.push((s, e));
        self.have.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.have.len());
        for &(s, e) in &self.have {
            match out.last_mut() {
                Some(l) if s <= l.1 => l.1 = l.1.max(e),
                _ => out.push((s, e)),
            }
        }
        self.have = out;
    }

    /// Every byte is in.
    pub fn complete(&self) -> bool {
        self.len == 0
            || self
                .have
                .first()
                .is_some_and(|&(s, e)| s == 0 && e >= self.len)
    }
}

/// The parts of `[from, to)` not in `have` (sorted, merged), cut into
/// (offset, length) pieces of at most `max` bytes.
pub fn gaps(have: &[(u64, u64)], from: u64, to: u64, max: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut cut = |s: u64, e: u64| {
        let mut at = s;
        while at < e {
            let n = (e - at).min(max);
            out.push((at, n));
            at += n;
        }
    };
    let mut at = from;
    for &(s, e) in have.iter().filter(|r| r.1 > from && r.0 < to) {
        if s > at {
            cut(at, s);
        }
        at = at.max(e);
    }
    if at < to {
        cut(at, to);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_received_merge_until_complete() {
        let file = Arc::new(tempfile::tempfile().unwrap());
        let mut e = Entry {
            name: "task_mm_1_v1.bin".into(),
            file,
            len: 30,
            have: Vec::new(),
        };
        e.got(20, 30);
        e.got(0, 5);
        assert!(!e.complete());
        e.got(5, 12);
        e.got(10, 20);
        assert_eq!(e.have, vec![(0, 30)]);
        assert!(e.complete());
    }

    #[test]
    fn gaps_are_what_is_not_had_cut_to_size() {
        let have = [(0, 10), (20, 30), (40, 50)];
        assert_eq!(gaps(&have, 0, 50, 100), vec![(10, 10), (30, 10)]);
        assert_eq!(
            gaps(&have, 5, 45, 4),
            vec![(10, 4), (14, 4), (18, 2), (30, 4), (34, 4), (38, 2)]
        );
        assert_eq!(gaps(&have, 22, 28, 100), vec![]);
        assert_eq!(gaps(&[], 3, 9, 100), vec![(3, 6)]);
        assert_eq!(gaps(&have, 50, 60, 100), vec![(50, 10)]);
    }
}
