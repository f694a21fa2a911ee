//! Application checkpoint benchmark (issue 11): what copying a part into
//! the application's directory costs, and what it saves `restart --node`.
//!
//! A 2-node loopback cluster; through node 1, `sh -c "python3 HOLD | cat"`
//! whose python holds `KRG_BENCH_APP_MIB` (256) MiB of random bytes and
//! is moved to node 2. Per round:
//!
//! - `checkpoint --kill` of the shell: its time in all, and the copy of
//!   the part (node 2's SN read through krgd into `parts/2/<PID>/`, as
//!   checkpoint prints it), against `cp -a` of the part's directory in
//!   the same round (the same bytes on the same disk, no network: the
//!   floor);
//! - `restart --node 1` of that SN until `krg ps` shows the part on node
//!   1 (and no more on node 2): from its copy, against the same with the
//!   copy renamed away (restored on node 2, then moved to node 1).
//!
//! Medians of `KRG_BENCH_ROUNDS` (3) rounds; the machine's load is
//! printed. Run as root: `cargo bench -p krg-tests --bench app_checkpoint`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is a failed run

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use krg_tests::migrating::{capset, migrate, moved_host_pid, ps, socket, Job};
use krg_tests::{bin, serial, wait_for, without_stray_fds, TestCluster};

const SETTLE: Duration = Duration::from_secs(60);

/// Holds `argv[1]` MiB of random bytes, touched, and sleeps.
const HOLD: &str = "import os, sys, time\nb = bytearray(os.urandom(1 << 20)) * int(sys.argv[1])\ntime.sleep(3600)\n";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn tool(c: &TestCluster, name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .env("KRG_SOCKET", socket(c, 1))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output, what: &str) -> Result<()> {
    if !o.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn gone(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty()
        || stat
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'))
}

/// The shell, python (moved to node 2) and python's PID there.
struct App {
    sh: i32,
    py: i32,
    moved: i32,
}

fn start(c: &TestCluster, mib: u64) -> Result<App> {
    let script = "/usr/bin/python3 -c \"$0\" \"$1\" | cat > /dev/null";
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script, HOLD, &mib.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut shell = without_stray_fds(&mut cmd).spawn()?;
    let sh = shell.id() as i32;
    std::thread::spawn(move || shell.wait());
    let py = wait_for(Duration::from_secs(10), "python", || {
        children(sh).into_iter().find(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.starts_with("python"))
        })
    })?;
    // its memory filled before it moves
    wait_for(Duration::from_secs(60), "python's memory", || {
        let status = std::fs::read_to_string(format!("/proc/{py}/status")).ok()?;
        let rss: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (rss >= mib * 1024).then_some(())
    })?;
    for p in children(sh).into_iter().chain([sh]) {
        let o = tool(
            c,
            "krgcapset",
            &["-k", &p.to_string(), "-d", "+CHECKPOINTABLE"],
        );
        ok(&o, "krgcapset")?;
    }
    capset(c, 1, py);
    ok(&migrate(c, 1, &[&py.to_string(), "2"]), "migrate")?;
    Ok(App {
        sh,
        py,
        moved: moved_host_pid(py),
    })
}

/// The seconds checkpoint printed for the part's copy.
fn copy_secs(said: &str) -> Option<f64> {
    let line = said.lines().find(|l| l.contains(" copied into "))?;
    let (_, tail) = line.rsplit_once(" in ")?;
    tail.strip_suffix(" s)")?.parse().ok()
}

