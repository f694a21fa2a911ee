//! A linearizability checker for the cluster's member set (a Wing & Gong /
//! Knossos-style search with memoisation), and the invariants checked
//! beside it.
//!
//! The model is a set of node ids. `Add(x)` that succeeded requires `x` out
//! of the set and puts it in; `Del(x)` takes it out; a refusal that depends
//! on the set ("already a member", "not a member") requires the matching
//! state and changes nothing; a `Read` (after healing) requires the set it
//! returned. An operation whose outcome is unknown (timeout, leadership
//! moved, no quorum) may take effect at any point after its invocation, or
//! never. A history is linearizable when some order of the operations,
//! respecting real time (an operation that completed before another began
//! comes first), is valid for the model.

use std::collections::{BTreeSet, HashSet};

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    Add(u32),
    Del(u32),
    /// The member set one node reported.
    Read(BTreeSet<u32>),
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the change was committed.
    Ok,
    /// Refused for a reason that depends on the member set (add of a
    /// member, del of a non-member): nothing changed.
    Refused,
    /// Refused without looking at the set, or failed before changing
    /// anything (bad state, node absent): nothing changed.
    NoEffect,
    /// May or may not have happened.
    Unknown,
}

/// One operation of the history; times in nanoseconds since the start.
#[derive(Debug, Clone)]
pub struct Event {
    pub client: u32,
    pub op: Op,
    pub outcome: Outcome,
    pub invoked: u64,
    pub completed: u64,
    /// What krgadm said when it failed (empty otherwise): a refusal taken
    /// for "nothing changed" may be the culprit of an anomaly.
    pub said: String,
}

/// What one op does to `set`, or None if it cannot happen in that state.
fn step(set: u128, op: &Op, outcome: Outcome) -> Option<u128> {
    let bit = |x: u32| 1u128 << (x % 128);
    match (op, outcome) {
        (_, Outcome::NoEffect) => Some(set),
        (Op::Add(x), Outcome::Ok | Outcome::Unknown) => {
            (set & bit(*x) == 0).then_some(set | bit(*x))
        }
        (Op::Del(x), Outcome::Ok | Outcome::Unknown) => {
            (set & bit(*x) != 0).then_some(set & !bit(*x))
        }
        (Op::Add(x), Outcome::Refused) => (set & bit(*x) != 0).then_some(set),
        (Op::Del(x), Outcome::Refused) => (set & bit(*x) == 0).then_some(set),
        (Op::Read(s), _) => (s.iter().fold(0u128, |a, x| a | bit(*x)) == set).then_some(set),
    }
}

/// Is `history`, starting from `initial`, linearizable? Node ids must be
/// below 128. An operation of unknown outcome takes effect before the
/// first operation invoked at or after `settled` (the final reads, taken
/// once the healed cluster agrees), or never. Unknown operations of the
/// same kind on the same node are interchangeable once both have begun, so
/// only the earliest of them is tried first; this keeps the search small.
pub fn linearizable(initial: &BTreeSet<u32>, history: &[Event], settled: u64) -> bool {
    let init = initial.iter().fold(0u128, |a, x| a | 1u128 << (x % 128));
    let mut ev: Vec<&Event> = history.iter().collect();
    ev.sort_by_key(|e| e.invoked);
    let n = ev.len();
    let done_at = |e: &Event| match e.outcome {
        Outcome::Unknown => u64::MAX,
        _ => e.completed,
    };
    let required: Vec<usize> = (0..n)
        .filter(|i| ev[*i].outcome != Outcome::Unknown)
        .collect();
    let mut seen: HashSet<(Vec<u64>, u128)> = HashSet::new();
    // Depth-first search over (linearized ops, state).
    let words = n.div_ceil(64);
    let mut stack: Vec<(Vec<u64>, u128)> = vec![(vec![0; words], init)];
    let is_set = |b: &Vec<u64>, i: usize| b[i / 64] & (1 << (i % 64)) != 0;
    while let Some((bits, state)) = stack.pop() {
        if required.iter().all(|i| is_set(&bits, *i)) {
            return true;
        }
        if !seen.insert((bits.clone(), state)) {
            continue;
        }
        // No op may go before one that completed before it was invoked.
        let horizon = (0..n)
            .filter(|i| !is_set(&bits, *i))
            .map(|i| done_at(ev[i]))
            .min()
            .unwrap_or(u64::MAX);
        let past_settled = (0..n).any(|i| is_set(&bits, i) && ev[i].invoked >= settled);
        let mut tried: HashSet<&Op> = HashSet::new();
        for i in 0..n {
            if is_set(&bits, i) || ev[i].invoked > horizon {
                continue;
            }
            if ev[i].outcome == Outcome::Unknown && (past_settled || !tried.insert(&ev[i].op)) {
                continue;
            }
            if let Some(next) = step(state, &ev[i].op, ev[i].outcome) {
                let mut b = bits.clone();
                b[i / 64] |= 1 << (i % 64);
                stack.push((b, next));
            }
        }
    }
    false
}

