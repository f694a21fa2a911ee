//! `migrate` of a `krg run` job between real krgds of a loopback cluster:
//! the job keeps the PIDs it sees (a PID namespace of its own on the
//! target), its user's `krg run` keeps its stdin, stdout, signals and exit
//! status (the origin's session relays them), and `krg ps` shows it on the
//! target. Needs root.
//!
//! `detached`: `krg run --detach` jobs; `terminal`: `krg run -t` jobs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Result;
use krg_tests::balance::{self, setup_node, Settings};
use krg_tests::{bin, serial, wait_for, TestCluster};

const SETTLE: Duration = Duration::from_secs(20);
const LINE_WAIT: Duration = Duration::from_secs(15);

fn formed(n: u32) -> Result<TestCluster> {
    TestCluster::loopback(n)?.formed(n, SETTLE)
}

/// The python workloads' ticker: a thread printing "tick N" every 50 ms
/// (the tests wait for one to see that the job runs), and `say`, which
/// every line goes through: one write per line, newline included.
/// (`print` writes the text and the newline separately: the ticker's line
/// could land between them, and a test read "sum …tick 6".)
macro_rules! ticker {
    () => {
        r#"
def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
def tick():
    n = 0
    while True:
        n += 1
        say("tick %d" % n)
        time.sleep(0.05)
threading.Thread(target=tick, daemon=True).start()
"#
    };
}

/// Echoes its input with its PID and whether its `/proc` is its own (its
/// `/proc/self` names the PID it knows itself by), says "usr1" on
/// SIGUSR1, ticks every 50 ms, exits 7 on "quit".
const ECHO: &str = concat!(
    r#"
import os, signal, sys, threading, time
signal.signal(signal.SIGUSR1, lambda *a: say("usr1"))
"#,
    ticker!(),
    r#"
for line in sys.stdin:
    line = line.strip()
    if line == "quit":
        sys.exit(7)
    own = os.readlink("/proc/self") == str(os.getpid())
    say("got: %s pid=%d own-proc=%s" % (line, os.getpid(), own))
"#
);

