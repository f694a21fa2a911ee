//! Process layer benchmark (issue 10): N krgd on loopback, formed into a
//! cluster, timed end to end from the `krg` command's start to its exit:
//!
//! * `krg run -n 1-N -- date` (N = 10 and 100), against `pdsh` and `clush`
//!   over ssh (and pdsh through ssh ControlMaster connections), all to one
//!   sshd in a private network namespace where 127.0.0.1..N are the nodes;
//! * 1000 processes over 100 nodes (`krg run -n 1-100 --per-node 10 -- true`);
//! * `krg ps` over 64 nodes (each running a job);
//! * `krg push` of 100 MiB to 10 nodes, against `clush --copy` and `pdcp`.
//!
//! Each run line also has a local floor: the same processes started on this
//! machine without krg, each in a PID namespace of its own as a krg job is
//! (`unshare --pid --fork`, all at once): what the job model itself costs
//! here, with no network, daemon or init of krg's.
//!
//! Rounds are interleaved (the order alternates), figures are medians, and
//! the machine's load is printed with them. Run (as root):
//! `cargo bench -p krg-tests --bench run` (`KRG_BENCH_RUN_SIZES=10` and
//! `KRG_BENCH_ROUNDS=5` to shorten it; `KRG_BENCH_REFS=none` leaves the
//! ssh tools out; `KRG_BENCH_HOLD=SECS` keeps each cluster up that long
//! first, printing how to reach it, for profiling by hand).
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is a failed run

mod sshref;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use krg_tests::{bin, wait_for, KillOnDrop, TestCluster};

const SETTLE: Duration = Duration::from_secs(180);

/// A reference tool's command, made afresh for each round.
type RefCmd<'a> = (&'static str, Box<dyn Fn() -> Command + 'a>);

/// One measured line: krg's median and each reference's.
struct Line {
    what: String,
    goal: &'static str,
    krg: Option<Duration>,
    refs: Vec<(&'static str, Option<Duration>)>,
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Time a command to its exit; it must succeed.
fn time(mut cmd: Command) -> Result<Duration> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    let d = t.elapsed();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
        );
    }
    Ok(d)
}

/// `rounds` interleaved rounds of krg and every reference; medians.
fn measure(
    what: String,
    goal: &'static str,
    rounds: usize,
    krg: &dyn Fn() -> Command,
    refs: &[(&'static str, &dyn Fn() -> Command)],
) -> Line {
    let mut ours = Vec::new();
    let mut theirs: Vec<Vec<Duration>> = vec![Vec::new(); refs.len()];
    let mut failed: Vec<bool> = vec![false; refs.len() + 1];
    for r in 0..rounds {
        let mut order: Vec<usize> = (0..=refs.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for i in order {
            if failed[i] {
                continue;
            }
            let cmd = if i == 0 { krg() } else { (refs[i - 1].1)() };
            match time(cmd) {
                Ok(d) if i == 0 => ours.push(d),
                Ok(d) => theirs[i - 1].push(d),
                Err(e) => {
                    println!("  {}: {e:#}", if i == 0 { "krg" } else { refs[i - 1].0 });
                    failed[i] = true;
                }
            }
        }
    }
    Line {
        what,
        goal,
        krg: median(ours),
        refs: refs
            .iter()
            .zip(theirs)
            .map(|((n, _), t)| (*n, median(t)))
            .collect(),
    }
}

fn show(l: &Line) {
    let s = |d: Option<Duration>| {
        d.map(|d| format!("{:.3} s", d.as_secs_f64()))
            .unwrap_or_else(|| "—".into())
    };
    let mut text = format!("{:<44} krg {:>9}", l.what, s(l.krg));
    for (name, d) in &l.refs {
        let ratio = match (l.krg, d) {
            (Some(a), Some(b)) if a.as_secs_f64() > 0.0 => {
                format!(" ({:.1}x krg)", b.as_secs_f64() / a.as_secs_f64())
            }
            _ => String::new(),
        };
        text.push_str(&format!("   {name} {}{ratio}", s(*d)));
    }
    println!("{text}   goal {}   load {}", l.goal, load());
}

/// N krgd on loopback, formed, every node agreeing on the members.
fn cluster(n: u32) -> Result<TestCluster> {
    let mut c = TestCluster::loopback(n)?;
    // Latency is measured here, not failure detection: on a loaded machine
    // a hundred daemons must not be marked failed by a slow heartbeat.
    c.extra_args = ["--heartbeat-ms", "500", "--failure-timeout-ms", "10000"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let key = c.key.clone();
    for id in 1..=n {
        let mut tries = 0;
        loop {
            match c.start_with(id, &key, &[]) {
                Ok(()) => break,
                Err(e) if tries < 8 && format!("{e:#}").contains("Address already in use") => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e),
            }
        }
    }
    let ids: Vec<u32> = (1..=n).collect();
    c.wait_present(1, &ids, SETTLE)?;
    c.krgadm_ok(1, &["cluster", "start"])?;
    wait_for(SETTLE, "every node to see every member online", || {
        ids.iter()
            .all(|id| {
                c.status(*id)
                    .ok()
                    .is_some_and(|s| s["online"].as_u64() == Some(n as u64))
            })
            .then_some(())
    })?;
    Ok(c)
}

/// `KRG_BENCH_HOLD=SECS`: print how to reach the formed cluster with `krg`
/// and keep it up that long before measuring, to profile it by hand
/// (`perf record -a` while running the printed command).
fn hold_for_profiling(c: &TestCluster) -> Result<()> {
    let Ok(secs) = std::env::var("KRG_BENCH_HOLD") else {
        return Ok(());
    };
    let secs: u64 = secs
        .parse()
        .context("KRG_BENCH_HOLD: a number of seconds")?;
    let cmd = c.krg(1)?;
    let env: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v?.to_str()?)))
        .collect();
    println!(
        "holding {secs} s: {} {}",
        env.join(" "),
        cmd.get_program().to_string_lossy()
    );
    std::thread::sleep(Duration::from_secs(secs));
    Ok(())
}

