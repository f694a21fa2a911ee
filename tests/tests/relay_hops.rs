//! A `krg run` job that moves twice is not left hanging on the node in
//! the middle: that node takes itself out of the job's path (the splice
//! of `krg_proto::proc`), so the middle node's krgd can die and the job
//! runs on, its output, its signals and its exit status still reaching
//! the user who started it. Three loopback krgds; needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::Result;
use krg_tests::migrating::{capset, err, lines_of, migrate, ps};
use krg_tests::{bin, serial, wait_for, TestCluster};

/// Says "tick N" every 50 ms; exits 7 on SIGUSR1. Reads no input.
const TICKER: &str = r#"
import signal, sys, time
def usr1(*a):
    sys.stdout.write("usr1\n")
    sys.stdout.flush()
    sys.exit(7)
signal.signal(signal.SIGUSR1, usr1)
n = 0
while True:
    n += 1
    sys.stdout.write("tick %d\n" % n)
    sys.stdout.flush()
    time.sleep(0.05)
"#;

/// Echoes every line of its input ("got: LINE"); exits 3 at its end.
const ECHO: &str = r#"
import sys
for line in sys.stdin:
    sys.stdout.write("got: " + line)
    sys.stdout.flush()
sys.exit(3)
"#;

/// `krg run -n 1 -- python3 -c SCRIPT` through node 1, from a shell
/// holding CAN_MIGRATE, its stdin `stdin`; its stdout lines on a channel.
fn start(c: &TestCluster, script: &str, stdin: Stdio) -> (Child, Receiver<String>) {
    let mut child = start_run(c, "-n 1", script, stdin, Stdio::inherit());
    let lines = lines_of(child.stdout.take().unwrap());
    (child, lines)
}

/// `krg run RUN -- python3 -c SCRIPT` through node 1, from a shell
/// holding CAN_MIGRATE; its stdout piped.
fn start_run(c: &TestCluster, run: &str, script: &str, stdin: Stdio, stderr: Stdio) -> Child {
    let go = c.dir.path().join(format!("go-{}", script.len()));
    let sh = format!(
        "while [ ! -e {go} ]; do sleep 0.02; done; exec {krg} run {run} -- python3 -u -c \"$0\"",
        go = go.display(),
        krg = bin("krg").display()
    );
    let child = Command::new("sh")
        .args(["-c", &sh, script])
        .env("KRG_SOCKET", c.dir.path().join("krgd1.sock"))
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    capset(c, 1, child.id() as i32);
    std::fs::write(&go, b"").unwrap();
    child
}

/// Lines "0" to "LINES - 1" into `input`, one every 2 ms, from a thread
/// that gives `input` back (open: the test says when its end comes).
fn numbered_lines(
    mut input: std::process::ChildStdin,
    lines: u32,
) -> std::thread::JoinHandle<std::process::ChildStdin> {
    std::thread::spawn(move || {
        use std::io::Write;
        for n in 0..lines {
            writeln!(input, "{n}").unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        input
    })
}

/// The number of the next tick line within 10 s.
fn next_tick(lines: &Receiver<String>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = lines.recv_timeout(left).expect("the job's ticks go on");
        if let Some(n) = l.strip_prefix("tick ") {
            return n.parse().unwrap();
        }
    }
}

/// Ticks keep coming, in order, for `span`.
fn ticks_on(lines: &Receiver<String>, span: Duration) {
    let t = Instant::now();
    let mut last = next_tick(lines);
    while t.elapsed() < span {
        let n = next_tick(lines);
        assert!(n > last, "tick {n} after tick {last}");
        last = n;
    }
}

/// `migrate FROM:PID TO` through node 1; the job is then on `to`.
fn moves(c: &TestCluster, pid: i64, from: u32, to: u32) {
    let o = migrate(c, 1, &[&format!("{from}:{pid}"), &to.to_string()]);
    assert!(o.status.success(), "migrate {from}→{to}: {}", err(&o));
    let on = ps(c, 1);
    assert!(
        on.contains(&(to as u64, pid)),
        "{pid} on {to}? krg ps: {on:?}\n{}",
        c.log_tails(40)
    );
}

