//! `migrate` of a `krg run` job between real krgds of a loopback cluster:
//! the job keeps the PIDs it sees (a PID namespace of its own on the
//! target), its user's `krg run` keeps its stdin, stdout, signals and exit
//! status (the origin's session relays them), and `krg ps` shows it on the
//! target. Needs root.
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

/// Echoes its input with its PID, says "usr1" on SIGUSR1, ticks every
/// 50 ms, exits 7 on "quit".
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
    say("got: %s pid=%d" % (line, os.getpid()))
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
    assert!(
        o.status.success(),
        "migrate {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
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
    assert!(before.ends_with(&format!("pid={pid}")), "{before}");
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
    assert!(after.ends_with(&format!("pid={pid}")), "{after}");
    // a signal to krg run reaches it where it runs now
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGUSR1) };
    run.wait_line("usr1");
    // and its exit status comes back to its user
    // and back: node 2's session now relays, as node 1's did
    moved(&c, &[], pid, 2, 1);
    run.send("home");
    let home = run.wait_line("got: home");
    assert!(home.ends_with(&format!("pid={pid}")), "{home}");
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
    assert!(home.ends_with(&format!("pid={pid}")), "{home}");
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

/// Writes "line N pid=P" to stdout and "err N" to stderr every 50 ms
/// until `stop` (argv[1]) exists, then "done" and exits 5.
const WRITER: &str = r#"
import os, sys, time
n = 0
while not os.path.exists(sys.argv[1]):
    sys.stdout.write("line %d pid=%d\n" % (n, os.getpid()))
    sys.stdout.flush()
    sys.stderr.write("err %d\n" % n)
    sys.stderr.flush()
    n += 1
    time.sleep(0.05)
print("done", flush=True)
sys.exit(5)
"#;

