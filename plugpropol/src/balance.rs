//! `balance_policy`: its attributes and the decision it takes. The policy
//! moves processes of the deciding node (the embedder, krgd, carries the
//! moves out and says which processes it has); this module only decides.
//!
//! Each node's policy decides for its own processes only: it acts when
//! this node is the most loaded online member and the gap to the least
//! loaded one is at least `threshold`, and then moves the process whose
//! share of the load best halves that gap. So no two nodes ever move the
//! same process, and no process is moved back and forth (a move must
//! shrink the gap by more than half the threshold).

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::value::NodeId;

/// The port a balance policy reads: one load value per node.
pub const PORT: &str = "port_load";
/// Attributes, in the order the directory lists them.
pub const ATTRIBUTES: &[&str] = &["threshold", "max_moves", "interval", "min_residency"];
/// How many decisions the `decisions` file keeps.
pub const DECISIONS_KEPT: usize = 32;
/// A process that wants less than this (threads' worth of the node's
/// load measure) is never worth moving.
pub const MIN_DEMAND: f64 = 0.1;

/// What `echo` may set, with its defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalanceConfig {
    /// Move when the most loaded node runs this much more than the least
    /// loaded (in the port's unit).
    pub threshold: f64,
    /// At most this many moves per `interval`.
    pub max_moves: u32,
    /// How often the policy decides, ms.
    pub interval_ms: u64,
    /// A process that arrived less than this ago is not moved again, ms.
    pub min_residency_ms: u64,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            threshold: 1.5,
            max_moves: 1,
            interval_ms: 2000,
            min_residency_ms: 10_000,
        }
    }
}

fn int(attr: &str, text: &str, lo: u64, hi: u64, unit: &str) -> Result<u64> {
    match text.parse::<u64>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(Error::Invalid(format!(
            "{attr} must be a whole number from {lo} to {hi}{unit}, not {text:?}"
        ))),
    }
}

impl BalanceConfig {
    pub fn get(&self, attr: &str) -> Option<String> {
        Some(match attr {
            "threshold" => format!("{}", self.threshold),
            "max_moves" => self.max_moves.to_string(),
            "interval" => self.interval_ms.to_string(),
            "min_residency" => self.min_residency_ms.to_string(),
            _ => return None,
        })
    }

    /// Set one attribute; a bad value changes nothing.
    pub fn set(&mut self, attr: &str, text: &str) -> Result<()> {
        match attr {
            "threshold" => {
                self.threshold = match text.parse::<f64>() {
                    Ok(v) if v.is_finite() && v > 0.0 && v <= 1e6 => v,
                    _ => {
                        return Err(Error::Invalid(format!(
                            "threshold must be a number above 0 (at most 1000000), not {text:?}"
                        )))
                    }
                }
            }
            "max_moves" => self.max_moves = int(attr, text, 1, 64, "")? as u32,
            "interval" => self.interval_ms = int(attr, text, 100, 3_600_000, " (ms)")?,
            "min_residency" => self.min_residency_ms = int(attr, text, 0, 86_400_000, " (ms)")?,
            _ => return Err(Error::NotPermitted(format!("{attr} is not writable"))),
        }
        Ok(())
    }
}

/// One process of the deciding node.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub pid: i32,
    /// What it asks of the node (threads' worth of CPU demand); the node's
    /// load on the port is shared among its processes in this proportion.
    pub demand: f64,
    /// Why it may not move now (not CAN_MIGRATE, arrived too recently,
    /// refused a moment ago), or None.
    pub held: Option<String>,
}

/// What the policy decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// Move `pid`, whose share of this node's load is `size`, to `to`.
    Move {
        pid: i32,
        to: NodeId,
        size: f64,
        gap: f64,
    },
    /// Nothing moves, and why.
    Stay { why: String },
}

/// The most loaded node (ties: lowest id) and the least loaded other one.
fn extremes(loads: &BTreeMap<NodeId, f64>) -> Option<((NodeId, f64), (NodeId, f64))> {
    let mut it = loads.iter().map(|(n, v)| (*n, *v));
    let first = it.next()?;
    let (mut max, mut min) = (first, first);
    for (n, v) in it {
        if v > max.1 {
            max = (n, v);
        }
        if v < min.1 {
            min = (n, v);
        }
    }
    if min.0 == max.0 {
        // all equal: the lowest-id node other than the most loaded
        min = loads
            .iter()
            .map(|(n, v)| (*n, *v))
            .find(|(n, _)| *n != max.0)?;
    }
    Some((max, min))
}