/// Node `node`'s krgd says a moved job's session was joined there, and
/// that the node it left passed on its last input: that node is out of
/// the job's path (input it still held would be lost with it).
fn joined_on(c: &TestCluster, node: u32) -> Result<()> {
    let joined = wait_for(Duration::from_secs(20), "the job's session joined", || {
        let log = c.nodes[&node].log_text();
        let joined = log.contains("a moved job's session joined here");
        (joined && log.contains("it is out of the job's path")).then_some(())
    });
    joined.map_err(|e| anyhow::anyhow!("{e}\n{}", c.log_tails(40)))
}

/// A formed cluster of three loopback krgds.
fn three_nodes() -> Result<TestCluster> {
    TestCluster::loopback(3)?.formed(3, Duration::from_secs(20))
}

/// The job of node 1 moves 1 → 2 → 3, node 3 says node 2 is out of its
/// path, and node 2's krgd is killed; the job's PID.
fn through_node_2(c: &mut TestCluster) -> Result<i64> {
    let pid = wait_for(Duration::from_secs(10), "the job in krg ps", || {
        ps(c, 1).into_iter().find(|(n, _)| *n == 1).map(|(_, p)| p)
    })?;
    moves(c, pid, 1, 2);
    moves(c, pid, 2, 3);
    joined_on(c, 3)?;
    c.node(2)?.kill9();
    Ok(pid)
}

#[test]
fn a_job_moved_twice_outlives_the_node_it_passed_through() -> Result<()> {
    let _g = serial();
    let mut c = three_nodes()?;
    let (mut child, lines) = start(&c, TICKER, Stdio::null());
    next_tick(&lines);
    // node 2 is out of the path once the job is on node 3: its krgd
    // dies, the job runs on
    let pid = through_node_2(&mut c)?;
    ticks_on(&lines, Duration::from_secs(3));

    // home again, node 3 out of the path in turn
    moves(&c, pid, 3, 1);
    joined_on(&c, 1)?;
    c.node(3)?.kill9();
    ticks_on(&lines, Duration::from_secs(3));

    // a signal to krg run reaches it, and its exit status comes back
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    let status = child.wait()?;
    assert_eq!(status.code(), Some(7), "{status:?}");
    Ok(())
}

/// A job reading its input moves 1 → 2 → 3 while lines stream into it:
/// node 2 steps out of the path all the same, and every line reaches the
/// job once, in order (the old path's last bytes before the joined
/// stream's), then its end of input, after node 2's krgd died.
#[test]
fn a_job_reading_its_input_is_spliced_without_losing_a_line() -> Result<()> {
    let _g = serial();
    let mut c = three_nodes()?;
    let (mut child, lines) = start(&c, ECHO, Stdio::piped());
    const LINES: u32 = 2500;
    let writer = numbered_lines(child.stdin.take().unwrap(), LINES);
    let got = |l: &Receiver<String>| {
        let l = l.recv_timeout(Duration::from_secs(10)).expect("an echo");
        l.strip_prefix("got: ")
            .unwrap_or_else(|| panic!("{l}"))
            .parse::<u32>()
            .unwrap()
    };
    assert_eq!(got(&lines), 0);
    through_node_2(&mut c)?;
    let input = writer.join().unwrap();
    let mut next = 1;
    while next < LINES {
        assert_eq!(got(&lines), next, "lines lost or out of order");
        next += 1;
    }
    drop(input);
    let status = child.wait()?;
    assert_eq!(status.code(), Some(3), "{status:?}");
    Ok(())
}

