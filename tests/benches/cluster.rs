//! Cluster benchmark (issue 2, point 9): for N krgd processes on loopback,
//! time formation, the hot-add of one node, failure detection after kill -9,
//! and resident memory at rest — and the same for N serf agents when `serf`
//! is on PATH, printing krg/serf ratios.
//!
//! Run: `cargo bench -p krg-tests --bench cluster`
//! (`KRG_BENCH_SIZES=3,16` restricts the sizes; the default is 3,16,64).
//!
//! Every time is measured from the moment the action starts until the LAST
//! node observed the result, by polling every node with a few threads in
//! parallel; the figures therefore include up to one polling round (tens of
//! milliseconds, more at N=64) and the load the polling itself puts on the
//! two cores — the same polling is applied to krg and to serf.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use krg_tests::{bin, free_port, rss_kib, wait_for, TestCluster};
use serde_json::Value;

/// Parallel pollers; more would mostly measure the pollers fighting krgd for CPU.
const POLL_THREADS: usize = 4;
/// Pause between two polling rounds of one thread.
const POLL_PAUSE: Duration = Duration::from_millis(20);
/// Upper bound for any single measured phase.
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Quiet time after formation before memory is read.
const REST: Duration = Duration::from_secs(3);

fn main() {
    let sizes = match bench_sizes() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cluster bench: {e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = build_binaries() {
        eprintln!("cluster bench: {e:#}");
        std::process::exit(1);
    }
    let serf = serf_available();
    if !serf {
        println!("serf not on PATH: krg figures only");
    }
    let mut rows = Vec::new();
    for n in sizes {
        println!("== N = {n}");
        // A failed phase keeps the figures measured before it.
        let mut ours = Figures::default();
        for attempt in 1..=3 {
            ours = Figures::default();
            match run_krg(n, &mut ours) {
                Ok(()) => break,
                // The harness draws each node's port separately from the
                // kernel; now and then two ids get the same one. A fresh
                // cluster draws again.
                Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {
                    println!("krg N={n}: port clash, starting over: {e:#}");
                }
                Err(e) => {
                    println!("krg N={n}: {e:#}");
                    break;
                }
            }
        }
        ours.print("krg");
        let theirs = if serf {
            let mut f = Figures::default();
            if let Err(e) = run_serf(n, &mut f) {
                println!("serf N={n}: {e:#}");
            }
            f.print("serf");
            Some(f)
        } else {
            None
        };
        rows.push((n, ours, theirs));
    }
    print_table(&rows);
}

/// Sizes from KRG_BENCH_SIZES ("3,16") or the default 3, 16 and 64.
fn bench_sizes() -> Result<Vec<u32>> {
    let Ok(list) = std::env::var("KRG_BENCH_SIZES") else {
        return Ok(vec![3, 16, 64]);
    };
    list.split(',')
        .map(|s| {
            let n: u32 = s
                .trim()
                .parse()
                .with_context(|| format!("KRG_BENCH_SIZES: {s:?} is not a number"))?;
            if n < 2 {
                bail!("KRG_BENCH_SIZES: a cluster needs at least 2 nodes, got {n}");
            }
            Ok(n)
        })
        .collect()
}

/// Build krgd and krgadm in this profile unconditionally: a stale binary
/// from an older checkout would silently be measured otherwise.
fn build_binaries() -> Result<()> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "krgd", "-p", "krgadm"]);
    if krg_tests::bin_dir().ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p krgd -p krgadm failed ({status})");
    }
    Ok(())
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

/// What one run measures; None where the phase failed or timed out.
#[derive(Default)]
struct Figures {
    formation: Option<Duration>,
    /// krg: `nodes add` returned; serf: `serf join` returned.
    join_returned: Option<Duration>,
    /// Until every node (old and new) sees the new one as a member.
    join_all: Option<Duration>,
    failure: Option<Duration>,
    rss_median_kib: Option<u64>,
    rss_max_kib: Option<u64>,
    /// Nodes wrongly reported failed during the run, as "observer→node".
    false_positives: Vec<String>,
}

