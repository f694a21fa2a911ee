//! A small unified diff (longest common subsequence over lines), enough for
//! configuration files of a few thousand lines.

use std::fmt::Write;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Same,
    Del,
    Add,
}

/// `diff -u` style text turning `old` into `new`, with 3 lines of context.
/// Empty when they are equal.
pub fn unified(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = edit_script(&a, &b);
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    // Walk the script, emitting hunks of changes with up to 3 lines of context.
    let ctx = 3;
    let mut i = 0;
    // (index into ops, line in a, line in b) for each op
    let mut pos = Vec::with_capacity(ops.len());
    let (mut ai, mut bi) = (0usize, 0usize);
    for op in &ops {
        pos.push((ai, bi));
        match op {
            Op::Same => {
                ai += 1;
                bi += 1
            }
            Op::Del => ai += 1,
            Op::Add => bi += 1,
        }
    }
    while i < ops.len() {
        if ops[i] == Op::Same {
            i += 1;
            continue;
        }
        let start = i.saturating_sub(ctx);
        let mut end = i;
        // Extend while the next change is within 2*ctx unchanged lines.
        loop {
            while end < ops.len() && ops[end] != Op::Same {
                end += 1;
            }
            let mut j = end;
            while j < ops.len() && ops[j] == Op::Same && j - end < 2 * ctx {
                j += 1;
            }
            if j < ops.len() && ops[j] != Op::Same {
                end = j;
            } else {
                end = (end + ctx).min(ops.len());
                break;
            }
        }
        let (a0, b0) = pos[start];
        let alen = ops[start..end].iter().filter(|o| **o != Op::Add).count();
        let blen = ops[start..end].iter().filter(|o| **o != Op::Del).count();
        let _ = writeln!(out, "@@ -{} +{} @@", range(a0, alen), range(b0, blen));
        for k in start..end {
            let (x, y) = pos[k];
            let _ = match ops[k] {
                Op::Same => writeln!(out, " {}", a[x]),
                Op::Del => writeln!(out, "-{}", a[x]),
                Op::Add => writeln!(out, "+{}", b[y]),
            };
        }
        i = end;
    }
    out
}

fn range(start: usize, len: usize) -> String {
    match len {
        0 => format!("{start},0"),
        1 => format!("{}", start + 1),
        _ => format!("{},{len}", start + 1),
    }
}

fn edit_script(a: &[&str], b: &[&str]) -> Vec<Op> {
    // Trim the common prefix and suffix first: rendered files usually change
    // in one place, which keeps the quadratic table small.
    let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let (n, m) = (ma.len(), mb.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if ma[i] == mb[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops = vec![Op::Same; pre];
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && ma[i] == mb[j] {
            ops.push(Op::Same);
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Deletions before insertions, as diff(1) prints them.
            ops.push(Op::Del);
            i += 1;
        } else {
            ops.push(Op::Add);
            j += 1;
        }
    }
    ops.extend(std::iter::repeat_n(Op::Same, suf));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_is_empty_and_changes_are_hunked() {
        assert_eq!(unified("a\nb\n", "a\nb\n", "x", "y"), "");
        let d = unified(
            "1\n2\n3\n4\n5\n6\n7\n8\n9\n",
            "1\n2\n3\n4\nFIVE\n6\n7\n8\n9\n",
            "a/f",
            "b/f",
        );
        assert_eq!(
            d,
            "--- a/f\n+++ b/f\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+FIVE\n 6\n 7\n 8\n"
        );
        let d = unified("", "new\n", "/dev/null", "b/f");
        assert_eq!(d, "--- /dev/null\n+++ b/f\n@@ -0,0 +1 @@\n+new\n");
    }
}
