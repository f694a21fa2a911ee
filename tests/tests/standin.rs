//! A process started without `krg run` leaves a stand-in (bproc's ghost)
//! in its place on the node it moves from: its parent waits for it, its
//! output still comes out of its pipes, and signals sent to its PID there
//! reach it where it runs. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use krg_tests::migrating::{
    capset, err, lines_of, migrate, moved_host_pid, next_lines, ppid, ps, socket, Job, PRINTER,
};
use krg_tests::{bin, serial, wait_for, without_stray_fds, TestCluster};

const SETTLE: Duration = Duration::from_secs(20);

fn formed(n: u32) -> Result<TestCluster> {
    TestCluster::loopback(n)?.formed(n, SETTLE)
}

/// A process started without `krg run`, whose stdout and stderr are
/// pipes its parent reads (`./sim | …`), moves to node 2 and back: every
/// line it writes there still comes out of those pipes, in order, none
/// lost or doubled; once it is killed, its parent's pipes reach their end.
#[test]
fn a_moved_process_output_still_reaches_its_pipes() -> Result<()> {
    let _g = serial();
    let c = formed(2)?;
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", PRINTER])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = without_stray_fds(&mut cmd).spawn()?;
    let pid = child.id() as i32;
    let (out, errs_rx) = (
        lines_of(child.stdout.take().unwrap()),
        lines_of(child.stderr.take().unwrap()),
    );
    std::thread::spawn(move || child.wait());
    let job = Job(pid);
    capset(&c, 1, pid);
    next_lines(&out, 3);
    let o = migrate(&c, 1, &[&pid.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    let after = next_lines(&out, 20);
    let o = migrate(&c, 1, &[&format!("2:{pid}"), "1"]);
    assert!(o.status.success(), "{}", err(&o));
    let home = next_lines(&out, 20);
    // consecutive numbers, the same PID, through both moves
    let all: Vec<&String> = after.iter().chain(&home).collect();
    let first: u64 = all[0].split(' ').next().unwrap().parse()?;
    for (k, l) in all.iter().enumerate() {
        assert_eq!(**l, format!("{} {pid}", first + k as u64), "{all:?}");
    }
    // stderr too, from its first line on
    let errs = next_lines(&errs_rx, 40);
    for (k, l) in errs.iter().enumerate() {
        assert_eq!(*l, format!("e {}", k + 1), "{errs:?}");
    }
    // killed where it runs: the pipes its parent reads end
    drop(job);
    wait_for(Duration::from_secs(10), "the end of its stdout", || loop {
        match out.recv_timeout(Duration::from_millis(100)) {
            Ok(_) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Some(()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return None,
        }
    })?;
    Ok(())
}

/// Says `up PID`, a line for each SIGUSR1 (with the PID it sees), and
/// leaves with code 7 on SIGTERM; SIGHUP ends it (Python's default).
const WAITED: &str = r#"
import os, signal, sys, time
def usr1(s, f):
    sys.stdout.write("usr1 %d\n" % os.getpid()); sys.stdout.flush()
def term(s, f):
    sys.stdout.write("term\n"); sys.stdout.flush(); os._exit(7)
signal.signal(signal.SIGUSR1, usr1)
signal.signal(signal.SIGTERM, term)
sys.stdout.write("up %d\n" % os.getpid()); sys.stdout.flush()
while True:
    time.sleep(0.02)
"#;

/// WAITED started by this test (its parent), stdout a pipe read here,
/// flagged CAN_MIGRATE through node 1, once it said it is up.
fn waited_child(c: &TestCluster) -> Result<(Child, Receiver<String>, Job)> {
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", WAITED])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = without_stray_fds(&mut cmd).spawn()?;
    let pid = child.id() as i32;
    let job = Job(pid);
    let out = lines_of(child.stdout.take().unwrap());
    capset(c, 1, pid);
    assert_eq!(next_lines(&out, 1), [format!("up {pid}")]);
    Ok((child, out, job))
}

/// [`waited_child`], moved to node 2.
fn moved_child(c: &TestCluster) -> Result<(Child, Receiver<String>, Job)> {
    let (child, out, job) = waited_child(c)?;
    let pid = child.id() as i32;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let o = migrate(c, 1, &[&pid.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    // The PID on node 1 is the stand-in now: `krg` in the process's place,
    // still this test's child, showing the process's command line to ps.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    assert_eq!(exe.file_name().unwrap(), "krg", "{exe:?}");
    assert_eq!(std::fs::read(format!("/proc/{pid}/cmdline"))?, cmdline);
    assert_eq!(ppid(pid), std::process::id() as i32);
    // krg ps shows it where it runs, with its PID
    assert!(ps(c, 1).contains(&(2, pid as i64)), "{:?}", ps(c, 1));
    Ok((child, out, job))
}

/// The child's end, as its parent's `wait()` gets it.
fn waited(child: &mut Child) -> Result<ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the parent's wait() got nothing within 15 s")
}

/// bproc's ghost: the parent of a process started without `krg run` (a
/// shell, here the test) still has its child after the move. Signals sent
/// to its PID on node 1 (`kill`, or `krg kill 1:PID`) run its handlers on
/// node 2 (where `getpid()` is
/// still that PID), and the parent's `wait()` gets its real end: exit
/// code 7 from its own SIGTERM handler; killed by SIGHUP when `krg kill`
/// sends that where it runs; and ended where it runs when its stand-in
/// is killed (SIGKILL).
#[test]
fn a_moved_process_leaves_a_stand_in_its_parent_waits_for() -> Result<()> {
    let _g = serial();
    let c = formed(2)?;
    let (mut child, out, _job) = moved_child(&c)?;
    let pid = child.id() as i32;
    // Its token, which its owner may read, claims nothing for another
    // process: krgd gives the session only to the stand-in's PID.
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    let token = environ
        .split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(b"KRG_STANDIN="))
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .expect("the stand-in's token");
    let thief = Command::new(bin("krg"))
        .env("KRG_STANDIN", &token)
        .env("KRG_SOCKET", socket(&c, 1))
        .output()?;
    assert_eq!(thief.status.signal(), Some(libc::SIGKILL));
    assert!(
        err(&thief).contains("not a stand-in of this node"),
        "{}",
        err(&thief)
    );
    // `krg kill` of the PID on node 1 (the stand-in's) reaches it too
    let o = c
        .krg(1)?
        .args(["kill", "-s", "USR1", &format!("1:{pid}")])
        .output()?;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(next_lines(&out, 1), [format!("usr1 {pid}")]);
    // SIGSTOP, which the stand-in cannot pass on, stops the process where
    // it runs too; SIGCONT resumes both (a signal sent meanwhile waits).
    let moved = moved_host_pid(pid);
    let state = |p: i32| {
        let s = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap();
        s[s.rfind(')').unwrap() + 2..].chars().next().unwrap()
    };
    // SAFETY: kill(2) of this test's child (the stand-in).
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    wait_for(Duration::from_secs(5), "the moved process stopped", || {
        (state(moved) == 'T').then_some(())
    })?;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert!(out.recv_timeout(Duration::from_millis(300)).is_err());
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(next_lines(&out, 1), [format!("usr1 {pid}")]);
    assert_ne!(state(moved), 'T');
    // SAFETY: kill(2) of this test's child (the stand-in).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(next_lines(&out, 1), ["term"]);
    assert_eq!(waited(&mut child)?.code(), Some(7));
    wait_for(Duration::from_secs(10), "node 2 to list it no more", || {
        (!ps(&c, 1).contains(&(2, pid as i64))).then_some(())
    })?;

    let (mut child, _out, _job) = moved_child(&c)?;
    let pid = child.id() as i32;
    let o = c
        .krg(1)?
        .args(["kill", "-s", "HUP", &format!("2:{pid}")])
        .output()?;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(waited(&mut child)?.signal(), Some(libc::SIGHUP));

    // `kill -9` of the stand-in, which it cannot pass on, ends the process
    // where it runs: no copy is left running without its ghost.
    let (mut child, _out, _job) = moved_child(&c)?;
    let pid = child.id() as i32;
    let moved = moved_host_pid(pid);
    // SAFETY: kill(2) of this test's child (the stand-in).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(waited(&mut child)?.signal(), Some(libc::SIGKILL));
    wait_for(Duration::from_secs(10), "the moved process to end", || {
        let state = std::fs::read_to_string(format!("/proc/{moved}/stat")).ok();
        let alive = state.is_some_and(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'));
        (!alive).then_some(())
    })?;
    Ok(())
}

/// Counts the SIGRTMIN it holds pending (blocked) each time SIGUSR2
/// comes: `rt N`.
const RT_COUNTER: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
int main(void) {
    sigset_t s, usr2, rt;
    sigemptyset(&s); sigaddset(&s, SIGRTMIN); sigaddset(&s, SIGUSR2);
    sigprocmask(SIG_BLOCK, &s, NULL);
    sigemptyset(&usr2); sigaddset(&usr2, SIGUSR2);
    sigemptyset(&rt); sigaddset(&rt, SIGRTMIN);
    printf("up %d\n", getpid()); fflush(stdout);
    for (;;) {
        if (sigwaitinfo(&usr2, NULL) != SIGUSR2) continue;
        struct timespec zero = {0, 0};
        int n = 0;
        while (sigtimedwait(&rt, NULL, &zero) == SIGRTMIN) n++;
        printf("rt %d\n", n); fflush(stdout);
    }
}
"#;

/// A signal pending in the process when it was saved (here a queued
/// real-time one, blocked) comes from its image on the target, and also
/// survives the `execve` into the stand-in, which drops it rather than
/// pass it on a second time: the process gets it once.
#[test]
fn a_signal_pending_at_the_move_arrives_once() -> Result<()> {
    let _g = serial();
    let c = formed(2)?;
    let src = c.dir.path().join("rt.c");
    let exe = c.dir.path().join("rt");
    std::fs::write(&src, RT_COUNTER)?;
    let o = Command::new("cc").arg("-o").arg(&exe).arg(&src).output()?;
    assert!(o.status.success(), "cc: {}", err(&o));
    let mut cmd = Command::new(&exe);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = without_stray_fds(&mut cmd).spawn()?;
    let pid = child.id() as i32;
    let _job = Job(pid);
    let out = lines_of(child.stdout.take().unwrap());
    std::thread::spawn(move || child.wait());
    capset(&c, 1, pid);
    assert_eq!(next_lines(&out, 1), [format!("up {pid}")]);
    // SAFETY: kill(2) of this test's child.
    unsafe { libc::kill(pid, libc::SIGRTMIN()) };
    let o = migrate(&c, 1, &[&pid.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    let mut got = 0;
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) of the stand-in.
        unsafe { libc::kill(pid, libc::SIGUSR2) };
        let line = next_lines(&out, 1).pop().unwrap();
        got += line.strip_prefix("rt ").unwrap().parse::<u32>()?;
    }
    assert_eq!(got, 1, "SIGRTMIN delivered {got} times");
    Ok(())
}

/// A shell and its child move together (`--tree`): the stand-in is the
/// shell's, its output goes on, the copies of the children killed here
/// leave no zombies under it, and the shell's exit code reaches its parent.
#[test]
fn a_tree_leaves_one_stand_in_and_no_zombies() -> Result<()> {
    let _g = serial();
    let c = formed(2)?;
    let script =
        "echo up $$; i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo $i; sleep 0.05; done; exit 4";
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = without_stray_fds(&mut cmd).spawn()?;
    let pid = child.id() as i32;
    let _job = Job(pid);
    let out = lines_of(child.stdout.take().unwrap());
    capset(&c, 1, pid);
    assert_eq!(next_lines(&out, 2), [format!("up {pid}"), "1".to_string()]);
    let o = migrate(&c, 1, &["--tree", &pid.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    let seen: Vec<u32> = next_lines(&out, 5)
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    assert_eq!(children.trim(), "", "the stand-in keeps children");
    assert_eq!(waited(&mut child)?.code(), Some(4));
    Ok(())
}

/// Reads lines from its terminal and answers each; says `eof` and leaves
/// with code 3 at the end of its input.
const READER: &str = r#"
import os, sys
sys.stdout.write("ready %d\n" % os.getpid()); sys.stdout.flush()
while True:
    line = sys.stdin.readline()
    if not line:
        break
    sys.stdout.write("got " + line); sys.stdout.flush()
sys.stdout.write("eof\n"); sys.stdout.flush()
sys.exit(3)
"#;

/// A process in the foreground of its terminal (here the session leader
/// of a pseudo-terminal the test holds) moves: what is typed on that
/// terminal still reaches it on node 2 through its stand-in, its answers
/// come back there, and Ctrl-D ends its input: it leaves with code 3.
#[test]
fn a_foreground_process_still_reads_its_terminal() -> Result<()> {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let _g = serial();
    let c = formed(2)?;
    let (mut master, slave) = krg_tests::migrating::pty_pair();
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", READER])
        .stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
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
    let mut child = without_stray_fds(&mut cmd).spawn()?;
    let pid = child.id() as i32;
    let _job = Job(pid);
    let out = lines_of(master.try_clone()?);
    capset(&c, 1, pid);
    let line = |l: String| l.trim_end_matches('\r').to_string();
    assert_eq!(line(next_lines(&out, 1).remove(0)), format!("ready {pid}"));
    let o = migrate(&c, 1, &[&pid.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    master.write_all(b"hello\n")?;
    // the terminal echoes the line, then the moved process answers
    let seen: Vec<String> = next_lines(&out, 2).into_iter().map(line).collect();
    assert_eq!(seen, ["hello", "got hello"]);
    master.write_all(b"\x04")?;
    assert_eq!(line(next_lines(&out, 1).remove(0)), "eof");
    assert_eq!(waited(&mut child)?.code(), Some(3));
    Ok(())
}

/// The target's krgd dies (SIGKILL, at a crash point) while it takes the
/// process over: the origin restores it at home, in a PID namespace of
/// its own behind the same stand-in, and its parent sees nothing but the
/// pause: its signals still reach it, and its exit code still comes back.
#[test]
fn a_target_that_dies_during_the_handover_leaves_it_home_behind_its_stand_in() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::loopback(2)?;
    let crash = c.arm_crash_points();
    let c = c.formed(2, SETTLE)?;
    let (mut child, out, _job) = waited_child(&c)?;
    let pid = child.id() as i32;
    std::fs::write(&crash, "krgd-adopt-job")?;
    let o = migrate(&c, 1, &[&pid.to_string(), "2"]);
    assert!(!o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("run on node 1 again"), "{}", err(&o));
    assert!(!crash.exists(), "the crash point did not fire");
    assert!(ps(&c, 1).contains(&(1, pid as i64)), "{:?}", ps(&c, 1));
    // SAFETY: kill(2) of this test's child (the stand-in).
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert_eq!(next_lines(&out, 1), [format!("usr1 {pid}")]);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(next_lines(&out, 1), ["term"]);
    assert_eq!(waited(&mut child)?.code(), Some(7));
    Ok(())
}
