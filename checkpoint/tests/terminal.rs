//! Jobs started from a terminal: a shell pipeline `producer | consumer`,
//! a `producer | sqlite3 DB` writer, and a shell writing to the terminal
//! through its own fd 3, each run as a session on a pty this test makes,
//! checkpointed with `--kill` and restarted with the pty as restart's
//! stdin/stdout: each goes on where it was, on the same terminal, and the
//! database is intact (no row lost or twice).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
#![allow(clippy::zombie_processes)] // children are reaped by kill_reap

mod common;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;

/// A pty: (master, slave path). The master is read by a thread into the
/// returned text.
fn pty() -> (Arc<Mutex<String>>, std::path::PathBuf) {
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty writes two fds; no name buffer, default settings.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty");
    // SAFETY: openpty returned two new fds, ours alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    let path = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd())).unwrap();
    drop(slave);
    let text = Arc::new(Mutex::new(String::new()));
    let t2 = text.clone();
    std::thread::spawn(move || {
        let mut f = File::from(master);
        let mut b = [0u8; 4096];
        // EIO once no process holds the slave: keep trying (restart opens it again)
        loop {
            match f.read(&mut b) {
                Ok(n) if n > 0 => {
                    if let Ok(mut t) = t2.lock() {
                        t.push_str(&String::from_utf8_lossy(&b[..n]));
                    }
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    });
    (text, path)
}

fn slave(path: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// `sh -c SCRIPT` as a session leader with the pty as its controlling
/// terminal and stdio, like a login shell's job.
fn start_on(tty: &Path, script: &str, guard: &Guard) -> i32 {
    let s = slave(tty);
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script])
        .stdin(s.try_clone().unwrap())
        .stdout(s.try_clone().unwrap())
        .stderr(s);
    // SAFETY: setsid and TIOCSCTTY in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    guard.add(spawn(cmd).id() as i32)
}

/// Every process of session `sid`, killed and reaped.
fn kill_session(sid: i32) {
    for _ in 0..3 {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let theirs = stat
                .rsplit_once(") ")
                .and_then(|(_, r)| r.split_whitespace().nth(3)?.parse::<i32>().ok());
            if theirs == Some(sid) {
                kill_reap(pid);
            }
        }
    }
}

/// Checkpoint the session `pid` runs (`--kill`), kill what is left,
/// restart it with the pty as restart's stdin and stdout.
fn checkpoint_and_restart(tty: &Path, store: &Path, pid: i32) {
    ok(&checkpoint_out(store, pid, &["--kill"]), "checkpoint");
    kill_session(pid);
    let s = slave(tty);
    // restart's own message (and the job's stderr, which it inherits) in
    // a file: on the pty it could cut a line of the job's in two
    let err = store.with_extension("restart.err");
    let st = Command::new(bin("restart"))
        .arg("--dir")
        .arg(store)
        .arg(pid.to_string())
        .arg("1")
        .stdin(s.try_clone().unwrap())
        .stdout(s)
        .stderr(File::create(&err).unwrap())
        .status()
        .unwrap();
    let msg = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(st.success(), "restart failed: {msg}");
}

/// "N ok" counters of the terminal's text (CR LF line ends).
fn counts(text: &Arc<Mutex<String>>) -> Vec<u64> {
    let t = text.lock().map(|t| t.clone()).unwrap_or_default();
    counter_lines(&t.replace('\r', ""))
}

#[test]
fn shell_pipeline_on_a_terminal_goes_on() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let (text, tty) = pty();
    let script = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.02; done | \
                  while read n; do echo \"$n ok\"; done";
    let pid = start_on(&tty, script, &guard);
    wait_until("pipeline runs", || counts(&text).len() >= 5);
    let store = tmp.path().join("store");
    checkpoint_and_restart(&tty, &store, pid);
    let at = counts(&text).len();
    // counter_lines checks there is no gap and no repeat across the restart
    wait_until("pipeline goes on", || counts(&text).len() >= at + 10);
    kill_session(pid);
}

#[test]
fn sqlite3_writer_keeps_its_database_intact() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("t.db");
    let o = run(Command::new("sqlite3")
        .arg(&db)
        .arg("CREATE TABLE t(n INTEGER PRIMARY KEY, pad TEXT);"));
    ok(&o, "sqlite3 create");
    let (text, tty) = pty();
    let script = format!(
        "i=0; while :; do i=$((i+1)); \
         echo \"BEGIN; INSERT INTO t VALUES($i, hex(randomblob(200))); COMMIT; SELECT '$i ok';\"; \
         sleep 0.01; done | sqlite3 {}",
        db.display()
    );
    let pid = start_on(&tty, &script, &guard);
    wait_until("writer runs", || counts(&text).len() >= 20);
    let store = tmp.path().join("store");
    checkpoint_and_restart(&tty, &store, pid);
    let at = counts(&text).last().copied().unwrap_or(0);
    wait_until("writer goes on", || {
        counts(&text).last().copied().unwrap_or(0) >= at + 30
    });
    kill_session(pid);
    let o = run(Command::new("sqlite3")
        .arg(&db)
        .arg("PRAGMA integrity_check; SELECT count(*), min(n), max(n) FROM t;")
        .stdout(Stdio::piped()));
    ok(&o, "sqlite3 check");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("ok"), "integrity: {out}");
    let v: Vec<u64> = lines
        .next()
        .unwrap()
        .split('|')
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(v[1], 1, "{out}");
    assert_eq!(v[0], v[2], "rows 1..max, none lost or twice: {out}");
    assert!(v[2] >= at + 30, "{out}");
}

/// A job writing to its terminal through an fd of its own above 2
/// (`exec 3<>/dev/tty`, stdio elsewhere): restarted, that fd is
/// restart's stdout, the same terminal here, and the lines go on.
#[test]
fn terminal_on_a_high_fd_goes_to_restarts_stdout() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let (text, tty) = pty();
    let script = "exec 3<>/dev/tty >/dev/null 2>&1 </dev/null; i=0; \
                  while :; do i=$((i+1)); echo \"$i ok\" >&3; sleep 0.02; done";
    let pid = start_on(&tty, script, &guard);
    wait_until("job writes to fd 3", || counts(&text).len() >= 5);
    let store = tmp.path().join("store");
    checkpoint_and_restart(&tty, &store, pid);
    let at = counts(&text).len();
    wait_until("lines go on", || counts(&text).len() >= at + 10);
    let fd3 = std::fs::read_link(format!("/proc/{pid}/fd/3")).unwrap();
    assert_eq!(fd3, tty, "fd 3 is the terminal again");
    kill_session(pid);
}
