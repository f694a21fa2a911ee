//! `restart --lazy`: the job runs before its private pages are in; a page
//! server brings each in on first touch and the rest behind, across the
//! job's own forks, mremaps, madvise drops and unmaps, then exits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
#![allow(clippy::zombie_processes)] // children are reaped by kill_reap

mod common;

use std::process::{Command, Stdio};

use common::*;

/// The page server's PID, from restart's last line.
fn server_pid(stderr: &str) -> i32 {
    stderr
        .split("page server PID ")
        .nth(1)
        .and_then(|r| {
            r.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no page server in: {stderr}"))
}

/// bigmem holding `mib` MiB, saved as SN 1 under `<dir>/store` with
/// `--kill` (and reaped): the store and its PID.
fn bigmem_saved(guard: &Guard, dir: &std::path::Path, mib: u64) -> (std::path::PathBuf, i32) {
    let exe = build_c(dir, "bigmem");
    let store = dir.join("store");
    let mut cmd = Command::new(&exe);
    cmd.arg(mib.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = guard.add(spawn(cmd).id() as i32);
    holds_mib(pid, mib);
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    (store, pid)
}

/// `restart --lazy` of SN 1 of `pid`: its page server's PID. Its stderr
/// goes to the file `err`: the page server keeps it open to its end, and
/// reading a pipe to EOF would wait for the server.
fn restart_lazily(store: &std::path::Path, pid: i32, err: &std::path::Path) -> i32 {
    let status = Command::new(bin("restart"))
        .arg("--dir")
        .arg(store)
        .args(["--lazy", &pid.to_string(), "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(err).unwrap())
        .status()
        .unwrap();
    let said = std::fs::read_to_string(err).unwrap();
    assert!(status.success(), "restart --lazy: {said}");
    server_pid(&said)
}

/// Wait until process `pid` has `mib` MiB resident (bigmem touched it).
fn holds_mib(pid: i32, mib: u64) {
    wait_until("bigmem holds its memory", || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .is_some_and(|kb| kb >= mib << 10)
    });
}

/// A restored job that checks its memory every step, started lazily from
/// `sn`: it runs on, all pages right, and the server is gone once done.
fn lazily(store: &std::path::Path, pid: i32, sn: u32, log: &std::path::Path) {
    let o = restart_into(store, pid, sn, &["--lazy"], log);
    ok(&o, "restart --lazy");
    let server = server_pid(&String::from_utf8_lossy(&o.stderr));
    let text = || std::fs::read_to_string(log).unwrap_or_default();
    wait_until("the lazily restored job checks its memory", || {
        let t = text();
        assert!(!t.contains("BAD"), "restored lazily from SN {sn}: {t}");
        t.lines().count() >= 5
    });
    counter_lines(&text());
    wait_until("the page server finishes", || !alive(server));
    kill_reap(server);
    for p in image_pids(store, pid, sn) {
        kill_reap(p);
    }
}

#[test]
fn lazily_restored_chain_with_moves_drops_and_unmaps() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "churn");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.arg("24").stderr(Stdio::null());
    let (child, out) = spawn_reading(cmd);
    let pid = guard.add(child.id() as i32);
    wait_until("churn checks its memory", || last_of(&out.get()) >= 3);
    ok(&checkpoint_out(&store, pid, &[]), "checkpoint");
    let n = last_of(&out.get());
    wait_until("churn runs on", || last_of(&out.get()) >= n + 3);
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint 2");
    kill_reap(pid);
    lazily(&store, pid, 2, &tmp.path().join("r2.txt"));
    lazily(&store, pid, 1, &tmp.path().join("r1.txt"));
}

#[test]
fn lazily_restored_job_forks_while_pages_come_in() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "forker");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.arg("64").stderr(Stdio::null());
    let (child, out) = spawn_reading(cmd);
    let pid = guard.add(child.id() as i32);
    wait_until("forker checks its memory", || last_of(&out.get()) >= 2);
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    // a child checking memory may have been saved (and killed) with it
    for p in image_pids(&store, pid, 1) {
        kill_reap(p);
    }
    lazily(&store, pid, 1, &tmp.path().join("r.txt"));
}

