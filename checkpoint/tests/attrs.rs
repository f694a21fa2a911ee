//! Process attributes that must come back as they were, or be refused at
//! checkpoint in one line naming the PID (and fd): prctl settings,
//! scheduling, capabilities, loginuid, robust lists, membarrier, madvise
//! flags, fd owners and pipe sizes (`progs/attrs.c` checks its own);
//! a stopped task; and the refusals of `progs/refusals.c`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
#![allow(clippy::zombie_processes)] // children are reaped by kill_reap

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn status_line(pid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or("")
        .to_string()
}

/// Every attribute `attrs.c` sets is there after restart, from an SN taken
/// while it ran on (mapping flags read around the freeze) and from one
/// taken with `--kill` (read while frozen): the program checks them all
/// every step and prints BAD otherwise.
#[test]
fn process_attributes_come_back() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "attrs");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.arg(tmp.path()).stderr(Stdio::null());
    let (child, out) = spawn_reading(cmd);
    let pid = guard.add(child.id() as i32);
    wait_until("attrs set up", || last_of(&out.get()) >= 3);
    let kid = guard.add(children(pid)[0]);
    let caps = status_line(pid, "CapPrm");
    let first = checkpoint_between_checks(&store, pid, &[]);
    ok(&first, "checkpoint");
    let sn1 = saved_sn(&first);
    let at_sn1 = last_of(&out.get());
    wait_until("runs on", || last_of(&out.get()) >= at_sn1 + 3);
    let second = checkpoint_between_checks(&store, pid, &["--kill"]);
    ok(&second, "checkpoint --kill");
    let sn2 = saved_sn(&second);
    let before = last_of(&out.get());
    kill_reap(pid);
    kill_reap(kid);
    for sn in [sn1, sn2] {
        let log = tmp.path().join(format!("restored{sn}.txt"));
        let ps = run(Command::new("ps").args(["-e", "-o", "pid,ppid,stat,comm"]));
        let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
        let r = restart_into(&store, pid, sn, &[], &log);
        if !r.status.success() {
            let mine: Vec<&str> = ps.lines().filter(|l| l.contains("attrs")).collect();
            panic!(
                "sn {sn} pid {pid} kid {kid}: {} {mine:?}",
                String::from_utf8_lossy(&r.stderr)
            );
        }
        let text = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_until("restored job checks itself", || {
            counter_lines(&text()).len() >= 10
        });
        let lines = counter_lines(&text());
        if sn == sn2 {
            assert_eq!(lines[0], before + 1, "continues where it was");
        } else {
            assert!(lines[0] <= at_sn1 + 1, "continues from SN 1");
        }
        assert_eq!(status_line(pid, "CapPrm"), caps);
        assert_eq!(children(pid), vec![kid], "the child is back");
        kill_reap(pid);
        kill_reap(kid);
    }
    let insp = run(Command::new(bin("checkpoint"))
        .arg("inspect")
        .arg(store.join(pid.to_string()))
        .arg(sn1.to_string()));
    let insp = String::from_utf8_lossy(&insp.stdout);
    assert!(insp.contains("child subreaper; THP disabled"), "{insp}");
    assert!(insp.contains("pdeathsig 12"), "{insp}");
    assert!(insp.contains("dc"), "madvise flags recorded: {insp}");
}

/// `attrs.c` reads its own /proc/self/smaps every step: a checkpoint that
/// freezes it right then is (rightly) refused. Try again, as a user would.
fn checkpoint_between_checks(
    store: &std::path::Path,
    pid: i32,
    extra: &[&str],
) -> std::process::Output {
    for _ in 0..20 {
        let o = checkpoint_out(store, pid, extra);
        if o.status.success() || !String::from_utf8_lossy(&o.stderr).contains("/smaps") {
            return o;
        }
        std::thread::sleep(Duration::from_millis(7));
    }
    checkpoint_out(store, pid, extra)
}

/// A SIGSTOP'ed job is checkpointed (left stopped), restored stopped, and
/// goes on after SIGCONT with no step lost.
#[test]
fn stopped_task_comes_back_stopped() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "stopped");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.stderr(Stdio::null());
    let (child, out) = spawn_reading(cmd);
    let pid = guard.add(child.id() as i32);
    wait_until("job runs", || last_of(&out.get()) >= 3);
    // SAFETY: plain kill of our child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    wait_until("job stopped", || state(pid) == 'T');
    ok(
        &checkpoint_out(&store, pid, &[]),
        "checkpoint of a stopped job",
    );
    // detached, it runs for a moment back into its group stop
    wait_until("left stopped by the checkpoint", || state(pid) == 'T');
    let o = checkpoint_out(&store, pid, &["--kill"]);
    ok(&o, "checkpoint --kill");
    let at = last_of(&out.get());
    kill_reap(pid);
    let log = tmp.path().join("restored.txt");
    ok(&restart_into(&store, pid, 2, &[], &log), "restart");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state(pid), 'T', "restored stopped");
    assert_eq!(text(), "", "a stopped job does not run");
    // SAFETY: plain kill of the restored job.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    wait_until("job goes on", || last_of(&text()) >= at + 3);
    assert_eq!(counter_lines(&text())[0], at + 1, "no step lost or doubled");
    kill_reap(pid);
}