/// Check the member set history element by element: in a set model every
/// operation here touches one node id (the reads come last, after healing,
/// so splitting them per id loses nothing), and linearizability is a local
/// property (Herlihy & Wing), so the history is linearizable iff each
/// node id's sub-history is. Returns one line per id that fails.
pub fn check_members(initial: &BTreeSet<u32>, history: &[Event], ids: &[u32]) -> Vec<String> {
    let mut out = Vec::new();
    let settled = history
        .iter()
        .filter(|e| matches!(e.op, Op::Read(_)))
        .map(|e| e.invoked)
        .min()
        .unwrap_or(u64::MAX);
    for &x in ids {
        let only = |s: &BTreeSet<u32>| {
            s.iter()
                .copied()
                .filter(|y| *y == x)
                .collect::<BTreeSet<u32>>()
        };
        let sub: Vec<Event> = history
            .iter()
            .filter_map(|e| {
                let op = match &e.op {
                    Op::Add(y) if *y == x => Op::Add(x),
                    Op::Del(y) if *y == x => Op::Del(x),
                    Op::Read(s) => Op::Read(only(s)),
                    _ => return None,
                };
                Some(Event { op, ..e.clone() })
            })
            .collect();
        if !linearizable(&only(initial), &sub, settled) {
            // Every operation on x, refusals with what they said: one taken
            // for "nothing changed" may have changed something.
            let mut lines: Vec<String> = sub
                .iter()
                .map(|e| {
                    let said: String = e.said.trim().chars().take(110).collect();
                    format!(
                        "client {} {:?} {:?} [{}..{}]{}",
                        e.client,
                        e.op,
                        e.outcome,
                        e.invoked / 1_000_000,
                        e.completed / 1_000_000,
                        if said.is_empty() {
                            String::new()
                        } else {
                            format!(" \"{said}\"")
                        }
                    )
                })
                .collect();
            elide(&mut lines, 50, 150);
            out.push(format!(
                "membership of node {x} is not linearizable; its operations (ms):\n  {}",
                lines.join("\n  ")
            ));
        }
    }
    out
}

/// Keep the first `head` and the last `tail` of `lines`, saying how many
/// were left out between them (the kept directory's `history.txt` has them
/// all). The end matters as much as the start: the final reads are there,
/// and a long campaign's culprit is rarely in its first minute.
fn elide(lines: &mut Vec<String>, head: usize, tail: usize) {
    if lines.len() <= head + tail {
        return;
    }
    let left_out = lines.len() - head - tail;
    lines.drain(head..head + left_out);
    lines.insert(
        head,
        format!("… {left_out} operations left out (history.txt in the kept directory lists every one) …"),
    );
}

/// One line per operation, every node id, in invocation order: what
/// `history.txt` holds when a campaign finds anomalies.
pub fn history_text(history: &[Event]) -> String {
    let mut ev: Vec<&Event> = history.iter().collect();
    ev.sort_by_key(|e| e.invoked);
    ev.iter()
        .map(|e| {
            format!(
                "client {} {:?} {:?} [{:.3}..{:.3}] {}\n",
                e.client,
                e.op,
                e.outcome,
                e.invoked as f64 / 1e9,
                e.completed as f64 / 1e9,
                e.said.trim()
            )
        })
        .collect()
}

/// One node's answer to `cluster status`, as the invariants need it.
#[derive(Debug, Clone)]
pub struct Observation {
    pub node: u32,
    /// Which run of that node's krgd answered (restarts count up).
    pub incarnation: u32,
    pub at: u64,
    pub epoch: u64,
    pub term: u64,
    pub leader: Option<u32>,
    pub members: BTreeSet<u32>,
}

