//! CPU cost of sampling: 10 built-in probes at a 100 ms period, run by the
//! same engine krgd uses (one sampling thread per probe, values stored in
//! the tree), measured with getrusage over a wall-clock window.
//!
//! `cargo bench -p plugpropol` (window: PLUGPROPOL_BENCH_SECS, default 10).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;
use std::time::{Duration, Instant};

use plugpropol::tree::ROOT;
use plugpropol::Engine;

fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data; zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF covers all threads.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Load `names` at `period_ms`, let them run for `window`, return
/// (% of one core, samples taken).
fn measure(names: &[&str], period_ms: u64, window: Duration) -> (f64, u64) {
    let engine = Engine::new(1, Path::new("/config/krg_scheduler"), None);
    let probes = engine.tree().lookup(ROOT, "probes").expect("probes dir");
    for name in names {
        let dir = engine
            .mkdir(probes, name)
            .unwrap_or_else(|e| panic!("mkdir {name}: {e}"));
        let period = engine
            .tree()
            .lookup(dir, "probe_period")
            .expect("probe_period");
        engine
            .write(period, &period_ms.to_string())
            .expect("set period");
    }
    let count = |e: &Engine| e.tree().shared_values().iter().map(|v| v.seq).sum::<u64>();
    let seq0 = count(&engine);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    std::thread::sleep(window);
    let (cpu1, wall) = (cpu_seconds(), t0.elapsed());
    let samples = count(&engine) - seq0;
    engine.shutdown();
    ((cpu1 - cpu0) / wall.as_secs_f64() * 100.0, samples)
}

fn main() {
    let secs: u64 = std::env::var("PLUGPROPOL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let window = Duration::from_secs(secs);
    let ten = [
        "mem_probe",
        "mem_probe.2",
        "mem_probe.3",
        "mem_probe.4",
        "load_probe",
        "load_probe.2",
        "load_probe.3",
        "cpu_probe",
        "cpu_probe.2",
        "cpu_probe.3",
    ];
    let (pct, samples) = measure(&ten, 100, window);
    // Each probe reports several sources; `samples` sums per-source sample counters.
    println!("probe_cost: 10 probes (4 mem, 3 load, 3 cpu) at 100 ms for {secs} s: {pct:.3}% of one core ({samples} source samples)");
    println!(
        "probe_cost: target < 1% of one core: {}",
        if pct < 1.0 { "met" } else { "NOT met" }
    );
    let (pct, _) = measure(&["process_probe"], 100, window);
    println!("probe_cost: process_probe alone at 100 ms (reads /proc/<pid>/stat of every process): {pct:.3}% of one core");
    let (pct, _) = measure(&["process_probe"], 2000, window);
    println!("probe_cost: process_probe at its default 2000 ms: {pct:.3}% of one core");
}
