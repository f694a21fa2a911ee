//! Signal handlers, blocked and pending signals, itimers, cwd, umask, rlimits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs::File;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn signal_state_timers_cwd_umask_rlimits_survive() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "sigstate");
    let work = tmp.path().join("work dir");
    std::fs::create_dir(&work).unwrap();
    let out = tmp.path().join("out.txt");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.arg(&work)
        .stdout(File::create(&out).unwrap())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let pid = guard.add(spawn(cmd).id() as i32);
    wait_until("first lines", || last_count(&out) >= 3);
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    let at_kill = last_count(&out);
    ok(&restart_out(&store, pid, 1), "restart");
    // every step re-checks all the state (counter_lines fails on "BAD")
    wait_until("restored steps", || last_count(&out) >= at_kill + 5);
    // the restored handler runs
    // SAFETY: plain kill.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    wait_until("SIGUSR1 handled", || {
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .last()
            .is_some_and(|l| l.ends_with("usr1=1"))
    });
    kill_reap(pid);
}

/// POSIX timers come back with their ids, clocks, signals, values and
/// target thread, armed with what they had left (the program checks every
/// tick's siginfo and the one-shot timer's time left at every step).
#[test]
fn posix_timers_survive() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let (pid, out) = start_counter(&guard, tmp.path(), "posixtimers", &[], 3);
    let store = tmp.path().join("store");
    let o = checkpoint_out(&store, pid, &["--kill"]);
    ok(&o, "checkpoint");
    kill_reap(pid);
    let o = run(Command::new(bin("checkpoint"))
        .arg("inspect")
        .arg(store.join(pid.to_string()))
        .arg("1"));
    let shown = String::from_utf8_lossy(&o.stdout);
    assert_eq!(shown.matches("POSIX timer ").count(), 3, "{shown}");
    let at_kill = last_count(&out);
    ok(&restart_out(&store, pid, 1), "restart");
    // counter_lines fails on "BAD"
    wait_until("restored steps", || last_count(&out) >= at_kill + 5);
    kill_reap(pid);
}