/// A changed byte of page data is refused before anything runs, lazily too.
#[test]
fn lazy_restart_of_a_corrupted_image_starts_nothing() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "forker");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.arg("8").stderr(Stdio::null());
    let (child, out) = spawn_reading(cmd);
    let pid = guard.add(child.id() as i32);
    wait_until("forker runs", || last_of(&out.get()) >= 1);
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    let mm = store
        .join(pid.to_string())
        .join(format!("task_mm_{pid}_v1.bin"));
    let mut b = std::fs::read(&mm).unwrap();
    b[4096 + 4096 * 50] ^= 0x40;
    std::fs::write(&mm, b).unwrap();
    let o = restart_into(&store, pid, 1, &["--lazy"], &tmp.path().join("r.txt"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("CRC"), "{err}");
    assert!(!err.contains("page server"), "{err}");
    assert!(!alive(pid));
}

/// `--check-as-loaded`: the job runs before its pages are checked; the
/// page server finds the changed byte when it loads that block, and kills
/// the job rather than let it run with wrong memory. (One process: pages
/// a child shares with its parent are put in before the child is forked,
/// and so checked before anything runs, as `--lazy` alone does.)
#[test]
fn a_page_changed_is_caught_as_it_loads() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let (store, pid) = bigmem_saved(&guard, tmp.path(), 8);
    let mm = store
        .join(pid.to_string())
        .join(format!("task_mm_{pid}_v1.bin"));
    let mut b = std::fs::read(&mm).unwrap();
    b[4096 + 4096 * 50] ^= 0x40;
    std::fs::write(&mm, b).unwrap();
    // the output is read to its end: the page server (which keeps restart's
    // stderr) has exited by then
    let o = restart_into(
        &store,
        pid,
        1,
        &["--lazy", "--check-as-loaded"],
        &tmp.path().join("r.txt"),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("changed after restart began") && err.contains("killed"),
        "{err}"
    );
    wait_until("the job is killed", || !alive(pid));
    kill_reap(pid);
}

/// What `ps` and `pgrep` read of a lazily restored process — its command
/// line and environment, in its private stack — is there as soon as
/// restart returns, not once the page server reaches those pages (a read
/// from another process is not served through the userfaultfd: it found
/// them empty). The environment is large enough that the process itself
/// never touches its end, and its memory large enough that the server's
/// sweep takes a while to reach the stack.
#[test]
fn a_lazily_restored_process_shows_its_command_line_and_environment_at_once() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "bigmem");
    let store = tmp.path().join("store");
    let pad = "p".repeat(5 * 4096);
    let mut cmd = Command::new(&exe);
    cmd.arg("256").env("KRG_PAD", &pad);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let pid = guard.add(spawn(cmd).id() as i32);
    holds_mib(pid, 256);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    let server = restart_lazily(&store, pid, &tmp.path().join("restart.err"));
    let now_cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let now_environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let still_loading = alive(server);
    kill_reap(pid);
    wait_until("the page server ends", || !alive(server));
    kill_reap(server);
    assert_eq!(
        String::from_utf8_lossy(&now_cmdline),
        String::from_utf8_lossy(&cmdline)
    );
    assert!(now_environ == environ, "its environment read back differs");
    // (the check means something only while pages were still coming in)
    assert!(
        still_loading,
        "the page server was done before /proc was read"
    );
}

/// A process whose memory a page server is still bringing in has pages
/// that are not in its page tables yet: a checkpoint then would save them
/// as pages never touched (zeros), and the restarted process would
/// crash. It is refused until the server is done (a migration's target
/// restores lazily too, so this is a checkpoint right after a move).
#[test]
fn a_process_still_loading_is_not_checkpointed_until_its_memory_is_in() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let (store, pid) = bigmem_saved(&guard, tmp.path(), 256);
    let server = restart_lazily(&store, pid, &tmp.path().join("restart.err"));
    // the server held where it is: part of the memory is not in
    // SAFETY: kill(2) of the page server this test started.
    unsafe { libc::kill(server, libc::SIGSTOP) };
    let held = alive(server);
    let o = checkpoint_out(&store, pid, &[]);
    // SAFETY: as above.
    unsafe { libc::kill(server, libc::SIGCONT) };
    assert!(held, "the page server was done before it could be held");
    assert!(!o.status.success(), "a process still loading was saved");
    let refused = String::from_utf8_lossy(&o.stderr);
    assert!(refused.contains("still coming in"), "{refused}");
    assert!(
        alive(pid),
        "the refused checkpoint left the process running"
    );
    wait_until("the page server ends", || !alive(server));
    kill_reap(server);
    // once it is all in, the checkpoint is whole
    let o = checkpoint_out(&store, pid, &["--kill"]);
    ok(&o, "checkpoint once loaded");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("(256."),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    kill_reap(pid);
}
