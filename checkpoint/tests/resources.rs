//! What real programs hold, saved and restored: eventfd, timerfd,
//! signalfd and epoll (with its registrations), …
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
#![allow(clippy::zombie_processes)] // children are reaped by kill_reap

mod common;

use std::process::{Command, Stdio};

use common::*;

#[test]
fn epoll_timerfd_eventfd_signalfd_event_loop() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "evloop");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.stderr(Stdio::null());
    let (child, out) = spawn_reading(cmd);
    let pid = guard.add(child.id() as i32);
    wait_until("event loop runs", || last_of(&out.get()) >= 3);
    let o = checkpoint_out(&store, pid, &["--kill"]);
    ok(&o, "checkpoint");
    kill_reap(pid);
    let at = last_of(&out.get());
    let log = tmp.path().join("restored.txt");
    ok(&restart_into(&store, pid, 1, &[], &log), "restart");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    // the timer fires on, the eventfd counts every tick, the semaphore gives
    wait_until("restored loop runs", || counter_lines(&text()).len() >= 5);
    let first = counter_lines(&text())[0];
    assert!(
        first >= at && first <= at + 2,
        "resumed at {first}, saved near {at}"
    );
    // SAFETY: plain kill of the restored process.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    wait_until("the signalfd reads SIGUSR1", || {
        text().contains("got SIGUSR1")
    });
    kill_reap(pid);
}