/// `krg run --detach -n 1 -- python3 -c SCRIPT ARG` from a shell that
/// holds CAN_MIGRATE; the directory krg names for its output.
fn start_detached(c: &TestCluster, script: &str, arg: &str) -> String {
    let sh = format!(
        "{capset} -k $$ -d +CAN_MIGRATE && exec {krg} run --detach -n 1 -- python3 -u -c \"$0\" \"$1\"",
        capset = bin("krgcapset").display(),
        krg = bin("krg").display()
    );
    let o = Command::new("sh")
        .args(["-c", &sh, script, arg])
        .env("KRG_SOCKET", socket(c))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err.split("output in ")
        .nth(1)
        .and_then(|r| r.split("/ on node").next())
        .unwrap_or_else(|| panic!("no output directory in {err:?}"))
        .to_string()
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

/// Lines of `file` (empty if it is not there yet).
fn lines_of(file: &str) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A detached job moves too: its output goes on into the files on the
/// node that started it (relayed), without a line lost or doubled, and
/// its status lands there when it ends on the target.
#[test]
fn a_detached_job_moves_and_its_output_stays_in_its_files() -> Result<()> {
    let _g = serial();
    let c = formed(2)?;
    let stop = c.dir.path().join("stop-detached");
    let dir = start_detached(&c, WRITER, &stop.display().to_string());
    let (out, err) = (format!("{dir}/stdout"), format!("{dir}/stderr"));
    wait_for(LINE_WAIT, "its first lines", || {
        (lines_of(&out).len() >= 3).then_some(())
    })?;
    let pid = python_on(&c, 1).expect("the job on node 1 in krg ps");
    // Its directory is its user's: they may put a link to a file of
    // root's where its stdout was. What the relay writes must go on into
    // the job's own file, never through the name (as root, it would
    // write the victim).
    let victim = c.dir.path().join("victim");
    std::fs::write(&victim, "keep\n")?;
    std::fs::rename(&out, format!("{dir}/stdout.own"))?;
    std::os::unix::fs::symlink(&victim, &out)?;
    moved(&c, &[], pid, 1, 2);
    // on the target its stdout is a pipe to the relay, not the file by
    // its path (which this one machine would let it reopen)
    let host = host_pid_with_arg(&stop.display().to_string()).expect("the job's process");
    let fd1 = std::fs::read_link(format!("/proc/{host}/fd/1"))?;
    assert!(fd1.to_string_lossy().starts_with("pipe:"), "{fd1:?}");
    let own = format!("{dir}/stdout.own");
    let at_move = lines_of(&own).len();
    wait_for(LINE_WAIT, "lines written on node 2", || {
        (lines_of(&own).len() >= at_move + 10).then_some(())
    })?;
    std::fs::write(&stop, b"")?;
    let status = wait_for(LINE_WAIT, "its status", || {
        std::fs::read_to_string(format!("{dir}/status")).ok()
    })?;
    assert_eq!(status, "exit 5\n");
    assert_eq!(std::fs::read_to_string(&victim)?, "keep\n");
    let got = lines_of(&own);
    let (last, body) = got.split_last().unwrap();
    assert_eq!(last, "done", "{got:?}");
    for (n, l) in body.iter().enumerate() {
        assert_eq!(l, &format!("line {n} pid={pid}"), "{got:?}");
    }
    let errs = lines_of(&err);
    assert!(errs.len() >= body.len(), "{errs:?}");
    for (n, l) in errs.iter().enumerate() {
        assert_eq!(l, &format!("err {n}"), "{errs:?}");
    }
    assert_eq!(python_on(&c, 2), None, "krg ps: {:?}", ps(&c));
    Ok(())
}

/// Reads lines on its terminal; answers each with its PID and whether it
/// leads its session, holds the terminal's foreground and reads a
/// terminal (`tcgetpgrp` fails unless the terminal is its controlling
/// one); says "sigint" on SIGINT, "winch COLS ROWS" on SIGWINCH; exits 7
/// on "quit".
const ON_A_TERMINAL: &str = r#"
import os, signal, sys
def say(s):
    sys.stdout.write(s + "\n")
    sys.stdout.flush()
signal.signal(signal.SIGINT, lambda *a: say("sigint"))
signal.signal(signal.SIGWINCH, lambda *a: say("winch %d %d" % tuple(os.get_terminal_size(0))))
say("ready pid=%d" % os.getpid())
for line in sys.stdin:
    line = line.strip()
    if line == "quit":
        sys.exit(7)
    say("got: %s pid=%d leader=%s fg=%s" % (line, os.getpid(), os.getsid(0) == os.getpid(), os.tcgetpgrp(0) == os.getpgrp()))
"#;

/// A terminal for `krg run` (as a user's): its master, and the child
/// (`sh -c SH ARG`) that has its slave as controlling terminal and stdio.
struct Terminal {
    master: std::fs::File,
    child: Child,
    seen: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Terminal {
    fn start(c: &TestCluster, sh: &str, arg: &str) -> Terminal {
        use std::os::unix::process::CommandExt;
        let (master, slave) = krg_tests::migrating::pty_pair();
        resize(&master, 24, 80);
        let mut cmd = Command::new("sh");
        cmd.args(["-c", sh, arg])
            .env("KRG_SOCKET", socket(c))
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (mut from, to) = (master.try_clone().unwrap(), seen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut from, &mut buf) {
                if n == 0 {
                    return;
                }
                to.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Terminal {
            master,
            child,
            seen,
        }
    }

    /// `krg run -t -n 1` of [`ON_A_TERMINAL`] on this terminal, from a
    /// shell that holds CAN_MIGRATE.
    fn on_a_terminal(c: &TestCluster) -> Terminal {
        let sh = format!(
            "{capset} -k $$ -d +CAN_MIGRATE && exec {krg} run -t -n 1 -- python3 -u -c \"$0\"",
            capset = bin("krgcapset").display(),
            krg = bin("krg").display()
        );
        Terminal::start(c, &sh, ON_A_TERMINAL)
    }

    /// Wait until what the terminal showed holds `what`; all it showed.
    fn wait_for(&self, what: &str) -> String {
        wait_for(LINE_WAIT, what, || {
            let s = self.seen.lock().unwrap().replace('\r', "");
            s.contains(what).then_some(s)
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", self.seen.lock().unwrap()))
    }

    fn type_in(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn resize(master: &std::fs::File, rows: u16, cols: u16) {
    use std::os::fd::AsRawFd;
    let w = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &w) };
    assert_eq!(rc, 0);
}

/// A job on a terminal (`krg run -t`) moves: on the target it gets a new
/// terminal like its own, which is its controlling terminal with its
/// group in the foreground; what its user types is echoed once, Ctrl-C
/// is its SIGINT, a resize its SIGWINCH, and its exit status comes back.
/// Back home, node 2 steps out of its path: its krgd dies, and the job
/// still takes what its user types.
#[test]
fn a_job_on_a_terminal_moves_and_keeps_its_terminal() -> Result<()> {
    let _g = serial();
    let mut c = formed(2)?;
    let mut term = Terminal::on_a_terminal(&c);
    term.wait_for("ready pid=");
    let pid = python_on(&c, 1).expect("the job on node 1 in krg ps");
    term.type_in("before\n");
    term.wait_for(&format!("got: before pid={pid} leader=True fg=True"));

    moved(&c, &[], pid, 1, 2);
    term.type_in("after\n");
    let seen = term.wait_for(&format!("got: after pid={pid} leader=True fg=True"));
    // echoed once (by the job's terminal on node 2, not node 1's too)
    assert_eq!(seen.matches("after").count(), 2, "{seen:?}");
    term.type_in("\x03");
    term.wait_for("sigint");
    resize(&term.master, 50, 132);
    term.wait_for("winch 132 50");
    // and back, by post-copy: node 2's terminal is now the one left behind
    moved(&c, &["--postcopy"], pid, 2, 1);
    term.type_in("home\n");
    let seen = term.wait_for(&format!("got: home pid={pid} leader=True fg=True"));
    assert_eq!(seen.matches("home").count(), 2, "{seen:?}");
    resize(&term.master, 40, 100);
    term.wait_for("winch 100 40");
    // node 2 stepped out of its path (the splice): its krgd can die
    wait_for(LINE_WAIT, "node 2 out of the job's path", || {
        let log = c.nodes[&1].log_text();
        log.contains("it is out of the job's path").then_some(())
    })?;
    c.node(2)?.kill9();
    term.type_in("alone\n");
    term.wait_for(&format!("got: alone pid={pid} leader=True fg=True"));
    term.type_in("quit\n");
    let status = term.child.wait()?;
    assert_eq!(status.code(), Some(7), "{:?}", term.seen.lock().unwrap());
    Ok(())
}

/// The target's krgd dies while it takes a job on a terminal over: the
/// origin restores it at home, on a new terminal of its own, relayed like
/// a remote one; it still leads its session, holds the foreground, and
/// echoes once.
#[test]
fn a_job_on_a_terminal_whose_target_dies_runs_at_home_on_a_new_terminal() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::loopback(2)?;
    let crash = c.arm_crash_points();
    let c = c.formed(2, SETTLE)?;
    let mut term = Terminal::on_a_terminal(&c);
    term.wait_for("ready pid=");
    let pid = python_on(&c, 1).expect("the job on node 1 in krg ps");
    fails_at_the_handover(&c, &crash, pid);
    term.type_in("home\n");
    let seen = term.wait_for(&format!("got: home pid={pid} leader=True fg=True"));
    assert_eq!(seen.matches("home").count(), 2, "{seen:?}");
    term.type_in("\x03");
    term.wait_for("sigint");
    term.type_in("quit\n");
    assert_eq!(term.child.wait()?.code(), Some(7));
    Ok(())
}

/// A moved detached job outlives the node that started it: that node's
/// krgd killed, the job runs on where it is, and what it prints from then
/// on goes into files on that node, with its status.
#[test]
fn a_moved_detached_job_outlives_the_node_that_started_it() -> Result<()> {
    let _g = serial();
    let mut c = formed(2)?;
    let stop = c.dir.path().join("stop-outlives");
    let dir = start_detached(&c, WRITER, &stop.display().to_string());
    let out = format!("{dir}/stdout");
    wait_for(LINE_WAIT, "its first lines", || {
        (lines_of(&out).len() >= 3).then_some(())
    })?;
    let pid = python_on(&c, 1).expect("the job on node 1 in krg ps");
    moved(&c, &[], pid, 1, 2);
    wait_for(LINE_WAIT, "lines written on node 2", || {
        (lines_of(&out).len() >= 10).then_some(())
    })?;
    c.node(1)?.kill9();
    // its output goes on in a directory of node 2's
    let here = c.dir.path().join("data2/detached");
    let moved_out = wait_for(LINE_WAIT, "its output on node 2", || {
        std::fs::read_dir(&here).ok()?.flatten().find_map(|e| {
            let f = e.path().join("stdout");
            (lines_of(&f.display().to_string()).len() >= 5).then_some(e.path())
        })
    })?;
    std::fs::write(&stop, b"")?;
    let status = wait_for(LINE_WAIT, "its status on node 2", || {
        std::fs::read_to_string(moved_out.join("status")).ok()
    })?;
    assert_eq!(status, "exit 5\n");
    // each file holds consecutive lines; node 2's start after node 1's
    // (lines in flight when node 1 died may be lost) and end with "done"
    let number = |l: &str| -> u64 {
        l.strip_prefix("line ")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{l:?}"))
    };
    let first = lines_of(&out);
    for (n, l) in first.iter().enumerate() {
        assert_eq!(number(l), n as u64, "{first:?}");
    }
    let second = lines_of(&moved_out.join("stdout").display().to_string());
    let (last, body) = second.split_last().unwrap();
    assert_eq!(last, "done", "{second:?}");
    let start = number(&body[0]);
    assert!(start >= first.len() as u64, "{start} {}", first.len());
    for (k, l) in body.iter().enumerate() {
        assert_eq!(number(l), start + k as u64, "{second:?}");
        assert!(l.ends_with(&format!("pid={pid}")), "{l}");
    }
    Ok(())
}
