//! Sorted, page-aligned address ranges `[start, end)` (as `(u64, u64)`),
//! cut and combined: what the dump and the restore of shared pages both
//! work with.

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

/// Sorted ranges `a` without sorted ranges `b`.
pub fn minus(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(s, e) in a {
        let mut at = s;
        for &(bs, be) in b.iter().filter(|&&(bs, be)| bs < e && be > s) {
            if bs > at {
                out.push((at, bs));
            }
            at = at.max(be);
        }
        if at < e {
            out.push((at, e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_intersections() {
        let a = [(0, 10), (20, 30), (40, 50)];
        let b = [(5, 25), (28, 45)];
        assert_eq!(
            intersect(&a, &b),
            vec![(5, 10), (20, 25), (28, 30), (40, 45)]
        );
        assert_eq!(intersect(&a, &[]), vec![]);
        assert_eq!(minus(&a, &b), vec![(0, 5), (25, 28), (45, 50)]);
        assert_eq!(minus(&a, &[]), a.to_vec());
    }
}
