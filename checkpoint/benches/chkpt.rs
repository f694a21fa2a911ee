//! `cargo bench -p checkpoint`, against CRIU in the same run when `criu`
//! is on PATH (interleaved rounds, the order alternating, medians):
//!
//! 1. time frozen, measured inside the job (the longest gap between its
//!    own clock readings) and by the tool, for 1 GiB and 8 GiB jobs; then
//!    SN 2 after 5 % of the memory changed: time, frozen time, image size
//!    ([`freeze`]);
//! 2. dump time, restore time (eager; and `restart --lazy` until the job
//!    runs, against CRIU's eager restore) and image size for 64 MiB,
//!    256 MiB and 1 GiB of touched anonymous memory and for a 3-process
//!    pipe tree. Both save then end the job (`checkpoint --kill`,
//!    `criu dump`), so files the job writes do not change between dump and
//!    restore.
//!
//! KRG_BENCH_FREEZE_SIZES=1024,8192 and KRG_BENCH_SIZES=64,256,1024 pick
//! the sizes (MiB; an empty list skips the part); KRG_BENCH_ROUNDS the
//! number of rounds (default 3); KRG_BENCH_VERBOSE prints every round.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

#[path = "support/freeze.rs"]
mod freeze;
#[path = "support/util.rs"]
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use util::*;

/// A workload: start it, return the root PID once it is ready.
enum Work {
    Hog(PathBuf, u64),
    Tree(PathBuf),
}

