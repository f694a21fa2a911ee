//! Migration benchmark (issue 11): a process that keeps writing to its
//! memory (100 MiB and 1 GiB) moves between the krgds of a 2-node loopback
//! cluster with `migrate`, against CRIU (`criu dump` + `criu restore`, the
//! image in a local directory) on the same kind of process, in the same run.
//!
//! Two krg lines: `migrate` (pre-copy: the memory sent while the process
//! runs) and `migrate --postcopy` (the memory pulled by the target after
//! the process runs there; also measured: the time until its memory is
//! all in, when the origin drops its copy of the image).
//!
//! Measured per round: the total time (the tool's command from start to
//! exit) and the downtime **by the process's own clock**: it stamps
//! CLOCK_MONOTONIC (shared by every node of one machine) between writes of
//! its memory, and reports the longest gap it saw. Rounds are interleaved
//! (the order alternates), figures are medians, and the machine's load is
//! printed with them. Run as root: `cargo bench -p krg-tests --bench
//! migrate` (`KRG_BENCH_ROUNDS=5`, `KRG_BENCH_MIGRATE_MIB=100,1024`,
//! `KRG_BENCH_MIGRATE_MODES=pre,post,criu` to choose the lines,
//! `KRG_BENCH_MIGRATE_FLAGS=--no-stand-in` to add flags to `migrate`). CRIU
//! comes from `../shared/tools/install-criu.sh`; without it its column is
//! empty.
//!
//! Last, the balancing line: 4 CPU-bound CAN_MIGRATE processes started on
//! node 1 of a 4-node loopback cluster whose nodes all run
//! `krg_load_probe` and `balance_policy` (threshold 1.5, 3 moves per
//! 1000 ms): the time from their start until one runs on each node
//! (`krg ps`), median of `KRG_BENCH_BALANCE_ROUNDS` (3) clusters. No
//! reference tool does this; the issue's goal is 10 s.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is a failed run

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use krg_tests::{bin, serial, wait_for, TestCluster};

const SETTLE: Duration = Duration::from_secs(60);

/// Writes one byte in each page in turn, forever; between writes it stamps
/// the monotonic clock and writes the longest gap so far (ms) and a count
/// into its report file every 50 ms.
const WORKER: &str = r#"
import os, sys, time
mib = int(sys.argv[2])
buf = bytearray(mib << 20)
for i in range(0, len(buf), 4096):
    buf[i] = 1
rep = sys.argv[1]
gap = 0.0
prev = time.monotonic()
last = prev
i = 0
n = 0
while True:
    for _ in range(64):
        buf[i] = (buf[i] + 1) & 255
        i = (i + 4096) % len(buf)
    time.sleep(0.0005)
    t = time.monotonic()
    if t - prev > gap:
        gap = t - prev
    prev = t
    if t - last > 0.05:
        n += 1
        with open(rep + ".tmp", "w") as f:
            f.write("%d %.3f %d\n" % (n, gap * 1000, os.getpid()))
        os.rename(rep + ".tmp", rep)
        last = t
"#;

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// (count, longest gap ms, PID as it sees itself) the worker last reported.
fn report_of(rep: &Path) -> Option<(u64, f64, i32)> {
    let t = std::fs::read_to_string(rep).ok()?;
    let mut w = t.split_whitespace();
    Some((
        w.next()?.parse().ok()?,
        w.next()?.parse().ok()?,
        w.next()?.parse().ok()?,
    ))
}

/// Workers started so far: each has a report file of its own.
static WORKERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

struct Worker {
    pid: i32,
    rep: PathBuf,
}