/// Invariants over every status answer: one leader per term, one member
/// set per epoch, and epochs that never go back within one run of a krgd
/// unless the node was added again in between (a re-added node replays the
/// cluster's history from its start: its epoch climbs again). `history`
/// gives the adds.
pub fn invariant_anomalies(obs: &[Observation], history: &[Event]) -> Vec<String> {
    let readded = |node: u32, from: u64, to: u64| {
        history.iter().any(|e| {
            e.op == Op::Add(node)
                && matches!(e.outcome, Outcome::Ok | Outcome::Unknown)
                && e.invoked <= to
                && (e.outcome == Outcome::Unknown || e.completed >= from)
        })
    };
    let mut out = Vec::new();
    let mut leaders: std::collections::BTreeMap<u64, BTreeSet<u32>> = Default::default();
    let mut sets: std::collections::BTreeMap<u64, BTreeSet<u32>> = Default::default();
    let mut last: std::collections::BTreeMap<(u32, u32), (u64, u64)> = Default::default();
    let mut sorted: Vec<&Observation> = obs.iter().collect();
    sorted.sort_by_key(|o| o.at);
    for o in sorted {
        if let Some(l) = o.leader {
            leaders.entry(o.term).or_default().insert(l);
        }
        if o.epoch > 0 {
            match sets.get(&o.epoch) {
                Some(s) if *s != o.members => out.push(format!(
                    "epoch {}: node {} reports members {:?}, another node {:?}",
                    o.epoch, o.node, o.members, s
                )),
                Some(_) => {}
                None => {
                    sets.insert(o.epoch, o.members.clone());
                }
            }
        }
        let key = (o.node, o.incarnation);
        if let Some((prev, prev_at)) = last.get(&key) {
            if o.epoch < *prev && o.epoch > 0 && !readded(o.node, *prev_at, o.at) {
                out.push(format!(
                    "node {} went back from epoch {prev} to {} without restarting",
                    o.node, o.epoch
                ));
            }
        }
        if o.epoch > 0 {
            last.insert(key, (o.epoch, o.at));
        }
    }
    for (term, ls) in leaders {
        if ls.len() > 1 {
            out.push(format!("term {term} had several leaders: {ls:?}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(op: Op, outcome: Outcome, invoked: u64, completed: u64) -> Event {
        Event {
            client: 0,
            op,
            outcome,
            invoked,
            completed,
            said: String::new(),
        }
    }

    fn set(ids: &[u32]) -> BTreeSet<u32> {
        ids.iter().copied().collect()
    }

    #[test]
    fn sequential_histories() {
        let init = set(&[1, 2]);
        let ok = [
            e(Op::Add(3), Outcome::Ok, 0, 1),
            e(Op::Del(1), Outcome::Ok, 2, 3),
            e(Op::Read(set(&[2, 3])), Outcome::Ok, 4, 5),
        ];
        assert!(linearizable(&init, &ok, u64::MAX));
        // A read that misses an acknowledged add is not.
        let lost = [
            e(Op::Add(3), Outcome::Ok, 0, 1),
            e(Op::Read(set(&[1, 2])), Outcome::Ok, 2, 3),
        ];
        assert!(!linearizable(&init, &lost, u64::MAX));
        // Adding a member twice, both acknowledged, is not.
        let twice = [
            e(Op::Add(3), Outcome::Ok, 0, 1),
            e(Op::Add(3), Outcome::Ok, 2, 3),
        ];
        assert!(!linearizable(&init, &twice, u64::MAX));
        // "already a member" after the add is fine; before it is not.
        let refused = [
            e(Op::Add(3), Outcome::Ok, 0, 1),
            e(Op::Add(3), Outcome::Refused, 2, 3),
        ];
        assert!(linearizable(&init, &refused, u64::MAX));
        let early = [
            e(Op::Add(3), Outcome::Refused, 0, 1),
            e(Op::Add(3), Outcome::Ok, 2, 3),
        ];
        assert!(!linearizable(&init, &early, u64::MAX));
    }

    #[test]
    fn concurrency_and_unknown_outcomes() {
        let init = set(&[1]);
        // Overlapping add and read: the read may see either state.
        let h = [
            e(Op::Add(2), Outcome::Ok, 0, 10),
            e(Op::Read(set(&[1])), Outcome::Ok, 1, 2),
            e(Op::Read(set(&[1, 2])), Outcome::Ok, 3, 4),
        ];
        assert!(linearizable(&init, &h, u64::MAX));
        // ...but not go back to the old one afterwards.
        let back = [
            e(Op::Add(2), Outcome::Ok, 0, 10),
            e(Op::Read(set(&[1, 2])), Outcome::Ok, 1, 2),
            e(Op::Read(set(&[1])), Outcome::Ok, 3, 4),
        ];
        assert!(!linearizable(&init, &back, u64::MAX));
        // An unknown add may show up much later, or never.
        let later = [
            e(Op::Add(2), Outcome::Unknown, 0, 1),
            e(Op::Read(set(&[1])), Outcome::Ok, 5, 6),
            e(Op::Read(set(&[1, 2])), Outcome::Ok, 7, 8),
        ];
        assert!(linearizable(&init, &later, u64::MAX));
        let never = [
            e(Op::Add(2), Outcome::Unknown, 0, 1),
            e(Op::Read(set(&[1])), Outcome::Ok, 5, 6),
        ];
        assert!(linearizable(&init, &never, u64::MAX));
        // A member nobody removed cannot vanish.
        let vanished = [
            e(Op::Del(3), Outcome::Unknown, 0, 1),
            e(Op::Read(set(&[])), Outcome::Ok, 5, 6),
        ];
        assert!(!linearizable(&init, &vanished, u64::MAX));
        // Many unknown ops on few nodes stay cheap when checked per node.
        let mut many: Vec<Event> = (0..400u32)
            .map(|i| {
                let op = if (i / 5) % 2 == 0 {
                    Op::Add(2 + i % 5)
                } else {
                    Op::Del(2 + i % 5)
                };
                let outcome = if i % 3 == 0 {
                    Outcome::Ok
                } else {
                    Outcome::Unknown
                };
                e(op, outcome, i as u64 * 10, i as u64 * 10 + 15)
            })
            .collect();
        many.push(e(Op::Read(set(&[1])), Outcome::Ok, 10_000, 10_001));
        assert!(check_members(&init, &many, &[1, 2, 3, 4, 5, 6]).is_empty());
        many.push(e(Op::Read(set(&[3])), Outcome::Ok, 10_000, 10_001));
        let bad = check_members(&init, &many, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(bad.len(), 2, "{bad:?}");
    }

    #[test]
    fn long_reports_keep_both_ends() {
        let mut lines: Vec<String> = (0..300).map(|i| format!("op {i}")).collect();
        elide(&mut lines, 50, 150);
        assert_eq!(lines.len(), 201);
        assert_eq!(lines[49], "op 49");
        assert!(
            lines[50].contains("100 operations left out"),
            "{}",
            lines[50]
        );
        assert_eq!(lines[51], "op 150");
        assert_eq!(lines[200], "op 299");
        let mut short: Vec<String> = (0..200).map(|i| format!("op {i}")).collect();
        elide(&mut short, 50, 150);
        assert_eq!(short.len(), 200);
        let text = history_text(&[
            e(Op::Del(2), Outcome::Ok, 2_000_000_000, 2_500_000_000),
            e(Op::Add(2), Outcome::Refused, 1_000_000_000, 1_100_000_000),
        ]);
        assert_eq!(
            text,
            "client 0 Add(2) Refused [1.000..1.100] \nclient 0 Del(2) Ok [2.000..2.500] \n"
        );
    }

    #[test]
    fn invariants() {
        let o = |node, term, leader, epoch, members: &[u32]| Observation {
            node,
            incarnation: 0,
            at: 0,
            epoch,
            term,
            leader,
            members: set(members),
        };
        assert!(invariant_anomalies(
            &[o(1, 2, Some(1), 3, &[1, 2]), o(2, 2, Some(1), 3, &[1, 2])],
            &[]
        )
        .is_empty());
        let two = invariant_anomalies(
            &[o(1, 2, Some(1), 3, &[1, 2]), o(2, 2, Some(2), 3, &[1, 2])],
            &[],
        );
        assert!(two[0].contains("term 2 had several leaders"), "{two:?}");
        let split = invariant_anomalies(&[o(1, 2, None, 3, &[1, 2]), o(2, 2, None, 3, &[1])], &[]);
        assert!(split[0].contains("epoch 3"), "{split:?}");
        // Going back is an anomaly, unless the node was added again.
        let mut later = o(1, 2, None, 2, &[1]);
        later.at = 10;
        let back = [o(1, 2, None, 3, &[1, 2]), later];
        assert!(invariant_anomalies(&back, &[])[0].contains("went back"));
        let readd = Event {
            client: 2,
            op: Op::Add(1),
            outcome: Outcome::Ok,
            invoked: 2,
            completed: 5,
            said: String::new(),
        };
        assert!(invariant_anomalies(&back, &[readd]).is_empty());
    }
}