impl Work {
    fn start(&self, tmp: &Path) -> i32 {
        let ready = tmp.join("ready");
        let _ = std::fs::remove_file(&ready);
        let cmd = match self {
            Work::Hog(exe, mib) => {
                let mut c = Command::new(exe);
                c.arg(mib.to_string()).arg(&ready);
                c
            }
            Work::Tree(exe) => {
                let mut c = Command::new(exe);
                c.arg(tmp);
                c
            }
        };
        let pid = start(cmd);
        match self {
            Work::Hog(..) => wait_for(&ready),
            Work::Tree(..) => {
                let deadline = Instant::now() + Duration::from_secs(30);
                while tree_pids(pid).len() < 3 || !tmp.join("grandchild.log").exists() {
                    assert!(Instant::now() < deadline, "tree did not start");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        pid
    }
}

#[derive(Default)]
struct Samples {
    dump: Vec<f64>,
    restore: Vec<f64>,
    /// `restart --lazy`: until the processes run.
    lazy: Vec<f64>,
    /// `restart --lazy --check-as-loaded`: the same, page data checked as
    /// it loads rather than first.
    lazy_unchecked: Vec<f64>,
    size: u64,
}

fn round_krg(work: &Work, tmp: &Path, s: &mut Samples) {
    let store = tmp.join("krg");
    let _ = std::fs::remove_dir_all(&store);
    let pid = work.start(tmp);
    let all = tree_pids(pid);
    let d = must(
        Command::new(CHECKPOINT)
            .args(["--no-capability-check", "--kill", "--dir"])
            .arg(&store)
            .arg(pid.to_string()),
        "checkpoint",
    );
    s.size = dir_size(&store.join(pid.to_string()));
    kill_all(&all);
    let r = must(
        Command::new(RESTART)
            .arg("--dir")
            .arg(&store)
            .arg(pid.to_string())
            .arg("1"),
        "restart",
    );
    kill_tree(pid);
    s.dump.push(d.as_secs_f64());
    s.restore.push(r.as_secs_f64());
    // the same image, lazily: restart returns once the processes run;
    // first with every page checked before, then checked as loaded
    s.lazy.push(lazy_restart(&store, pid, false));
    s.lazy_unchecked.push(lazy_restart(&store, pid, true));
}

/// `restart --lazy` of `pid`'s SN 1 in `store`: seconds until it exits
/// (the processes run); then the tree and its page server are killed.
/// Its stderr goes to a file: the page server keeps it open until every
/// page is in, so a pipe's end would time the whole fill, not the restart.
fn lazy_restart(store: &Path, pid: i32, check_as_loaded: bool) -> f64 {
    let log = store.with_extension("lazy-stderr");
    let mut cmd = Command::new(RESTART);
    cmd.arg("--lazy");
    if check_as_loaded {
        cmd.arg("--check-as-loaded");
    }
    cmd.arg("--dir").arg(store).arg(pid.to_string()).arg("1");
    clean(&mut cmd).stderr(std::fs::File::create(&log).expect("stderr file"));
    let t = Instant::now();
    let status = cmd.status().expect("restart --lazy");
    let took = t.elapsed().as_secs_f64();
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "restart --lazy failed: {err}");
    kill_tree(pid);
    // the page server ends when its address spaces are gone
    if let Some(server) = err.split("page server PID ").nth(1).and_then(|r| {
        r.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse::<i32>()
            .ok()
    }) {
        kill_all(&[server]);
    }
    took
}

fn round_criu(work: &Work, tmp: &Path, s: &mut Samples) {
    let dir = tmp.join("criu");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("criu dir");
    let pid = work.start(tmp);
    let all = tree_pids(pid);
    let d = must(
        Command::new("criu")
            .args(["dump", "-t", &pid.to_string(), "-D"])
            .arg(&dir)
            .args(["-o", "dump.log"]),
        "criu dump",
    );
    s.size = dir_size(&dir);
    kill_all(&all);
    let r = must(
        Command::new("criu")
            .args(["restore", "-d", "-D"])
            .arg(&dir)
            .args(["-o", "restore.log"]),
        "criu restore",
    );
    kill_tree(pid);
    s.dump.push(d.as_secs_f64());
    s.restore.push(r.as_secs_f64());
}

/// Sizes (MiB) from an environment variable, or the default.
fn sizes(var: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(var)
        .ok()
        .map(|s| s.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn main() {
    // Restored processes are orphaned when restart/criu exit: adopt them.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("chkpt bench: needs root (restart uses clone3 with chosen PIDs)");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let rounds: usize = std::env::var("KRG_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let verbose = std::env::var_os("KRG_BENCH_VERBOSE").is_some();
    let criu = have_criu();
    println!(
        "checkpoint/restart, median of {rounds} round(s){}; load average at start: {}",
        if criu {
            ", krg vs CRIU interleaved (order alternating)"
        } else {
            " (criu not on PATH: no comparison)"
        },
        load()
    );
    let fsizes = sizes("KRG_BENCH_FREEZE_SIZES", &[1024, 8192]);
    if !fsizes.is_empty() {
        freeze::run(tmp.path(), &fsizes, rounds, criu, verbose);
    }
    let dsizes = sizes("KRG_BENCH_SIZES", &[64, 256, 1024]);
    dump_restore(tmp.path(), &dsizes, rounds, criu, verbose);
    println!("load average at the end: {}", load());
}

/// Part 2: dump, restore, size (both end the job at dump).
fn dump_restore(tmp: &Path, sizes: &[u64], rounds: usize, have_criu: bool, verbose: bool) {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let hog = tmp.join("hog");
    compile(&here.join("benches/hog.c"), &hog);
    let tree = tmp.join("tree");
    compile(&here.join("tests/progs/tree.c"), &tree);
    let mut works: Vec<(String, Work)> = sizes
        .iter()
        .map(|&m| (format!("{m} MiB anon"), Work::Hog(hog.clone(), m)))
        .collect();
    works.push(("3-process pipe tree".into(), Work::Tree(tree)));
    println!("\ndump (job ended), eager restore, lazy restore until the job runs (lazy: pages checked first; lazy*: --check-as-loaded), image size");
    println!(
        "{:<22} {:>10} {:>10} {:>8} {:>8} {:>11} | {:>10} {:>10} {:>11} | {:>6} {:>6} {:>6} {:>6}",
        "workload",
        "dump s",
        "restore s",
        "lazy s",
        "lazy* s",
        "image MiB",
        "criu dump",
        "criu rest",
        "criu MiB",
        "dump×",
        "rest×",
        "lazy×",
        "size×"
    );
    for (name, work) in &works {
        let wdir = tmp.join("w");
        std::fs::create_dir_all(&wdir).expect("work dir");
        let (mut k, mut c) = (Samples::default(), Samples::default());
        for r in 0..rounds {
            // Who goes first alternates: the second run of a round finds the
            // memory the first one freed, which this VM hands back slowly.
            if have_criu && r % 2 == 1 {
                round_criu(work, &wdir, &mut c);
            }
            round_krg(work, &wdir, &mut k);
            if have_criu && r % 2 == 0 {
                round_criu(work, &wdir, &mut c);
            }
            if verbose {
                let last = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
                eprintln!(
                    "  {name} round {}: krg dump {:.3} restore {:.3} lazy {:.3} lazy* {:.3} | criu dump {:.3} restore {:.3}; load {}",
                    r + 1,
                    last(&k.dump),
                    last(&k.restore),
                    last(&k.lazy),
                    last(&k.lazy_unchecked),
                    last(&c.dump),
                    last(&c.restore),
                    load()
                );
            }
        }
        let (kd, kr, kl, ku) = (
            median(&mut k.dump),
            median(&mut k.restore),
            median(&mut k.lazy),
            median(&mut k.lazy_unchecked),
        );
        if have_criu {
            let (cd, cr) = (median(&mut c.dump), median(&mut c.restore));
            println!(
                "{:<22} {:>10.3} {:>10.3} {:>8.3} {:>8.3} {:>11.1} | {:>10.3} {:>10.3} {:>11.1} | {:>6.2} {:>6.2} {:>6.2} {:>6.2}",
                name, kd, kr, kl, ku, mib(k.size), cd, cr, mib(c.size), kd / cd, kr / cr, kl / cr, k.size as f64 / c.size as f64
            );
        } else {
            println!(
                "{:<22} {:>10.3} {:>10.3} {:>8.3} {:>8.3} {:>11.1} |",
                name,
                kd,
                kr,
                kl,
                ku,
                mib(k.size)
            );
        }
        let _ = std::fs::remove_dir_all(&wdir);
    }
}
