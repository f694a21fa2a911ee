//! Per-phase timings of a checkpoint, a restart or a migration: where the
//! frozen time and the downtime go (`--timings`, or `KRG_TIMINGS=1`).
//!
//! A thread collects its phases: [`start`] begins a list, [`mark`] closes
//! the phase that ran since the last mark under a name, [`take`] ends the
//! list. Nothing is printed here: the commands print [`line`]. The cost is
//! one clock read and a push per phase, so the lists are always kept.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// One phase: its name (no spaces) and how long it took.
pub type Phase = (String, Duration);

struct List {
    last: Instant,
    phases: Vec<Phase>,
}

thread_local! {
    static LIST: RefCell<Option<List>> = const { RefCell::new(None) };
}

/// Begin a list on this thread (an unfinished one is dropped).
pub fn start() {
    LIST.with(|l| {
        *l.borrow_mut() = Some(List {
            last: Instant::now(),
            phases: Vec::new(),
        })
    });
}

/// The phase since the last mark (or [`start`]) ends here and is called
/// `name`. Without a list on this thread, nothing happens.
pub fn mark(name: &str) {
    LIST.with(|l| {
        if let Some(l) = l.borrow_mut().as_mut() {
            let now = Instant::now();
            l.phases.push((name.to_string(), now - l.last));
            l.last = now;
        }
    });
}

/// How many phases this thread's list holds so far.
pub fn count() -> usize {
    LIST.with(|l| l.borrow().as_ref().map_or(0, |l| l.phases.len()))
}

/// Add phases measured elsewhere (a forked child's) to this thread's list,
/// as if they had just ended: the next phase starts now.
pub fn append(phases: Vec<Phase>) {
    LIST.with(|l| {
        if let Some(l) = l.borrow_mut().as_mut() {
            l.phases.extend(phases);
            l.last = Instant::now();
        }
    });
}

/// End this thread's list and return it (empty without [`start`]).
pub fn take() -> Vec<Phase> {
    LIST.with(|l| l.borrow_mut().take().map(|l| l.phases).unwrap_or_default())
}

/// Whether the user asked for timings through the environment
/// (`KRG_TIMINGS` set to anything but empty or `0`).
pub fn wanted() -> bool {
    std::env::var_os("KRG_TIMINGS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The phases with the same name added up (a phase per task of a tree),
/// in the order they first appear.
pub fn merged(phases: &[Phase]) -> Vec<Phase> {
    let mut out: Vec<Phase> = Vec::new();
    for (name, d) in phases {
        match out.iter_mut().find(|p| &p.0 == name) {
            Some(p) => p.1 += *d,
            None => out.push((name.clone(), *d)),
        }
    }
    out
}

/// `timings: name=1.234ms name=…` ([`merged`]) — one line, parsed back by
/// [`parse`].
pub fn line(phases: &[Phase]) -> String {
    let mut s = String::from("timings:");
    for (name, d) in merged(phases) {
        s.push_str(&format!(" {name}={:.3}ms", d.as_secs_f64() * 1000.0));
    }
    s
}

/// The phases of a [`line`] (anything after `timings:`); malformed pairs are
/// skipped.
pub fn parse(text: &str) -> Vec<Phase> {
    let Some((_, rest)) = text.split_once("timings:") else {
        return Vec::new();
    };
    rest.split_whitespace()
        .filter_map(|w| {
            let (name, v) = w.split_once('=')?;
            let ms: f64 = v.strip_suffix("ms")?.parse().ok()?;
            (ms.is_finite() && ms >= 0.0)
                .then(|| (name.to_string(), Duration::from_secs_f64(ms / 1000.0)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn marks_come_back_in_order_and_survive_the_line() {
        start();
        mark("a");
        std::thread::sleep(Duration::from_millis(2));
        mark("b");
        let p = take();
        assert_eq!(
            p.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(p[1].1 >= Duration::from_millis(2));
        let back = parse(&format!("restart: {}", line(&p)));
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].0, "b");
        assert!(take().is_empty(), "take ends the list");
        start();
        mark("parent");
        assert_eq!(count(), 1);
        append(back);
        assert_eq!(
            take().iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            ["parent", "a", "b"]
        );
        mark("nobody listens");
        assert!(take().is_empty());
        assert!(parse("timings: x=1ms y=zz z=-1ms").len() == 1);
        let m = merged(&parse("timings: a=1ms b=2ms a=3ms"));
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], ("a".to_string(), Duration::from_millis(4)));
    }
}