impl Figures {
    fn print(&self, who: &str) {
        println!(
            "{who}: formation {}, join returned {}, join seen by all {}, failure detected by all {}, \
             RSS median {} max {}{}",
            secs(self.formation),
            secs(self.join_returned),
            secs(self.join_all),
            secs(self.failure),
            mib(self.rss_median_kib),
            mib(self.rss_max_kib),
            if self.false_positives.is_empty() {
                String::new()
            } else {
                format!(", FALSE POSITIVES: {:?}", self.false_positives)
            }
        );
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.3} s", d.as_secs_f64()))
        .unwrap_or_else(|| "—".into())
}

fn mib(k: Option<u64>) -> String {
    k.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "—".into())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    }
}

fn print_table(rows: &[(u32, Figures, Option<Figures>)]) {
    println!();
    println!("| N  | measure                         | krg        | serf       | krg/serf |");
    println!("|----|---------------------------------|------------|------------|----------|");
    let empty = Figures::default();
    for (n, ours, theirs) in rows {
        let theirs = theirs.as_ref().unwrap_or(&empty);
        let times: [(&str, Option<Duration>, Option<Duration>); 4] = [
            (
                "formation (all see N online)",
                ours.formation,
                theirs.formation,
            ),
            (
                "join (command returns)",
                ours.join_returned,
                theirs.join_returned,
            ),
            ("join (all see N+1)", ours.join_all, theirs.join_all),
            ("failure detected by all", ours.failure, theirs.failure),
        ];
        for (what, a, b) in times {
            let mut r = ratio(a.map(|d| d.as_secs_f64()), b.map(|d| d.as_secs_f64()));
            if what.contains("returns") && r != "—" {
                r.push('*');
            }
            println!(
                "| {n:<2} | {what:<31} | {:>10} | {:>10} | {r:>8} |",
                secs(a),
                secs(b),
            );
        }
        for (what, a, b) in [
            (
                "RSS per node, median",
                ours.rss_median_kib,
                theirs.rss_median_kib,
            ),
            ("RSS per node, max", ours.rss_max_kib, theirs.rss_max_kib),
        ] {
            println!(
                "| {n:<2} | {what:<31} | {:>10} | {:>10} | {:>8} |",
                mib(a),
                mib(b),
                ratio(a.map(|k| k as f64), b.map(|k| k as f64))
            );
        }
        for (who, f) in [("krg", ours), ("serf", theirs)] {
            if !f.false_positives.is_empty() {
                println!(
                    "| {n:<2} | false positives ({who}): {:?}",
                    f.false_positives
                );
            }
        }
    }
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

// ---------------------------------------------------------------- krg

/// krgadm against one socket, parsed as JSON.
fn krgadm_json(socket: &Path, args: &[&str]) -> Option<Value> {
    let out = Command::new(bin("krgadm"))
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// node id → state, from `krgadm --json nodes status`.
fn krg_states(socket: &Path) -> Option<BTreeMap<u64, String>> {
    let rows = krgadm_json(socket, &["nodes", "status"])?;
    Some(
        rows.as_array()?
            .iter()
            .filter_map(|r| Some((r["id"].as_u64()?, r["state"].as_str()?.to_string())))
            .collect(),
    )
}

/// Does this node report exactly `n` members, all online?
fn krg_formed(socket: &Path, n: u64) -> bool {
    krgadm_json(socket, &["cluster", "status"])
        .map(|s| {
            s["members"].as_array().map(Vec::len) == Some(n as usize)
                && s["online"].as_u64() == Some(n)
        })
        .unwrap_or(false)
}

/// Start nodes 1..=n; node n+1 is left stopped for the join phase. With more
/// than 8 ids the harness gives every node only the first three as `--peer`:
/// the seeds learn of the others from their `Describe` calls and relay them.
fn start_all(c: &mut TestCluster, n: u32) -> Result<()> {
    let key = c.key.clone();
    (1..=n).try_for_each(|id| start_retry(c, id, &key, &[]))
}

/// Start a node, retrying while its reserved port is busy: the harness
/// reserves every port up front, and with dozens of daemons connecting to
/// each other an outgoing connection's ephemeral port sometimes lands on a
/// reserved one for a moment.
fn start_retry(c: &mut TestCluster, id: u32, key: &Path, extra: &[&str]) -> Result<()> {
    let mut tries = 0;
    loop {
        match c.start_with(id, key, extra) {
            Ok(()) => return Ok(()),
            Err(e) if tries < 8 && format!("{e:#}").contains("Address already in use") => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(e),
        }
    }
}

fn run_krg(n: u32, f: &mut Figures) -> Result<()> {
    let extra = n + 1;
    let mut c = TestCluster::loopback(extra)?;
    let ids: Vec<u32> = (1..=n).collect();
    let started = Instant::now();
    start_all(&mut c, n)?;
    c.wait_present(1, &ids, PHASE_TIMEOUT)?;
    println!(
        "krg: {n} daemons started and visible from node 1 in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let sockets = |c: &TestCluster, ids: &[u32]| -> Vec<PathBuf> {
        ids.iter().map(|id| c.nodes[id].socket.clone()).collect()
    };
    let fp = Mutex::new(Vec::new());

    // 1. Formation.
    let socks = sockets(&c, &ids);
    let t0 = Instant::now();
    c.krgadm_ok(1, &["cluster", "start"])?;
    f.formation = Some(until_all(&labels(&ids), t0, "krg formation", |i| {
        krg_formed(&socks[i], n as u64)
    })?);

    // 4. Memory at rest after formation.
    std::thread::sleep(REST);
    let mut by_node: Vec<(u64, u32)> = c
        .nodes
        .values()
        .filter_map(|node| Some((node.pid().and_then(rss_kib)?, node.id)))
        .collect();
    by_node.sort_unstable();
    if std::env::var_os("KRG_BENCH_VERBOSE").is_some() {
        let leader = c.leader(1);
        let top: Vec<String> = by_node
            .iter()
            .rev()
            .take(3)
            .map(|(k, id)| format!("node {id} {:.1} MiB", *k as f64 / 1024.0))
            .collect();
        println!("  krg RSS largest: {} (leader {leader:?})", top.join(", "));
    }
    (f.rss_median_kib, f.rss_max_kib) = median_max(by_node.iter().map(|(k, _)| *k).collect());

    // 2. Join of one more node, started beforehand and present.
    let key = c.key.clone();
    start_retry(&mut c, extra, &key, &[])?;
    c.wait_present(1, &[extra], PHASE_TIMEOUT)?;
    let all: Vec<u32> = (1..=extra).collect();
    let socks = sockets(&c, &all);
    let t0 = Instant::now();
    c.krgadm_ok(1, &["nodes", "add", "-n", &extra.to_string()])?;
    f.join_returned = Some(t0.elapsed());
    f.join_all = Some(until_all(&labels(&all), t0, "krg join", |i| {
        krg_formed(&socks[i], extra as u64)
    })?);

    // 3. Failure detection: kill -9 a non-leader member.
    let leader = c.leader(1).ok_or_else(|| anyhow!("no leader after join"))?;
    let victim = (2..=n)
        .rev()
        .find(|id| *id != leader)
        .ok_or_else(|| anyhow!("no non-leader victim"))?;
    let survivors: Vec<u32> = all.iter().copied().filter(|id| *id != victim).collect();
    let socks = sockets(&c, &survivors);
    let t0 = Instant::now();
    c.node(victim)?.kill9();
    let detected = until_all(&labels(&survivors), t0, "krg failure detection", |i| {
        let Some(states) = krg_states(&socks[i]) else {
            return false;
        };
        for (id, state) in &states {
            if *id != victim as u64 && state == "failed" {
                let mut fp = fp.lock().unwrap_or_else(|p| p.into_inner());
                let entry = format!("{}→{id}", survivors[i]);
                if !fp.contains(&entry) {
                    fp.push(entry);
                }
            }
        }
        states.get(&(victim as u64)).map(String::as_str) == Some("failed")
    });
    f.false_positives = fp.into_inner().unwrap_or_else(|p| p.into_inner());
    f.failure = Some(detected?);
    Ok(())
}

// ---------------------------------------------------------------- serf

/// One serf agent, killed (SIGKILL, by PID) and reaped when dropped.
struct SerfAgent {
    name: String,
    bind: String,
    rpc: String,
    child: Option<Child>,
}

impl SerfAgent {
    fn start(dir: &Path, i: u32) -> Result<Self> {
        let name = format!("n{i}");
        let bind = format!("127.0.0.1:{}", free_port());
        let rpc = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join(format!("serf{i}.log")))?;
        let child = Command::new("serf")
            .arg("agent")
            .arg(format!("-node={name}"))
            .arg(format!("-bind={bind}"))
            .arg(format!("-rpc-addr={rpc}"))
            .arg("-log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting serf agent")?;
        let mut agent = Self {
            name,
            bind,
            rpc,
            child: Some(child),
        };
        let rpc = agent.rpc.clone();
        wait_for(Duration::from_secs(10), &format!("serf {i} RPC"), || {
            serf_members(&rpc).map(|_| ())
        })?;
        if !agent.is_running() {
            bail!("serf agent {i} exited at start");
        }
        Ok(agent)
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SerfAgent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// name → status ("alive", "failed", "left") as one agent sees the members.
fn serf_members(rpc: &str) -> Option<BTreeMap<String, String>> {
    let out = Command::new("serf")
        .args(["members", &format!("-rpc-addr={rpc}"), "-format=json"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v["members"]
            .as_array()?
            .iter()
            .filter_map(|m| Some((m["name"].as_str()?.into(), m["status"].as_str()?.into())))
            .collect(),
    )
}

fn serf_alive_count(rpc: &str) -> Option<usize> {
    Some(
        serf_members(rpc)?
            .values()
            .filter(|s| s.as_str() == "alive")
            .count(),
    )
}

fn serf_join(rpc: &str, addrs: &[&str]) -> Result<()> {
    let out = Command::new("serf")
        .args(["join", &format!("-rpc-addr={rpc}")])
        .args(addrs)
        .output()?;
    if !out.status.success() {
        bail!(
            "serf join failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run_serf(n: u32, f: &mut Figures) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("krg-bench-serf-")
        .tempdir()?;
    let mut agents: Vec<SerfAgent> = Vec::new();
    let started = Instant::now();
    for i in 1..=n {
        agents.push(SerfAgent::start(dir.path(), i)?);
    }
    println!(
        "serf: {n} agents started in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // 1. Formation: agent 1 joins every other agent in one command (the
    //    counterpart of `krgadm cluster start` on node 1 with all present).
    let others: Vec<&str> = agents[1..].iter().map(|a| a.bind.as_str()).collect();
    let t0 = Instant::now();
    serf_join(&agents[0].rpc, &others)?;
    let rpcs: Vec<String> = agents.iter().map(|a| a.rpc.clone()).collect();
    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
    f.formation = Some(until_all(&names, t0, "serf formation", |i| {
        serf_alive_count(&rpcs[i]) == Some(n as usize)
    })?);

    std::thread::sleep(REST);
    let rss: Vec<u64> = agents
        .iter()
        .filter_map(|a| a.pid().and_then(rss_kib))
        .collect();
    (f.rss_median_kib, f.rss_max_kib) = median_max(rss);

    // 2. Join of one more agent, already running.
    agents.push(SerfAgent::start(dir.path(), n + 1)?);
    let rpcs: Vec<String> = agents.iter().map(|a| a.rpc.clone()).collect();
    let t0 = Instant::now();
    serf_join(&agents[n as usize].rpc, &[agents[0].bind.as_str()])?;
    f.join_returned = Some(t0.elapsed());
    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
    f.join_all = Some(until_all(&names, t0, "serf join", |i| {
        serf_alive_count(&rpcs[i]) == Some(n as usize + 1)
    })?);

    // 3. Failure detection: kill -9 agent n (same position as krg's victim).
    let victim = (n - 1) as usize;
    let victim_name = agents[victim].name.clone();
    let survivors: Vec<String> = agents
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, a)| a.rpc.clone())
        .collect();
    let names: Vec<String> = agents
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, a)| a.name.clone())
        .collect();
    let fp = Mutex::new(Vec::new());
    let t0 = Instant::now();
    agents[victim].kill9();
    let detected = until_all(&names, t0, "serf failure detection", |i| {
        let Some(members) = serf_members(&survivors[i]) else {
            return false;
        };
        for (name, status) in &members {
            if *name != victim_name && status == "failed" {
                let mut fp = fp.lock().unwrap_or_else(|p| p.into_inner());
                let entry = format!("{}→{name}", names[i]);
                if !fp.contains(&entry) {
                    fp.push(entry);
                }
            }
        }
        members.get(&victim_name).map(String::as_str) == Some("failed")
    });
    f.false_positives = fp.into_inner().unwrap_or_else(|p| p.into_inner());
    f.failure = Some(detected?);
    Ok(())
}
