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

/// `krg run -n 1 -- python3 -c TICKER` through node 1, its stdin empty,
/// from a shell holding CAN_MIGRATE; its stdout lines on a channel.
fn start(c: &TestCluster) -> (Child, Receiver<String>) {
    let go = c.dir.path().join("go");
    let sh = format!(
        "while [ ! -e {go} ]; do sleep 0.02; done; exec {krg} run -n 1 -- python3 -u -c \"$0\"",
        go = go.display(),
        krg = bin("krg").display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &sh, TICKER])
        .env("KRG_SOCKET", c.dir.path().join("krgd1.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    capset(c, 1, child.id() as i32);
    std::fs::write(&go, b"").unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    (child, lines)
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

/// Node `node`'s krgd says a moved job's session was joined there.
fn joined_on(c: &TestCluster, node: u32) -> Result<()> {
    wait_for(Duration::from_secs(10), "the job's session joined", || {
        c.nodes[&node]
            .log_text()
            .contains("a moved job's session joined here")
            .then_some(())
    })
}

#[test]
fn a_job_moved_twice_outlives_the_node_it_passed_through() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::loopback(3)?.formed(3, Duration::from_secs(20))?;
    let (mut child, lines) = start(&c);
    next_tick(&lines);
    let pid = wait_for(Duration::from_secs(10), "the job in krg ps", || {
        ps(&c, 1).into_iter().find(|(n, _)| *n == 1).map(|(_, p)| p)
    })?;

    moves(&c, pid, 1, 2);
    next_tick(&lines);
    moves(&c, pid, 2, 3);
    joined_on(&c, 3)?;
    ticks_on(&lines, Duration::from_millis(300));

    // node 2 is out of the path: its krgd dies, the job runs on
    c.node(2)?.kill9();
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
