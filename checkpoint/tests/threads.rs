//! Multi-threaded processes: every thread, its registers, TLS and TID.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs::File;
use std::process::{Command, Stdio};

use common::*;

fn tids(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

#[test]
fn threads_come_back_with_their_tids_and_state() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/threads.c");
    let exe = tmp.path().join("threads");
    assert!(Command::new("cc")
        .args(["-O1", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap()
        .success());
    let out = tmp.path().join("out.txt");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.stdout(File::create(&out).unwrap())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let pid = guard.add(spawn(cmd).id() as i32);
    wait_until("threads run", || last_count(&out) >= 3);
    let before = tids(pid);
    assert_eq!(before.len(), 5);
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    let at_kill = last_count(&out);
    ok(&restart_out(&store, pid, 1), "restart");
    assert_eq!(tids(pid), before, "same thread ids");
    wait_until("restored threads all progress", || {
        last_count(&out) >= at_kill + 5
    });
    kill_reap(pid);
}

#[test]
fn rust_program_with_a_worker_thread_continues() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_rust(tmp.path(), "rustcount");
    let out = tmp.path().join("out.txt");
    let log = tmp.path().join("steps.log");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.arg(&log)
        .stdout(File::create(&out).unwrap())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let pid = guard.add(spawn(cmd).id() as i32);
    wait_until("rust program counts", || last_count(&out) >= 5);
    let before = tids(pid);
    assert_eq!(before.len(), 2, "main thread and worker");
    ok(&checkpoint_out(&store, pid, &[]), "checkpoint");
    let at_ckpt = last_count(&out);
    wait_until("runs on after checkpoint", || {
        last_count(&out) >= at_ckpt + 5
    });
    kill_reap(pid);
    let at_kill = last_count(&out);
    ok(&restart_out(&store, pid, 1), "restart");
    assert_eq!(tids(pid), before, "same PID and TIDs");
    // Every restored step checks heap, map, TLS, the worker and the log
    // offset ("N BAD …" fails counter_lines); the counter goes on past the kill
    // without a reset. The log restarts from the checkpoint's offset, so the
    // steps taken after the checkpoint are written again over the same bytes.
    wait_until("restored rust program counts on", || {
        last_count(&out) >= at_kill + 10
    });
    let text = std::fs::read_to_string(&out).unwrap();
    let resumed = text
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .collect::<Vec<_>>();
    let logged: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.parse().expect("log line"))
        .collect();
    let last = *resumed.last().unwrap();
    assert!(
        logged.len() as u64 >= last - 1,
        "log kept up: {} lines",
        logged.len()
    );
    assert!(
        logged.iter().enumerate().all(|(i, n)| *n == i as u64 + 1),
        "log lines 1, 2, 3, …"
    );
    kill_reap(pid);
}