/// `restart --node 1` of SN 1: seconds until the part runs on node 1.
fn restart_here(c: &TestCluster, chk: &Path, app: &App) -> Result<f64> {
    wait_for(Duration::from_secs(10), "the PIDs to be free", || {
        [app.sh, app.py].iter().all(|p| gone(*p)).then_some(())
    })?;
    let dir = chk.display().to_string();
    let t0 = Instant::now();
    let o = tool(
        c,
        "restart",
        &["--dir", &dir, "--node", "1", &app.sh.to_string(), "1"],
    );
    ok(&o, "restart")?;
    let py = app.py as i64;
    wait_for(Duration::from_secs(60), "the part on node 1", || {
        let rows = ps(c, 1);
        (rows.contains(&(1, py)) && !rows.contains(&(2, py))).then_some(())
    })?;
    let secs = t0.elapsed().as_secs_f64();
    let here = moved_host_pid(app.py);
    // SAFETY: kill(2) of the processes this bench restarted.
    unsafe {
        libc::kill(app.py, libc::SIGKILL);
        libc::kill(app.sh, libc::SIGKILL);
    }
    drop(Job(here));
    Ok(secs)
}

#[derive(Default)]
struct Round {
    checkpoint: Vec<f64>,
    copy: Vec<f64>,
    cp: Vec<f64>,
    from_copy: Vec<f64>,
    moved: Vec<f64>,
}

fn round(c: &TestCluster, mib: u64, n: usize, r: &mut Round) -> Result<()> {
    let app = start(c, mib)?;
    let _jobs = [Job(app.sh), Job(app.py), Job(app.moved)];
    let saved_there = PathBuf::from("/var/chkpt").join(app.moved.to_string());
    let chk = c.dir.path().join(format!("chkpt{n}"));
    let dir = chk.display().to_string();
    let t0 = Instant::now();
    let o = tool(
        c,
        "checkpoint",
        &["--dir", &dir, "--kill", &app.sh.to_string()],
    );
    ok(&o, "checkpoint")?;
    r.checkpoint.push(t0.elapsed().as_secs_f64());
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    if std::env::var_os("KRG_BENCH_VERBOSE").is_some() {
        eprint!("{said}");
    }
    r.copy.push(copy_secs(&said).unwrap_or(f64::NAN));
    let floor = c.dir.path().join(format!("cp{n}"));
    let t0 = Instant::now();
    let o = Command::new("cp")
        .arg("-a")
        .arg(&saved_there)
        .arg(&floor)
        .output()?;
    ok(&o, "cp -a")?;
    r.cp.push(t0.elapsed().as_secs_f64());
    std::fs::remove_dir_all(&floor)?;
    r.from_copy.push(restart_here(c, &chk, &app)?);
    let parts = chk.join(app.sh.to_string()).join("parts");
    std::fs::rename(&parts, chk.join("parts.away"))?;
    r.moved.push(restart_here(c, &chk, &app)?);
    let _ = std::fs::remove_dir_all(&saved_there);
    let _ = std::fs::remove_dir_all(&chk);
    Ok(())
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the application checkpoint bench needs root (checkpoint, restart, stand-ins)");
    }
    let rounds: usize = std::env::var("KRG_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mib: u64 = std::env::var("KRG_BENCH_APP_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let _g = serial();
    let c = TestCluster::loopback(2)?.formed(2, SETTLE)?;
    println!(
        "application checkpoint, a part of {mib} MiB on node 2, {rounds} rounds, load {}",
        load()
    );
    let mut r = Round::default();
    for n in 0..rounds {
        round(&c, mib, n, &mut r)?;
    }
    let (copy, cp) = (median(r.copy), median(r.cp));
    let (from_copy, moved) = (median(r.from_copy), median(r.moved));
    println!("| line | krg | reference | reference/krg |");
    println!("|---|---:|---:|---:|");
    println!(
        "| checkpoint --kill, in all | {:.3} s | | |",
        median(r.checkpoint)
    );
    println!(
        "| the part's copy into the application's directory / cp -a of it | {copy:.3} s | {cp:.3} s | {:.2} |",
        cp / copy
    );
    println!(
        "| restart --node 1 until the part runs there: from its copy / restored on node 2 and moved | {from_copy:.3} s | {moved:.3} s | {:.2} |",
        moved / from_copy
    );
    println!("load after: {}", load());
    Ok(())
}