/// Each thing `refusals.c` holds is refused in one line naming the PID
/// (and the fd), and the job runs on.
#[test]
fn refusals_name_the_process_and_fd() {
    let cases = [
        ("symlink", "fd 5 ("),
        ("cwd", "a deleted working directory"),
        ("proc", "fd 5 (/proc/"),
        ("pdeath", "a parent-death signal"),
        ("owner", "fd 5 owned (F_SETOWN) by"),
        ("pidfd", "a pidfd of a process outside the tree"),
    ];
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "refusals");
    for (mode, want) in cases {
        let scratch = tmp.path().join(mode);
        std::fs::create_dir(&scratch).unwrap();
        let mut cmd = Command::new(&exe);
        cmd.arg(mode).arg(&scratch).stderr(Stdio::null());
        let (child, out) = spawn_reading(cmd);
        let pid = guard.add(child.id() as i32);
        wait_until("ready", || out.get().contains("ready"));
        let kids = children(pid);
        let o = checkpoint_out(&tmp.path().join("store"), pid, &[]);
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{mode}: must be refused");
        assert!(e.contains(want), "{mode}: expected {want:?} in {e}");
        assert_eq!(e.trim().lines().count(), 1, "{mode}: one line: {e}");
        let named = kids
            .iter()
            .chain([&pid])
            .any(|p| e.starts_with(&format!("checkpoint: process {p}:")));
        assert!(named, "{mode}: names the process: {e}");
        assert!(alive(pid), "{mode}: the job runs on");
        assert_ne!(state(pid), 't', "{mode}: not left traced");
        for k in kids {
            kill_reap(k);
        }
        kill_reap(pid);
    }
}

/// A program that catches SIGTRAP and runs breakpoints on itself survives
/// the checkpoint (left running) and the restart: injection never leaves
/// its SIGTRAP handler reset (a blocked forced trap would).
#[test]
fn breakpoints_on_itself_survive() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "trap");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.stderr(Stdio::null());
    let (child, out) = spawn_reading(cmd);
    let pid = guard.add(child.id() as i32);
    wait_until("job runs", || last_of(&out.get()) >= 3);
    ok(&checkpoint_out(&store, pid, &[]), "checkpoint");
    let at = last_of(&out.get());
    wait_until("job runs on after the checkpoint", || {
        last_of(&out.get()) >= at + 5
    });
    ok(
        &checkpoint_out(&store, pid, &["--kill"]),
        "checkpoint --kill",
    );
    let at = last_of(&out.get());
    kill_reap(pid);
    let log = tmp.path().join("restored.txt");
    ok(&restart_into(&store, pid, 2, &[], &log), "restart");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("restored job traps on", || last_of(&text()) >= at + 10);
    assert!(alive(pid));
    kill_reap(pid);
}

/// Seccomp comes back: a filter inherited by a thread, a second filter of
/// that thread only, a child in strict mode (`progs/seccomp.c` checks
/// each filter at work every step, and the strict child echoes bytes).
#[test]
fn seccomp_filters_and_strict_mode_come_back() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let (pid, out) = start_counter(&guard, tmp.path(), "seccomp", &[tmp.path()], 3);
    let store = tmp.path().join("store");
    let child: i32 = std::fs::read_to_string(tmp.path().join("child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    guard.add(child);
    // SN 1 while it runs (calls are injected past the filters), SN 2 ends it
    ok(&checkpoint_out(&store, pid, &[]), "checkpoint");
    wait_until("steps after SN 1", || last_count(&out) >= 6);
    ok(
        &checkpoint_out(&store, pid, &["--kill"]),
        "checkpoint --kill",
    );
    kill_reap(pid);
    wait_until("child gone", || !alive(child));
    kill_reap(child);
    let at_kill = last_count(&out);
    ok(&restart_out(&store, pid, 2), "restart");
    // counter_lines fails on "BAD"
    wait_until("restored steps", || last_count(&out) >= at_kill + 5);
    assert_eq!(status_line(child, "Seccomp:"), "Seccomp:\t1");
    assert_eq!(status_line(pid, "Seccomp:"), "Seccomp:\t2");
    assert_eq!(status_line(pid, "Seccomp_filters:"), "Seccomp_filters:\t1");
    for p in [child, pid] {
        kill_reap(p);
    }
    // a thread whose filter fails prctl (the calls injected to read its
    // state) used to fail the checkpoint with "errno 1234"
    let exe = build_c(tmp.path(), "refusals");
    let mut cmd = Command::new(&exe);
    cmd.arg("seccomp").arg(tmp.path()).stderr(Stdio::null());
    let (c, said) = spawn_reading(cmd);
    let p = guard.add(c.id() as i32);
    wait_until("ready", || said.get().contains("ready"));
    ok(
        &checkpoint_out(&tmp.path().join("store2"), p, &[]),
        "checkpoint of a thread whose filter fails prctl",
    );
    kill_reap(p);
}

/// Two threads under one filter installed with TSYNC still share it after
/// restart: a second filter added with TSYNC then reaches both (the kernel
/// refuses TSYNC unless every thread has the very same filters).
#[test]
fn seccomp_filters_shared_by_threads_take_tsync_again() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let (pid, out) = start_counter(&guard, tmp.path(), "tsync", &[tmp.path()], 3);
    let store = tmp.path().join("store");
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    let at_kill = last_count(&out);
    ok(&restart_out(&store, pid, 1), "restart");
    wait_until("restored steps", || last_count(&out) >= at_kill + 3);
    assert_eq!(ask_usr1(tmp.path(), pid, "tsync"), "ok");
    kill_reap(pid);
}