/// Says "ready", waits 2 s, then reads numbered 16-byte records, slowly, checking each;
/// says how many at the end of its input and exits 3.
const RECORDS: &str = r#"
import sys, time
print("ready", flush=True)
time.sleep(2)
n = 0
for line in sys.stdin:
    if int(line) != n:
        print("bad %s at %d" % (line.strip(), n), flush=True)
        sys.exit(1)
    n += 1
    if n % 4096 == 0:
        time.sleep(0.005)
print("total %d" % n, flush=True)
sys.exit(3)
"#;

/// 12 MiB of input, three times the stdin window, most of it sent after
/// the job moved 1 → 2 → 3: the window's acknowledgements, rebased by
/// node 3 for node 1, keep it flowing after node 2 left the path.
#[test]
fn the_stdin_window_flows_on_after_a_splice() -> Result<()> {
    let _g = serial();
    let mut c = three_nodes()?;
    let (mut child, lines) = start(&c, RECORDS, Stdio::piped());
    let mut input = child.stdin.take().unwrap();
    const RECORDS_SENT: u64 = 12 << 20 >> 4;
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut chunk = String::new();
        for n in 0..RECORDS_SENT {
            chunk.push_str(&format!("{n:015}\n"));
            if chunk.len() >= 64 << 10 {
                input.write_all(chunk.as_bytes()).unwrap();
                chunk.clear();
            }
        }
        input.write_all(chunk.as_bytes()).unwrap();
        // the end of its input
    });
    let ready = lines.recv_timeout(Duration::from_secs(10));
    assert_eq!(ready.as_deref(), Ok("ready"));
    if let Err(e) = through_node_2(&mut c) {
        // what the job said (a record lost or out of order) and how it ended
        let out: Vec<String> = lines.try_iter().collect();
        panic!("{e}\njob said {out:?}, ended {:?}", child.try_wait());
    }
    if writer.join().is_err() {
        let out: Vec<String> = lines.try_iter().collect();
        panic!("{:?} {out:?}\n{}", child.wait(), c.log_tails(30));
    }
    let last = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("the job's count");
    assert_eq!(last, format!("total {RECORDS_SENT}"), "{}", c.log_tails(30));
    let status = child.wait()?;
    assert_eq!(status.code(), Some(3), "{status:?}");
    Ok(())
}

/// Writes "line N" every 20 ms into its stdout until file ARG exists,
/// then exits 5.
const WRITER: &str = r#"
import os, sys, time
n = 0
while not os.path.exists(sys.argv[1]):
    n += 1
    print("line %d" % n, flush=True)
    time.sleep(0.02)
sys.exit(5)
"#;

/// A detached job moved 1 → 2 → 3 is spliced too: its output goes on
/// into its files on node 1 after node 2's krgd died, and its status
/// lands there when it ends.
#[test]
fn a_detached_job_moved_twice_keeps_writing_its_files_on_node_1() -> Result<()> {
    let _g = serial();
    let mut c = three_nodes()?;
    let stop = c.dir.path().join("stop-writer");
    let sh = format!(
        "{capset} -k $$ -d +CAN_MIGRATE && exec {krg} run --detach -n 1 -- python3 -u -c \"$0\" \"$1\"",
        capset = bin("krgcapset").display(),
        krg = bin("krg").display()
    );
    let o = Command::new("sh")
        .args(["-c", &sh, WRITER, &stop.display().to_string()])
        .env("KRG_SOCKET", c.dir.path().join("krgd1.sock"))
        .output()?;
    let said = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{said}");
    let dir = said
        .split("output in ")
        .nth(1)
        .and_then(|r| r.split("/ on node").next())
        .unwrap_or_else(|| panic!("no output directory in {said:?}"))
        .to_string();
    let out = format!("{dir}/stdout");
    let count = || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count()
    };
    wait_for(Duration::from_secs(10), "its first lines", || {
        (count() >= 3).then_some(())
    })?;
    through_node_2(&mut c)?;
    let before = count();
    wait_for(Duration::from_secs(10), "more lines on node 1", || {
        (count() >= before + 20).then_some(())
    })?;
    std::fs::write(&stop, b"")?;
    let status = format!("{dir}/status");
    let said = wait_for(Duration::from_secs(10), "its status", || {
        std::fs::read_to_string(&status).ok()
    })?;
    assert_eq!(said, "exit 5\n");
    let text = std::fs::read_to_string(&out)?;
    let numbers: Vec<u32> = text
        .lines()
        .map(|l| l.strip_prefix("line ").unwrap().parse().unwrap())
        .collect();
    let expected: Vec<u32> = (1..=numbers.len() as u32).collect();
    assert_eq!(numbers, expected, "lines lost or doubled");
    Ok(())
}