/// `krg run -n 1 -- python3 -c SCRIPT` started (through node `via`) by a
/// shell that holds CAN_MIGRATE (krgcapset) when `migratable`, so its job does.
struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Run {
    fn start(c: &TestCluster, via: u32, python: &str, migratable: bool) -> Run {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let go = c.dir.path().join(format!("go-{n}"));
        let krg = bin("krg");
        let sh = format!(
            "while [ ! -e {go} ]; do sleep 0.02; done; exec {krg} run -n 1 -- python3 -u -c \"$0\"",
            go = go.display(),
            krg = krg.display()
        );
        let socket = c.dir.path().join(format!("krgd{via}.sock"));
        let mut child = Command::new("sh")
            .args(["-c", &sh, python])
            .env("KRG_SOCKET", &socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        if migratable {
            let o = Command::new(bin("krgcapset"))
                .env("KRG_SOCKET", &socket)
                .args(["-k", &child.id().to_string(), "-d", "+CAN_MIGRATE"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        std::fs::write(&go, b"").unwrap();
        let lines = reader(child.stdout.take().unwrap());
        Run { child, lines }
    }

    /// The next line that starts with `prefix` (others skipped).
    fn wait_line(&self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + LINE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(e) => panic!("no line starting with {prefix:?}: {e}"),
            }
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reader(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

/// (node, pid, command) rows of krg ps.
fn ps(c: &TestCluster) -> Vec<(u64, i64, String)> {
    let o = c.krg(1).unwrap().args(["ps", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["node"].as_u64().unwrap(),
                r["pid"].as_i64().unwrap(),
                r["command"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn python_on(c: &TestCluster, node: u64) -> Option<i64> {
    ps(c)
        .into_iter()
        .find(|(n, _, cmd)| *n == node && cmd.contains("python3"))
        .map(|(_, p, _)| p)
}

fn migrate(c: &TestCluster, args: &[&str]) -> std::process::Output {
    Command::new(bin("migrate"))
        .env("KRG_SOCKET", socket(c))
        .args(args)
        .output()
        .unwrap()
}

/// `migrate 1:PID 2` with node 2's krgd set to die (a crash point) as it
/// takes the job over: it fails, and node 1 runs the job again.
fn fails_at_the_handover(c: &TestCluster, crash: &std::path::Path, pid: i64) {
    std::fs::write(crash, "krgd-adopt-job").unwrap();
    let o = migrate(c, &[&format!("1:{pid}"), "2"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    assert!(e.contains("run on node 1 again"), "{e}");
    assert!(!crash.exists(), "the crash point did not fire");
}

/// `migrate ARGS… NODE:PID TO` of the job's program from node `from`,
/// which must succeed and leave it on node `to` in krg ps.
fn moved(c: &TestCluster, opts: &[&str], pid: i64, from: u64, to: u64) {
    let (what, target) = (format!("{from}:{pid}"), to.to_string());
    let args: Vec<&str> = opts
        .iter()
        .copied()
        .chain([what.as_str(), target.as_str()])
        .collect();
    let o = migrate(c, &args);
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "migrate {args:?}: {said}");
    // it names the job's program as its user does (until Dec 7 evening:
    // by a PID of krgd's namespace)
    assert!(
        said.starts_with(&format!(
            "migrate: [{pid}] moved from node {from} to node {to}"
        )),
        "{said}"
    );
    assert_eq!(python_on(c, to), Some(pid), "krg ps: {:?}", ps(c));
}

fn socket(c: &TestCluster) -> std::ffi::OsString {
    c.dir.path().join("krgd1.sock").into_os_string()
}

#[test]
fn a_krg_run_job_moves_and_its_user_sees_no_difference() -> Result<()> {
    let _g = serial();
    let c = formed(2)?;
    let mut run = Run::start(&c, 1, ECHO, true);
    run.wait_line("tick");
    let pid = python_on(&c, 1).expect("the job on node 1 in krg ps");
    run.send("before");
    let before = run.wait_line("got: before");
    assert!(
        before.ends_with(&format!("pid={pid} own-proc=True")),
        "{before}"
    );
    let host = host_pid_with_arg(ECHO).expect("the job's python");
    let o = Command::new(bin("krgcapset"))
        .env("KRG_SOCKET", socket(&c))
        .args(["-k", &host.to_string(), "-d", "+CHECKPOINTABLE"])
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    moved(&c, &[], pid, 1, 2);
    // it holds there what it held here (its PID in krgd's namespace changed)
    let host = host_pid_with_arg(ECHO).expect("the job's python on node 2");
    assert_eq!(
        caps_of(&c, 2, host),
        format!("{host}: CHECKPOINTABLE,CAN_MIGRATE")
    );
    assert_eq!(python_on(&c, 1), None, "krg ps: {:?}", ps(&c));

    // output goes on, input reaches it, it keeps its PID
    run.wait_line("tick");
    run.send("after");
    let after = run.wait_line("got: after");
    assert!(
        after.ends_with(&format!("pid={pid} own-proc=True")),
        "{after}"
    );
    // a signal to krg run reaches it where it runs now
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGUSR1) };
    run.wait_line("usr1");
    // and its exit status comes back to its user
    // and back: node 2's session now relays, as node 1's did
    moved(&c, &[], pid, 2, 1);
    run.send("home");
    let home = run.wait_line("got: home");
    assert!(
        home.ends_with(&format!("pid={pid} own-proc=True")),
        "{home}"
    );
    run.send("quit");
    let status = run.child.wait()?;
    assert_eq!(status.code(), Some(7), "{status:?}");
    Ok(())
}

/// Holds 64 MiB of a pattern it can check; says "sum N" on "check", exits
/// 7 on "quit", ticks every 50 ms.
const MEMORY: &str = concat!(
    r#"
import hashlib, sys, threading, time
block = hashlib.sha256(b"krg").digest() * 32
data = bytearray(block * (64 * 1024 * 1024 // len(block)))
"#,
    ticker!(),
    r#"
say("sum %s" % hashlib.sha256(data).hexdigest())
for line in sys.stdin:
    line = line.strip()
    if line == "quit":
        sys.exit(7)
    if line == "check":
        say("sum %s" % hashlib.sha256(data).hexdigest())
"#
);

/// `migrate --postcopy` of a job: it runs on the target in its own PID
/// namespace before its memory is there (the page server is a process of
/// that namespace, pulling from the origin), all of its memory arrives,
/// its user's `krg run` sees nothing but the move, the origin drops its
/// image, and once the memory is in the job moves on again.
#[test]
fn a_job_moved_by_postcopy_keeps_its_memory() -> Result<()> {
    let _g = serial();
    let c = formed(2)?;
    let mut run = Run::start(&c, 1, MEMORY, true);
    let sum = run.wait_line("sum ");
    let pid = python_on(&c, 1).expect("the job on node 1 in krg ps");

    moved(&c, &["--postcopy"], pid, 1, 2);
    run.wait_line("tick");
    run.send("check");
    assert_eq!(run.wait_line("sum "), sum, "its memory after the move");
    c.wait_no_migration_image(1)?;

    // home again (pre-copy): the page server is not a stray of the job
    moved(&c, &[], pid, 2, 1);
    run.send("check");
    assert_eq!(run.wait_line("sum "), sum, "its memory after moving back");
    run.send("quit");
    assert_eq!(run.child.wait()?.code(), Some(7));
    Ok(())
}

/// The target's krgd dies (SIGKILL, at a crash point) after the origin
/// killed its copy, while it takes the job over: the origin restores the
/// job itself, in a namespace of its own, and its user sees nothing but
/// the pause.
#[test]
fn a_target_that_dies_during_the_handover_leaves_the_job_home() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::loopback(2)?;
    let crash = c.arm_crash_points();
    let c = c.formed(2, SETTLE)?;
    let mut run = Run::start(&c, 1, ECHO, true);
    run.wait_line("tick");
    let pid = python_on(&c, 1).expect("the job on node 1 in krg ps");
    fails_at_the_handover(&c, &crash, pid);
    assert_eq!(python_on(&c, 1), Some(pid), "krg ps: {:?}", ps(&c));
    run.send("home");
    let home = run.wait_line("got: home");
    assert!(
        home.ends_with(&format!("pid={pid} own-proc=True")),
        "{home}"
    );
    run.send("quit");
    assert_eq!(run.child.wait()?.code(), Some(7));
    Ok(())
}

#[test]
fn a_job_without_can_migrate_is_refused_and_runs_on() -> Result<()> {
    let _g = serial();
    let c = formed(2)?;
    let mut run = Run::start(&c, 1, ECHO, false);
    run.wait_line("tick");
    let pid = python_on(&c, 1).expect("the job on node 1 in krg ps");
    let o = migrate(&c, &[&format!("1:{pid}"), "2"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("not CAN_MIGRATE"), "{e}");
    run.send("still");
    run.wait_line("got: still");
    assert_eq!(python_on(&c, 1), Some(pid));
    Ok(())
}

/// Busy until `stop` exists (its path is argv[1]), saying "alive" every
/// 0.3 s; then exits 3.
const HOG: &str = r#"
import os, sys, time
stop = sys.argv[1]
last = 0
while not os.path.exists(stop):
    for _ in range(20000):
        pass
    now = time.monotonic()
    if now - last > 0.3:
        print("alive %d" % os.getpid(), flush=True)
        last = now
sys.exit(3)
"#;

/// The issue's demo: 4 busy CAN_MIGRATE `krg run` jobs started on node 1
/// of 4 end up one per node through `balance_policy`, their output still
/// reaching the `krg run` that started each, their exit codes too.
#[test]
fn four_busy_jobs_on_node_1_spread_and_their_users_see_it_all() -> Result<()> {
    let _g = serial();
    let c = balance::formed(4)?;
    for id in 1..=4 {
        setup_node(
            &c,
            id,
            Settings {
                threshold: 1.5,
                max_moves: 3,
                interval_ms: 1000,
                min_residency_ms: 20_000,
            },
        )?;
    }
    let stop = c.dir.path().join("stop");
    let hog = HOG.replace("sys.argv[1]", &format!("{:?}", stop.display().to_string()));
    let mut runs: Vec<Run> = (0..4).map(|_| Run::start(&c, 1, &hog, true)).collect();
    for r in &runs {
        r.wait_line("alive");
    }
    let t0 = std::time::Instant::now();
    let spread = wait_for(Duration::from_secs(30), "one job per node", || {
        let nodes: std::collections::BTreeSet<u64> = ps(&c)
            .into_iter()
            .filter(|(_, _, cmd)| cmd.contains("python3"))
            .map(|(n, _, _)| n)
            .collect();
        (nodes.len() == 4).then_some(())
    });
    let all: String = (1..=4)
        .map(|id| format!("node {id}:\n{}", balance::decisions(&c, id)))
        .collect();
    spread.map_err(|e| anyhow::anyhow!("{e}: {:?}\n{all}", ps(&c)))?;
    eprintln!(
        "4 busy krg run jobs on node 1 -> 1 per node: {:?}",
        t0.elapsed()
    );
    // every job's output still reaches its krg run
    for r in &runs {
        r.wait_line("alive");
    }
    std::fs::write(&stop, b"")?;
    for r in &mut runs {
        let status = r.child.wait()?;
        assert_eq!(status.code(), Some(3), "{status:?}");
    }
    Ok(())
}

/// PID (in this namespace) of the python3 process whose last argument
/// is `arg` (the `krg run` that started it has the same last argument).
fn host_pid_with_arg(arg: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let mut args = cmd.split(|&b| b == 0).filter(|a| !a.is_empty());
        let python = args.next()?.ends_with(b"python3");
        (python && args.next_back()? == arg.as_bytes()).then_some(pid)
    })
}

/// What `krgcapset --show` says node `node`'s krgd holds for host PID `pid`.
fn caps_of(c: &TestCluster, node: u32, pid: i32) -> String {
    let o = Command::new(bin("krgcapset"))
        .env("KRG_SOCKET", c.dir.path().join(format!("krgd{node}.sock")))
        .args(["--show", "-k", &pid.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

mod detached;
mod terminal;
