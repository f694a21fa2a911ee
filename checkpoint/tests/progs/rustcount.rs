// Test program (Rust, built by the test with rustc): a counter whose every
// step checks the state a restart must bring back, and prints "N ok" or
// "N BAD <what>".
//
// * a 16 MiB heap vector with a known checksum,
// * a BTreeMap that grows by one entry per step,
// * a thread-local step counter (TLS of the main thread),
// * a worker thread that ticks an atomic every millisecond (it must still
//   run after restart) and keeps its own thread-local count in step,
// * a log file (argument 1) written at every step, whose offset must
//   follow the counter (a restart puts it back where the checkpoint saw it).
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{Seek, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

thread_local! {
    static STEPS: Cell<u64> = const { Cell::new(0) };
}

fn checksum(v: &[u64]) -> u64 {
    v.iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, x| (h ^ x).wrapping_mul(0x100_0000_01b3))
}

fn start_worker(ticks: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        thread_local! {
            static MINE: Cell<u64> = const { Cell::new(0) };
        }
        loop {
            let n = MINE.with(|m| {
                m.set(m.get() + 1);
                m.get()
            });
            // The worker's TLS and the shared atomic advance together.
            if ticks.fetch_add(1, Ordering::SeqCst) + 1 != n {
                ticks.store(u64::MAX, Ordering::SeqCst);
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

fn main() {
    let log_path = std::env::args().nth(1).expect("usage: rustcount LOG");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&log_path)
        .expect("open log");
    let big: Vec<u64> = (0..(16u64 << 20) / 8)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let want = checksum(&big);
    let ticks = Arc::new(AtomicU64::new(0));
    start_worker(ticks.clone());
    while ticks.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut map = BTreeMap::new();
    let mut last_ticks = 0;
    let mut line_bytes = 0u64;
    for n in 1u64.. {
        map.insert(n, n * n);
        let steps = STEPS.with(|s| {
            s.set(s.get() + 1);
            s.get()
        });
        writeln!(log, "{n}").expect("write log");
        line_bytes += format!("{n}\n").len() as u64;
        let offset = log.stream_position().expect("log offset");
        let t = ticks.load(Ordering::SeqCst);
        let bad = if checksum(&big) != want {
            Some("heap")
        } else if map.len() as u64 != n || (1..=n).rev().take(50).any(|k| map[&k] != k * k) {
            Some("map")
        } else if steps != n {
            Some("tls")
        } else if t == u64::MAX || t <= last_ticks {
            Some("worker")
        } else if offset != line_bytes {
            Some("log-offset")
        } else {
            None
        };
        last_ticks = t;
        match bad {
            None => println!("{n} ok"),
            Some(what) => println!("{n} BAD {what}"),
        }
        std::io::stdout().flush().expect("flush");
        std::thread::sleep(Duration::from_millis(20));
    }
}
