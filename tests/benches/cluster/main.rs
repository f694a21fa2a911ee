//! Cluster benchmark (issue 2, point 9; issue 14): for N krgd processes on
//! loopback, time formation, the hot-add of one node, failure detection
//! after kill -9, and resident memory at rest — and the same for N serf
//! agents when `serf` is on PATH, in the same run, printing krg/serf ratios.
//!
//! Run: `cargo bench -p krg-tests --bench cluster`. `KRG_BENCH_NODES`
//! chooses sizes and runs: `3,16,64x10,256` (the default) is one run at 3,
//! 16 and 256 nodes and ten at 64. Within a size, runs alternate which
//! system goes first; the table gives the median and the worst run.
//!
//! Every time is measured from the moment the action starts until the LAST
//! node observed the result. A few threads poll every node over a connection
//! kept open (krgd's admin socket; serf's RPC port), so a look at one node
//! costs one round trip: the figures include up to one polling round (a few
//! milliseconds) and the load the polling puts on the two cores, the same
//! for both systems.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod krg;
mod report;
mod serf;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Parallel pollers; more would mostly measure the pollers fighting krgd for CPU.
const POLL_THREADS: usize = 4;
/// Pause between two polling rounds of one thread.
const POLL_PAUSE: Duration = Duration::from_millis(10);
/// Upper bound for any single measured phase.
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Quiet time after formation before memory is read.
const REST: Duration = Duration::from_secs(3);

fn main() {
    let plan = match bench_plan() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cluster bench: {e:#}");
            std::process::exit(2);
        }
    };
    raise_fd_limit();
    if let Err(e) = build_binaries() {
        eprintln!("cluster bench: {e:#}");
        std::process::exit(1);
    }
    let serf = serf_available();
    if !serf {
        println!("serf not on PATH: krg figures only");
    }
    let mut rows = Vec::new();
    for (n, runs) in plan {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for run in 1..=runs {
            println!("== N = {n}, run {run}/{runs}, load {}", loadavg());
            // Alternate who goes first, so that neither always meets a
            // machine still busy with the other's teardown.
            let krg_first = run % 2 == 1;
            for krg_turn in [krg_first, !krg_first] {
                if krg_turn {
                    let f = krg::run(n);
                    f.print("krg");
                    ours.push(f);
                } else if serf {
                    let f = serf::run(n);
                    f.print("serf");
                    theirs.push(f);
                }
            }
        }
        rows.push((n, ours, theirs));
    }
    println!("\nload after the runs: {}", loadavg());
    report::print_table(&rows);
}

/// (size, runs) from KRG_BENCH_NODES (or its old name KRG_BENCH_SIZES):
/// a comma-separated list of `N` or `NxRUNS`.
fn bench_plan() -> Result<Vec<(u32, u32)>> {
    let list = std::env::var("KRG_BENCH_NODES")
        .or_else(|_| std::env::var("KRG_BENCH_SIZES"))
        .unwrap_or_else(|_| "3,16,64x10,256".into());
    list.split(',')
        .map(|item| {
            let item = item.trim();
            let (n, runs) = item.split_once('x').unwrap_or((item, "1"));
            let n: u32 = n
                .parse()
                .with_context(|| format!("KRG_BENCH_NODES: {item:?} is not N or NxRUNS"))?;
            let runs: u32 = runs
                .parse()
                .with_context(|| format!("KRG_BENCH_NODES: {item:?} is not N or NxRUNS"))?;
            if !(2..=1000).contains(&n) || runs == 0 {
                bail!("KRG_BENCH_NODES: {item:?}: N must be 2..=1000 and RUNS at least 1");
            }
            Ok((n, runs))
        })
        .collect()
}

/// Build krgd and krgadm in this profile unconditionally: a stale binary
/// from an older checkout would silently be measured otherwise.
fn build_binaries() -> Result<()> {
    let status = krg_tests::cargo_build(&["krgd", "krgadm"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p krgd -p krgadm failed ({status})");
    }
    Ok(())
}

/// Raise this process's soft RLIMIT_NOFILE to its hard limit (the daemons
/// started inherit it): at 256 nodes every daemon keeps a connection to
/// hundreds of others, and the pollers one per node, past the usual soft
/// limit of 1024.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid rlimit struct we own.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
        }
    };
    if raised {
        println!("open files limit: {}", lim.rlim_cur);
    } else {
        println!(
            "cannot raise the open files limit: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn serf_available() -> bool {
    Command::new("serf")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Poll `check(i)` for every node `names[i]` with a few threads until
/// each has returned true once; returns the time since `t0` at which the
/// last one did. Fails after PHASE_TIMEOUT, naming the ones still pending.
/// With KRG_BENCH_VERBOSE set, prints how the times spread over the nodes.
fn until_all(
    names: &[String],
    t0: Instant,
    what: &str,
    check: impl Fn(usize) -> bool + Sync,
) -> Result<Duration> {
    let count = names.len();
    let seen: Mutex<Vec<Option<Duration>>> = Mutex::new(vec![None; count]);
    let gave_up = AtomicBool::new(false);
    let threads = POLL_THREADS.min(count).max(1);
    std::thread::scope(|s| {
        for k in 0..threads {
            let (seen, gave_up, check) = (&seen, &gave_up, &check);
            s.spawn(move || {
                let mut mine: Vec<usize> = (k..count).step_by(threads).collect();
                while !mine.is_empty() {
                    if t0.elapsed() > PHASE_TIMEOUT {
                        gave_up.store(true, Ordering::Relaxed);
                        return;
                    }
                    mine.retain(|&i| {
                        if !check(i) {
                            return true;
                        }
                        let at = t0.elapsed();
                        seen.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(at);
                        false
                    });
                    std::thread::sleep(POLL_PAUSE);
                }
            });
        }
    });
    let seen = seen.into_inner().unwrap_or_else(|p| p.into_inner());
    if gave_up.load(Ordering::Relaxed) {
        let pending: Vec<&str> = (0..count)
            .filter(|i| seen[*i].is_none())
            .map(|i| names[i].as_str())
            .collect();
        bail!("{what}: still waiting after {PHASE_TIMEOUT:?} on {pending:?}");
    }
    let mut times: Vec<(Duration, &str)> = seen
        .iter()
        .zip(names)
        .filter_map(|(t, n)| Some(((*t)?, n.as_str())))
        .collect();
    times.sort();
    if std::env::var_os("KRG_BENCH_VERBOSE").is_some() && !times.is_empty() {
        let slowest: Vec<String> = times
            .iter()
            .rev()
            .take(3)
            .map(|(t, n)| format!("{n} {:.3} s", t.as_secs_f64()))
            .collect();
        println!(
            "  {what}: first {:.3} s, median {:.3} s, slowest {}",
            times[0].0.as_secs_f64(),
            times[times.len() / 2].0.as_secs_f64(),
            slowest.join(", ")
        );
    }
    times
        .last()
        .map(|(t, _)| *t)
        .ok_or_else(|| anyhow!("{what}: nothing to wait for"))
}

fn labels<T: std::fmt::Display>(items: &[T]) -> Vec<String> {
    items.iter().map(|i| format!("node {i}")).collect()
}

fn median_max(mut v: Vec<u64>) -> (Option<u64>, Option<u64>) {
    v.sort_unstable();
    (v.get(v.len() / 2).copied(), v.last().copied())
}