/// The local floor of `groups` × `per_group` jobs of `prog` (see the
/// module comment): one shell per group, each starting its jobs at once.
fn local_floor(groups: u32, per_group: u32, prog: &str) -> Command {
    let script = format!(
        "for g in $(seq 1 {groups}); do (for j in $(seq 1 {per_group}); do unshare --pid --fork {prog} >/dev/null & done; wait) & done; wait"
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    cmd
}

fn krg(c: &TestCluster, args: &[&str]) -> Command {
    let mut cmd = c.krg(1).unwrap();
    cmd.args(args);
    cmd
}

fn bench_size(
    n: u32,
    rounds: usize,
    refs: Option<&sshref::Refs>,
    lines: &mut Vec<Line>,
) -> Result<()> {
    let t = Instant::now();
    // The harness draws every node's port up front; now and then another
    // process takes one meanwhile: a fresh cluster draws again.
    let mut c = cluster(n);
    for _ in 0..2 {
        match &c {
            Err(e) if format!("{e:#}").contains("Address already in use") => {
                println!("port clash ({e:#}): starting over");
                c = cluster(n);
            }
            _ => break,
        }
    }
    let c = c?;
    println!(
        "== N = {n}: cluster formed in {:.1} s, load {}",
        t.elapsed().as_secs_f64(),
        load()
    );
    hold_for_profiling(&c)?;
    let all = format!("1-{n}");
    // Warm-up (page cache, peer connections).
    time(krg(&c, &["run", "-n", &all, "--", "true"]))?;

    let run_date = || krg(&c, &["run", "-n", &all, "--", "date"]);
    let mut ref_cmds: Vec<RefCmd> = vec![(
        "local pidns floor",
        Box::new(move || local_floor(1, n, "/usr/bin/date")),
    )];
    if let Some(r) = refs {
        if r.pdsh {
            ref_cmds.push(("pdsh/ssh", Box::new(move || r.pdsh(n, "date", false))));
            let _ = time(r.pdsh(n, "true", true)); // opens the ControlMaster connections
            ref_cmds.push((
                "pdsh/ssh+ControlMaster",
                Box::new(move || r.pdsh(n, "date", true)),
            ));
        }
        if r.clush {
            ref_cmds.push(("clush/ssh", Box::new(move || r.clush(n, "date"))));
        }
    }
    let borrowed: Vec<(&'static str, &dyn Fn() -> Command)> =
        ref_cmds.iter().map(|(n, f)| (*n, f.as_ref())).collect();
    let goal = if n <= 10 { "≤ 0.02 s" } else { "≤ 0.1 s" };
    // pdsh and clush to 100 nodes take seconds a round: fewer rounds there.
    let date_rounds = if n > 50 { rounds.min(3) } else { rounds };
    let l = measure(
        format!("krg run -n 1-{n} -- date"),
        goal,
        date_rounds,
        &run_date,
        &borrowed,
    );
    show(&l);
    lines.push(l);

    if n >= 100 {
        let many = || {
            krg(
                &c,
                &["run", "-n", "1-100", "--per-node", "10", "--", "true"],
            )
        };
        let floor = || local_floor(100, 10, "/bin/true");
        let l = measure(
            "1000 processes over 100 nodes (10 each)".into(),
            "≤ 1 s (XCPU: 12.3 s)",
            rounds,
            &many,
            &[("local pidns floor", &floor)],
        );
        show(&l);
        lines.push(l);
    }

    if n >= 64 {
        let _jobs = KillOnDrop(
            krg(&c, &["run", "-n", "1-64", "--", "sleep", "600"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()?,
        );
        wait_for(Duration::from_secs(30), "64 jobs in krg ps", || {
            let o = krg(&c, &["ps", "--json", "-n", "1-64"]).output().ok()?;
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
            (v["processes"].as_array()?.len() >= 64).then_some(())
        })?;
        let ps = || krg(&c, &["ps", "-n", "1-64"]);
        let l = measure("krg ps over 64 nodes".into(), "≤ 0.1 s", rounds, &ps, &[]);
        show(&l);
        lines.push(l);
    }

    if n == 10 {
        bench_push(&c, rounds, refs, lines)?;
    }
    Ok(())
}

fn bench_push(
    c: &TestCluster,
    rounds: usize,
    refs: Option<&sshref::Refs>,
    lines: &mut Vec<Line>,
) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("krg-push-")
        .tempdir_in("/dev/shm")?;
    let src = dir.path().join("input.dat");
    let mut data = vec![0u8; 100 << 20];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2654435761) >> 13) as u8;
    }
    std::fs::write(&src, &data)?;
    drop(data);
    let dests: Vec<std::path::PathBuf> = ["krg", "clush", "pdcp"]
        .iter()
        .map(|d| dir.path().join(d))
        .collect();
    for d in &dests {
        std::fs::create_dir(d)?;
    }
    let push = || {
        let mut cmd = krg(c, &["push", "-n", "1-10"]);
        cmd.arg(&src).arg(format!("{}/", dests[0].display()));
        cmd
    };
    let mut ref_cmds: Vec<RefCmd> = Vec::new();
    if let Some(r) = refs {
        if r.clush {
            let (s, d) = (src.clone(), dests[1].clone());
            ref_cmds.push(("clush --copy", Box::new(move || r.clush_copy(10, &s, &d))));
        }
        if r.pdcp {
            let (s, d) = (src.clone(), dests[2].clone());
            ref_cmds.push(("pdcp", Box::new(move || r.pdcp(10, &s, &d))));
        }
    }
    let borrowed: Vec<(&'static str, &dyn Fn() -> Command)> =
        ref_cmds.iter().map(|(n, f)| (*n, f.as_ref())).collect();
    let l = measure(
        "krg push 100 MiB to 10 nodes".into(),
        "≥ 1x clush --copy",
        rounds.min(5),
        &push,
        &borrowed,
    );
    show(&l);
    lines.push(l);
    let copied = std::fs::metadata(dests[0].join("input.dat"))
        .map(|m| m.len())
        .unwrap_or(0);
    if copied != 100 << 20 {
        bail!("krg push left {copied} bytes, not 100 MiB");
    }
    Ok(())
}

fn main() {
    if let Err(e) = run_all() {
        eprintln!("run bench: {e:#}");
        std::process::exit(1);
    }
}

fn run_all() -> Result<()> {
    let sizes: Vec<u32> = std::env::var("KRG_BENCH_RUN_SIZES")
        .unwrap_or_else(|_| "10,100".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .context("KRG_BENCH_RUN_SIZES: a list of numbers")
        })
        .collect::<Result<_>>()?;
    let rounds: usize = std::env::var("KRG_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    if !krg_tests::cargo_build(&["krgd", "krgadm"])
        .status()?
        .success()
    {
        bail!("cargo build -p krgd -p krgadm failed");
    }
    let _ = bin("krg");
    // KRG_BENCH_REFS=none: krg and the local floor only. The ssh tools'
    // hundreds of processes keep the load far above the core count for
    // minutes after each of their rounds, and the krg rounds run in it.
    let no_refs = std::env::var("KRG_BENCH_REFS").is_ok_and(|v| v == "none");
    let refs = if no_refs {
        println!("KRG_BENCH_REFS=none: krg and the local floor only");
        None
    } else {
        match sshref::Refs::start() {
            Ok(r) => Some(r),
            Err(e) => {
                println!("reference tools unavailable ({e:#}): krg figures only");
                None
            }
        }
    };
    println!(
        "machine: {} cores, load {} at start",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        load()
    );
    let mut lines = Vec::new();
    for n in sizes {
        if let Err(e) = bench_size(n, rounds, refs.as_ref(), &mut lines) {
            println!("N = {n}: {e:#}");
        }
    }
    println!(
        "\nsummary (medians of {rounds} interleaved rounds; load at the end {}):",
        load()
    );
    for l in &lines {
        show(l);
    }
    Ok(())
}