impl Worker {
    fn start(dir: &Path, mib: u64, tag: &str) -> Result<Self> {
        // A report file of its own: a worker killed through its stand-in
        // ends a moment later, on its target (until Dec 7, up to a tenth of
        // a second), and its reports in a shared file were once taken for
        // the next round's, which was then moved while it still filled its
        // memory — its "downtime" was a few ms.
        let n = WORKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rep = dir.join(format!("{tag}-{n}.rep"));
        let _ = std::fs::remove_file(&rep);
        // Debian's python, by path: a version manager's `python3` shim
        // (pyenv's is a bash script) leaves the zombies of its own
        // subshells to the interpreter it execs, and `migrate` refuses a
        // process with children.
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args(["-c", WORKER])
            .arg(&rep)
            .arg(mib.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec: close_range and setsid only.
        unsafe {
            cmd.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0);
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let pid = child.id() as i32;
        std::thread::spawn(move || child.wait());
        let w = Self { pid, rep };
        wait_for(Duration::from_secs(120), "the worker to start", || {
            w.report().filter(|r| r.0 >= 3).map(|_| ())
        })?;
        Ok(w)
    }

    /// (count, longest gap ms) it last reported.
    fn report(&self) -> Option<(u64, f64)> {
        report_of(&self.rep)
            .filter(|r| r.2 == self.pid)
            .map(|r| (r.0, r.1))
    }

    /// The longest gap (ms) it has seen, once the restored copy has
    /// reported a few times. Call it when the tool has returned: the count
    /// is read then, since the report file may still hold the last report
    /// of the copy that was frozen (after a pre-copy of more than 250 ms,
    /// a count taken before the move was already 5 reports old, and that
    /// stale report, with its small gap, was read as the downtime).
    fn gap_after_move(&self) -> Result<f64> {
        let since = self.report().context("no report")?.0;
        let r = wait_for(Duration::from_secs(60), "the worker to go on", || {
            self.report().filter(|r| r.0 >= since + 5)
        })?;
        Ok(r.1)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the worker this bench started.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        // A moved worker ends a moment later, on its target: the next
        // round starts once its reports (one every 50 ms) have stopped.
        let quiet = Duration::from_millis(300);
        let _ = wait_for(Duration::from_secs(10), "the worker to end", || {
            let age = std::fs::metadata(&self.rep)
                .and_then(|m| m.modified())
                .ok()?;
            (age.elapsed().ok()? > quiet).then_some(())
        });
        let _ = std::fs::remove_file(&self.rep);
    }
}

fn run(mut cmd: Command) -> Result<Duration> {
    let t = Instant::now();
    let out = cmd.stdin(Stdio::null()).output()?;
    let d = t.elapsed();
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(d)
}

/// Phases of one migration (name, ms), from `migrate --json`.
type Phases = Vec<(String, f64)>;

/// One krg round's figures.
struct KrgRound {
    /// `migrate` from start to exit, s (the process runs on the target).
    total: f64,
    /// Post-copy: until its memory is all on the target (the origin drops
    /// its copy of the image), s.
    all_in: Option<f64>,
    /// The longest gap the process saw, ms.
    gap: f64,
    /// krgd's `stopped_ms`.
    stopped: f64,
    phases: Phases,
}

/// One krg round (`migrate`, or `migrate --postcopy`).
fn krg_round(c: &TestCluster, dir: &Path, mib: u64, postcopy: bool) -> Result<KrgRound> {
    let w = Worker::start(dir, mib, "krg")?;
    let sock = c.dir.path().join("krgd1.sock");
    let o = Command::new(bin("krgcapset"))
        .env("KRG_SOCKET", &sock)
        .args(["-k", &w.pid.to_string(), "-d", "+CAN_MIGRATE"])
        .output()?;
    if !o.status.success() {
        bail!("krgcapset: {}", String::from_utf8_lossy(&o.stderr));
    }
    let mut args = vec!["--json".to_string(), w.pid.to_string(), "2".to_string()];
    // e.g. `--no-stand-in`, to compare a move that leaves nothing behind
    if let Ok(extra) = std::env::var("KRG_BENCH_MIGRATE_FLAGS") {
        args.splice(0..0, extra.split_whitespace().map(str::to_string));
    }
    if postcopy {
        args.insert(0, "--postcopy".into());
    }
    let t = Instant::now();
    let out = Command::new(bin("migrate"))
        .env("KRG_SOCKET", &sock)
        .args(&args)
        .output()?;
    let total = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("migrate: {}", String::from_utf8_lossy(&out.stderr));
    }
    let all_in = if postcopy {
        // the origin drops its image once the target has every byte
        let kept = c.dir.path().join("data1/migrate/out");
        loop {
            if std::fs::read_dir(&kept).map_or(0, |d| d.count()) == 0 {
                break Some(t.elapsed().as_secs_f64());
            }
            if t.elapsed() > Duration::from_secs(120) {
                bail!("the origin kept the image for 2 minutes");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    } else {
        None
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let gap = w.gap_after_move()?;
    let phases = v["phases"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p["name"].as_str()?.to_string(), p["ms"].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok(KrgRound {
        total,
        all_in,
        gap,
        stopped: v["stopped_ms"].as_f64().unwrap_or(0.0),
        phases,
    })
}

/// One CRIU round: dump (the process ends) then restore, detached.
fn criu_round(criu: &Path, dir: &Path, mib: u64) -> Result<(f64, f64)> {
    let w = Worker::start(dir, mib, "criu")?;
    let img = dir.join("criu-img");
    let _ = std::fs::remove_dir_all(&img);
    std::fs::create_dir_all(&img)?;
    let t = Instant::now();
    let mut dump = Command::new(criu);
    dump.args(["dump", "-t", &w.pid.to_string(), "-D"])
        .arg(&img);
    run(dump)?;
    // its parent (a thread of this bench) reaps it; the PID must be free
    wait_for(Duration::from_secs(10), "the dumped PID to be free", || {
        (!Path::new(&format!("/proc/{}", w.pid)).exists()).then_some(())
    })?;
    let mut restore = Command::new(criu);
    restore.args(["restore", "-d", "-D"]).arg(&img);
    run(restore)?;
    let total = t.elapsed().as_secs_f64();
    let gap = w.gap_after_move()?;
    let _ = std::fs::remove_dir_all(&img);
    Ok((total, gap))
}

fn show(v: Option<f64>, unit: &str) -> String {
    v.map_or("-".to_string(), |x| format!("{x:.3} {unit}"))
}

fn ratio(krg: Option<f64>, criu: Option<f64>) -> String {
    krg.zip(criu)
        .map_or("-".into(), |(k, c)| format!("{:.2}", c / k))
}

/// A krg line's medians against CRIU's total `ct` and downtime `cg`.
fn print_krg(name: &str, rounds: &[KrgRound], ct: Option<f64>, cg: Option<f64>) {
    let total = median(rounds.iter().map(|r| r.total).collect());
    let all_in = median(rounds.iter().filter_map(|r| r.all_in).collect());
    let gap = median(rounds.iter().map(|r| r.gap).collect());
    let stopped = median(rounds.iter().map(|r| r.stopped).collect());
    println!("  {name}:");
    println!(
        "    total time      {:>12}   criu/krg {}",
        show(total, "s"),
        ratio(total, ct)
    );
    if all_in.is_some() {
        println!(
            "    memory all in   {:>12}   criu/krg {}   (after the process runs on the target)",
            show(all_in, "s"),
            ratio(all_in, ct)
        );
    }
    println!(
        "    downtime (own)  {:>12}   criu/krg {}   (krgd's stopped_ms {})",
        show(gap, "ms"),
        ratio(gap, cg),
        show(stopped, "ms")
    );
    let phases: Vec<Phases> = rounds.iter().map(|r| r.phases.clone()).collect();
    print_phases(&phases);
}

/// The median of each phase over the krg rounds, in the order of the first.
fn print_phases(rounds: &[Phases]) {
    let Some(first) = rounds.first() else { return };
    let mut line = String::from("    phases (median ms):");
    for (name, _) in first {
        let v: Vec<f64> = rounds
            .iter()
            .filter_map(|r| r.iter().find(|p| &p.0 == name).map(|p| p.1))
            .collect();
        if let Some(m) = median(v) {
            line.push_str(&format!(" {name}={m:.1}"));
        }
    }
    println!("{line}");
}

fn criu_binary() -> Option<PathBuf> {
    ["/usr/local/sbin/criu", "/usr/sbin/criu"]
        .iter()
        .map(PathBuf::from)
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Version: 4"))
        })
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the migration bench needs root (restart chooses PIDs)");
    }
    let _g = serial();
    let rounds: usize = std::env::var("KRG_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let sizes: Vec<u64> = std::env::var("KRG_BENCH_MIGRATE_MIB")
        .unwrap_or_else(|_| "100,1024".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let criu = criu_binary();
    // which lines: pre (migrate), post (migrate --postcopy), criu
    let modes = std::env::var("KRG_BENCH_MIGRATE_MODES").unwrap_or_else(|_| "pre,post,criu".into());
    let mut c = TestCluster::loopback(2)?;
    c.start(1)?;
    c.start(2)?;
    c.wait_present(1, &[1, 2], SETTLE)?;
    c.krgadm_ok(1, &["cluster", "start"])?;
    c.wait_agreement(&[1, 2], SETTLE)?;
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let dir = c.dir.path().to_path_buf();
    println!("migration bench: {rounds} rounds, load before {}", load());
    for &mib in &sizes {
        let (mut pre, mut post) = (Vec::new(), Vec::new());
        let (mut ct, mut cg) = (vec![], vec![]);
        for r in 0..rounds {
            let mut krg = || -> Result<()> {
                if modes.contains("pre") {
                    pre.push(krg_round(&c, &dir, mib, false)?);
                }
                if modes.contains("post") {
                    post.push(krg_round(&c, &dir, mib, true)?);
                }
                Ok(())
            };
            let crit = |ct: &mut Vec<f64>, cg: &mut Vec<f64>| -> Result<()> {
                if let Some(criu) = criu.as_ref().filter(|_| modes.contains("criu")) {
                    let (t, g) = criu_round(criu, &dir, mib)?;
                    ct.push(t);
                    cg.push(g);
                }
                Ok(())
            };
            if r % 2 == 0 {
                krg()?;
                crit(&mut ct, &mut cg)?;
            } else {
                crit(&mut ct, &mut cg)?;
                krg()?;
            }
        }
        let (ct, cg) = (median(ct), median(cg));
        println!("{mib} MiB process, load {}:", load());
        if !pre.is_empty() {
            print_krg("krg migrate", &pre, ct, cg);
        }
        if !post.is_empty() {
            print_krg("krg migrate --postcopy", &post, ct, cg);
        }
        println!(
            "  criu dump+restore: total {}, downtime (own clock) {}",
            show(ct, "s"),
            show(cg, "ms")
        );
    }
    drop(c);
    balance_line()
}

/// "balancing, 4 hogs on 1 node → 1 per node": a fresh 4-node cluster per
/// round (the processes must start from node 1 each time).
fn balance_line() -> Result<()> {
    use krg_tests::balance::{formed, setup_node, Hogs, Settings};
    let rounds: usize = std::env::var("KRG_BENCH_BALANCE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let settings = Settings {
        threshold: 1.5,
        max_moves: 3,
        interval_ms: 1000,
        min_residency_ms: 10_000,
    };
    let mut times = Vec::new();
    for _ in 0..rounds {
        let c = formed(4)?;
        for id in 1..=4 {
            setup_node(&c, id, settings)?;
        }
        let hogs = Hogs::start(&c, 1, 4)?;
        let t = hogs.wait_one_per_node(&c, 4, Duration::from_secs(60))?;
        times.push(t.as_secs_f64());
    }
    let shown: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
    println!(
        "balancing, 4 hogs on 1 node -> 1 per node (4 nodes, load {}): median {:.2} s (rounds: {} s; goal 10 s)",
        load(),
        median(times).unwrap_or(f64::NAN),
        shown.join(", ")
    );
    Ok(())
}