// ---- several copies in one stream (`krg run --per-node 2`)

/// Says "pid P", then "tick N" every 50 ms; exits 7 on SIGUSR1.
const COPY_TICKER: &str = r#"
import os, signal, sys, time
def usr1(*a):
    sys.stdout.write("usr1\n")
    sys.stdout.flush()
    sys.exit(7)
signal.signal(signal.SIGUSR1, usr1)
print("pid %d" % os.getpid(), flush=True)
n = 0
while True:
    n += 1
    sys.stdout.write("tick %d\n" % n)
    sys.stdout.flush()
    time.sleep(0.05)
"#;

/// Says "pid P", then echoes every line of its input; exits 3 at its end.
const COPY_ECHO: &str = r#"
import os, sys
print("pid %d" % os.getpid(), flush=True)
for line in sys.stdin:
    sys.stdout.write("got: " + line)
    sys.stdout.flush()
sys.exit(3)
"#;

/// Two copies of a script on node 2 of three nodes, in one stream from
/// node 1.
struct Copies {
    c: TestCluster,
    child: Child,
    /// The lines of both (`node2.0: …`, `node2.1: …`).
    lines: Receiver<String>,
    /// `krg run`'s stderr.
    errs: Receiver<String>,
    /// The label and PID of each, in label order.
    pids: Vec<(String, i64)>,
}

impl Copies {
    /// SIGUSR1 to `krg run`; how it ended, and what it said on stderr.
    fn usr1(&mut self) -> Result<(std::process::ExitStatus, Vec<String>)> {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) };
        let status = self.child.wait()?;
        Ok((status, self.errs.iter().collect()))
    }
}

fn start_copies(script: &str, stdin: Stdio) -> Result<Copies> {
    let c = three_nodes()?;
    let mut child = start_run(&c, "-n 2 --per-node 2", script, stdin, Stdio::piped());
    let lines = lines_of(child.stdout.take().unwrap());
    let errs = lines_of(child.stderr.take().unwrap());
    let pids = copy_pids(&lines);
    Ok(Copies {
        c,
        child,
        lines,
        errs,
        pids,
    })
}

/// The label and PID of each copy ("pid P" lines), in label order.
fn copy_pids(lines: &Receiver<String>) -> Vec<(String, i64)> {
    let mut pids = std::collections::BTreeMap::new();
    while pids.len() < 2 {
        let l = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a pid line");
        if let Some((label, pid)) = l.split_once(": pid ") {
            pids.insert(label.to_string(), pid.parse().unwrap());
        }
    }
    pids.into_iter().collect()
}

/// What `label` says next (other copies' lines skipped), within 10 s.
fn next_of(lines: &Receiver<String>, label: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let prefix = format!("{label}: ");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{label} goes on"));
        if let Some(said) = l.strip_prefix(&prefix) {
            return said.to_string();
        }
    }
}

/// Copy `pid` moves 2 → 3; node 3 says node 2 is out of its path, and
/// node 2's krgd is killed (the other copy goes with it).
fn one_copy_on(c: &mut TestCluster, pid: i64) -> Result<()> {
    moves(c, pid, 2, 3);
    joined_on(c, 3)?;
    c.node(2)?.kill9();
    Ok(())
}