/// Decide for node `me`, given every online node's load (`loads`, only
/// nodes with a value) and this node's processes.
pub fn choose(
    cfg: &BalanceConfig,
    me: NodeId,
    loads: &BTreeMap<NodeId, f64>,
    procs: &[Candidate],
) -> Choice {
    let stay = |why: String| Choice::Stay { why };
    let Some(&mine) = loads.get(&me) else {
        return stay(format!("node {me} has no value on {PORT} yet"));
    };
    let Some(((top, top_v), (low, low_v))) = extremes(loads) else {
        return stay(format!("no other online node has a value on {PORT}"));
    };
    if top != me {
        return stay(format!(
            "node {top} is the most loaded ({top_v:.2}), not this node ({mine:.2})"
        ));
    }
    let gap = top_v - low_v;
    if gap < cfg.threshold {
        return stay(format!(
            "gap {gap:.2} to node {low} ({low_v:.2}) is below the threshold {}",
            cfg.threshold
        ));
    }
    let total: f64 = procs.iter().map(|p| p.demand.max(0.0)).sum();
    if total <= 0.0 {
        return stay(format!(
            "node {me} runs no process of its own that uses a CPU (its load {mine:.2} is someone else's)"
        ));
    }
    let scale = mine / total;
    let mut best: Option<(f64, f64, i32)> = None; // (|gap-2p|, p, pid)
    let (mut held, mut small, mut big) = (0, 0, 0);
    for p in procs {
        let size = p.demand * scale;
        if p.held.is_some() {
            held += 1;
        } else if p.demand < MIN_DEMAND {
            small += 1;
        } else if size > gap - cfg.threshold / 2.0 {
            big += 1;
        } else {
            let key = ((gap - 2.0 * size).abs(), size, p.pid);
            let better = match best {
                None => true,
                Some((d, s, pid)) => {
                    key.0 < d || (key.0 == d && (size > s || (size == s && p.pid < pid)))
                }
            };
            if better {
                best = Some(key);
            }
        }
    }
    match best {
        Some((_, size, pid)) => Choice::Move {
            pid,
            to: low,
            size,
            gap,
        },
        None => stay(format!(
            "gap {gap:.2} to node {low}, but no process fits: {held} held (not CAN_MIGRATE, moved recently or refused), {small} idle, {big} too big to shrink the gap"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(v: &[(NodeId, f64)]) -> BTreeMap<NodeId, f64> {
        v.iter().copied().collect()
    }

    fn hog(pid: i32) -> Candidate {
        Candidate {
            pid,
            demand: 1.0,
            held: None,
        }
    }

    #[test]
    fn four_hogs_spread_one_per_node() {
        let cfg = BalanceConfig::default();
        let mut l = loads(&[(1, 4.0), (2, 0.0), (3, 0.0), (4, 0.0)]);
        let mut procs: Vec<Candidate> = (10..14).map(hog).collect();
        for want in [2, 3, 4] {
            match choose(&cfg, 1, &l, &procs) {
                Choice::Move { pid, to, size, .. } => {
                    assert_eq!(to, want);
                    assert!((size - 1.0).abs() < 1e-9);
                    procs.retain(|p| p.pid != pid);
                    *l.get_mut(&1).unwrap() -= size;
                    *l.get_mut(&to).unwrap() += size;
                }
                other => panic!("expected a move, got {other:?}"),
            }
        }
        assert!(matches!(choose(&cfg, 1, &l, &procs), Choice::Stay { .. }));
    }

    #[test]
    fn only_the_most_loaded_node_acts_and_one_process_never_ping_pongs() {
        let cfg = BalanceConfig {
            threshold: 0.5,
            ..Default::default()
        };
        let l = loads(&[(1, 2.0), (2, 0.0)]);
        let Choice::Stay { why } = choose(&cfg, 2, &l, &[hog(5)]) else {
            panic!("node 2 is not the most loaded");
        };
        assert!(why.contains("node 1 is the most loaded"), "{why}");
        // one hog alone: moving it would only swap the gap
        let l = loads(&[(1, 1.02), (2, 0.0)]);
        assert!(matches!(
            choose(&cfg, 1, &l, &[hog(5)]),
            Choice::Stay { .. }
        ));
        // the idle shell is never chosen, a held process neither
        let idle = Candidate {
            pid: 3,
            demand: 0.01,
            held: None,
        };
        let held = Candidate {
            held: Some("arrived 1 s ago".into()),
            ..hog(4)
        };
        let l = loads(&[(1, 3.0), (2, 0.0)]);
        match choose(&cfg, 1, &l, &[idle.clone(), held.clone(), hog(6), hog(7)]) {
            Choice::Move { pid, to, .. } => assert_eq!((pid, to), (6, 2)),
            other => panic!("{other:?}"),
        }
        let Choice::Stay { why } = choose(&cfg, 1, &l, &[idle, held]) else {
            panic!("nothing fits");
        };
        assert!(why.contains("1 held") && why.contains("1 idle"), "{why}");
    }

    #[test]
    fn below_threshold_or_alone_nothing_moves() {
        let cfg = BalanceConfig::default();
        let one = loads(&[(1, 4.0)]);
        assert!(matches!(
            choose(&cfg, 1, &one, &[hog(1)]),
            Choice::Stay { .. }
        ));
        let l = loads(&[(1, 1.4), (2, 0.0)]);
        let Choice::Stay { why } = choose(&cfg, 1, &l, &[hog(1), hog(2)]) else {
            panic!()
        };
        assert!(why.contains("below the threshold"), "{why}");
        assert!(matches!(
            choose(&cfg, 3, &l, &[hog(1)]),
            Choice::Stay { .. }
        ));
    }

    #[test]
    fn attributes_refuse_bad_values_and_keep_the_old_one() {
        let mut c = BalanceConfig::default();
        for (attr, bad) in [
            ("threshold", "0"),
            ("threshold", "-1"),
            ("threshold", "NaN"),
            ("threshold", "lots"),
            ("max_moves", "0"),
            ("max_moves", "65"),
            ("max_moves", "1.5"),
            ("interval", "99"),
            ("interval", "x"),
            ("min_residency", "-5"),
        ] {
            let e = c.set(attr, bad).unwrap_err();
            assert!(matches!(e, Error::Invalid(_)), "{attr}={bad}: {e}");
            assert!(e.to_string().starts_with(attr), "{e}");
        }
        assert_eq!(c, BalanceConfig::default());
        c.set("threshold", "2").unwrap();
        c.set("max_moves", "3").unwrap();
        c.set("interval", "500").unwrap();
        c.set("min_residency", "0").unwrap();
        assert_eq!(c.get("threshold").unwrap(), "2");
        assert_eq!(c.get("interval").unwrap(), "500");
        assert!(c.set("decisions", "1").is_err());
    }
}