/// Of two copies in one stream, the one that moved on is joined where it
/// runs on its own stream: the node the copies started on can die, its
/// copy lost, and the moved one runs on, its ticks, a signal and its
/// exit status still reaching the user.
#[test]
fn a_copy_moved_on_outlives_the_node_it_shared_a_stream_on() -> Result<()> {
    let _g = serial();
    let mut k = start_copies(COPY_TICKER, Stdio::null())?;
    let (moved, pid) = k.pids[1].clone();
    let stayed = k.pids[0].0.clone();
    one_copy_on(&mut k.c, pid)?;
    let tick = |l: &Receiver<String>| -> u64 {
        loop {
            if let Some(n) = next_of(l, &moved).strip_prefix("tick ") {
                return n.parse().unwrap();
            }
        }
    };
    let (t, mut last) = (Instant::now(), tick(&k.lines));
    while t.elapsed() < Duration::from_secs(3) {
        let n = tick(&k.lines);
        assert!(n > last, "tick {n} after tick {last}");
        last = n;
    }
    let (status, said) = k.usr1()?;
    assert_eq!(next_of(&k.lines, &moved), "usr1");
    let exit7 = format!("krg: {moved}: exit 7");
    assert!(said.contains(&exit7), "{said:?}");
    let lost = said.iter().filter(|l| l.starts_with("krg: node 2:"));
    assert_eq!(lost.count(), 1, "{stayed} lost, once: {said:?}");
    // the worst end is the lost copy's
    assert_eq!(status.code(), Some(255), "{status:?}");
    Ok(())
}

/// Lines stream into two copies of one stream while one of them moves on
/// 2 → 3: the moved copy gets every line once, in order (the old path's
/// last lines before its own stream's), then its end of input, after the
/// node it left died.
#[test]
fn a_copy_moved_on_gets_its_input_without_losing_a_line() -> Result<()> {
    let _g = serial();
    // (the pids are read before any input: nothing else is skipped)
    let Copies {
        mut c,
        mut child,
        lines,
        pids,
        ..
    } = start_copies(COPY_ECHO, Stdio::piped())?;
    let (moved, pid) = pids[0].clone();
    const LINES: u32 = 1500;
    let writer = numbered_lines(child.stdin.take().unwrap(), LINES);
    let got = |l: &Receiver<String>| -> u32 {
        let said = next_of(l, &moved);
        let n = said
            .strip_prefix("got: ")
            .unwrap_or_else(|| panic!("{said}"));
        n.parse().unwrap()
    };
    assert_eq!(got(&lines), 0);
    one_copy_on(&mut c, pid)?;
    let input = writer.join().unwrap();
    for next in 1..LINES {
        assert_eq!(got(&lines), next, "lines lost or out of order");
    }
    drop(input);
    let status = child.wait()?;
    // 3 from the moved copy, 255 for the one lost with node 2
    assert_eq!(status.code(), Some(255), "{status:?}");
    Ok(())
}

/// Both copies of a stream move on, one right after the other: each is
/// joined on a stream of its own (one join at a time), the stream they
/// shared carries nothing any more, and the node they left can die.
#[test]
fn both_copies_moved_on_leave_their_stream_empty() -> Result<()> {
    let _g = serial();
    let mut k = start_copies(COPY_TICKER, Stdio::null())?;
    moves(&k.c, k.pids[0].1, 2, 3);
    moves(&k.c, k.pids[1].1, 2, 3);
    wait_for(Duration::from_secs(20), "both sessions joined", || {
        let log = k.c.nodes[&3].log_text();
        (log.matches("a moved job's session joined here").count() >= 2).then_some(())
    })?;
    k.c.node(2)?.kill9();
    for (label, _) in &k.pids {
        for _ in 0..20 {
            assert!(next_of(&k.lines, label).starts_with("tick "));
        }
    }
    let (status, said) = k.usr1()?;
    assert_eq!(status.code(), Some(7), "{status:?} {said:?}");
    Ok(())
}
