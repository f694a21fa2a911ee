//! Tests of the CHECKPOINTABLE tracker and its in-kernel filter (root:
//! they subscribe to the proc connector and load eBPF).

use super::*;

#[test]
fn fork_inherits_flag_and_exit_clears_it() {
    let t = CapTracker::start().unwrap();
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    t.set(me, true).unwrap();
    let mut c = std::process::Command::new("sleep")
        .arg("5")
        .spawn()
        .unwrap();
    let pid = c.id() as i32;
    // wait until the tracker saw the fork (or the ancestor rule accepts it)
    assert!(t.is_set(pid));
    t.set(me, false).unwrap();
    assert!(
        t.is_set(pid),
        "child keeps the flag after the parent drops it"
    );
    c.kill().unwrap();
    c.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while t.flags.lock().unwrap().contains_key(&pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !t.flags.lock().unwrap().contains_key(&pid),
        "exit event removes the flag"
    );
    let mut other = std::process::Command::new("sleep")
        .arg("5")
        .spawn()
        .unwrap();
    assert!(!t.is_set(other.id() as i32));
    other.kill().unwrap();
    other.wait().unwrap();
    t.shutdown();
}

/// Spawn `n` short processes from this (untracked unless flagged) process.
fn fork_storm(n: usize) {
    for _ in 0..n {
        std::process::Command::new("true").status().unwrap();
    }
}

/// Wait until the tracker has received at least `n` datagrams (bounded).
fn wait_events(t: &CapTracker, n: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while t.events_received() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    t.events_received()
}

#[test]
fn untracked_forks_never_reach_the_tracker() {
    let t = CapTracker::start().unwrap();
    assert!(t.filtered(), "the in-kernel filter is not attached");
    // A shell flagged now: its later children are followed, and every
    // fork of the rest of the machine is dropped in the kernel.
    let mut sh = std::process::Command::new("sh")
        .args([
            "-c",
            "read x; for i in 1 2 3 4 5; do /bin/true; done; sleep 30",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sh_pid = sh.id() as i32;
    fork_storm(200);
    // give stray events time to arrive (they must not)
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        t.events_received(),
        0,
        "untracked forks reached the tracker"
    );
    t.set(sh_pid, true).unwrap();
    use std::io::Write;
    sh.stdin.take().unwrap().write_all(b"go\n").unwrap();
    // 5 forks + 5 exits of /bin/true, then the fork of sleep
    let got = wait_events(&t, 11);
    assert!(got >= 11, "only {got} events of the flagged shell arrived");
    fork_storm(200);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        t.events_received(),
        got,
        "untracked forks reached the tracker"
    );
    // the sleep the shell started inherited the flag
    let sleep_pid = procfs_children(sh_pid);
    assert!(sleep_pid.iter().any(|&p| t.is_set(p)), "{sleep_pid:?}");
    sh.kill().unwrap();
    sh.wait().unwrap();
    t.shutdown();
}

fn procfs_children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn grandchildren_of_a_flagged_process_are_followed_even_when_their_parent_is_gone() {
    let t = CapTracker::start().unwrap();
    let mut sh = std::process::Command::new("sh")
        .args(["-c", "read x; (sh -c 'sleep 30 & echo $!' &) ; sleep 30"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    t.set(sh.id() as i32, true).unwrap();
    use std::io::{BufRead, Write};
    sh.stdin.take().unwrap().write_all(b"go\n").unwrap();
    // a daemon-style double fork: the sleep's parents exit at once, the
    // sleep is reparented away from the flagged shell
    let mut line = String::new();
    std::io::BufReader::new(sh.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let orphan: i32 = line.trim().parse().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !t.flags.lock().unwrap().contains_key(&orphan) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(t.is_set(orphan), "the double-forked sleep lost the flag");
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(orphan, libc::SIGKILL) };
    sh.kill().unwrap();
    sh.wait().unwrap();
    t.shutdown();
}

#[test]
fn a_full_filter_opens_and_no_child_is_missed() {
    // Room for 3 processes: the shell and two children; the third
    // fork finds the map full and opens the filter, so the forks of
    // the children the map could not hold still arrive.
    let t = CapTracker::start_with(Box::new(|| {}), 3).unwrap();
    let mut sh = std::process::Command::new("sh")
        .args([
            "-c",
            "read x; for i in 1 2 3 4 5 6; do sh -c 'sleep 30 & wait' & done; wait",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sh_pid = sh.id() as i32;
    t.set(sh_pid, true).unwrap();
    use std::io::Write;
    sh.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let grandchildren = || -> Vec<i32> {
        procfs_children(sh_pid)
            .into_iter()
            .flat_map(procfs_children)
            .collect()
    };
    let mut kids = grandchildren();
    while kids.len() < 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        kids = grandchildren();
    }
    assert_eq!(kids.len(), 6, "{kids:?}");
    // every fork event arrived: each child is in the table itself
    while kids
        .iter()
        .any(|k| !t.flags.lock().unwrap().contains_key(k))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for k in &kids {
        assert!(
            t.flags.lock().unwrap().contains_key(k),
            "grandchild {k} missed"
        );
    }
    assert!(!t.filtered(), "the full filter did not open");
    sh.kill().unwrap();
    sh.wait().unwrap();
    for k in kids {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(k, libc::SIGKILL) };
    }
    t.shutdown();
}

#[test]
fn holders_drop_a_reused_pid() {
    let t = CapTracker::start().unwrap();
    let mut c = std::process::Command::new("sleep")
        .arg("5")
        .spawn()
        .unwrap();
    let pid = c.id() as i32;
    t.set(pid, true).unwrap();
    assert!(t.holders().contains(&pid));
    // A flag given 10 s before this process started was another
    // process's: the PID was reused.
    t.flags
        .lock()
        .unwrap()
        .insert(pid, now_ns() - 10_000_000_000);
    assert!(!t.holders().contains(&pid));
    assert!(!t.flags.lock().unwrap().contains_key(&pid));
    c.kill().unwrap();
    c.wait().unwrap();
    t.shutdown();
}

/// The proc connector groups the tracker's socket belongs to, from
/// /proc/net/netlink (its row found by the socket's inode).
fn groups_of(t: &CapTracker) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(format!("/proc/self/fd/{}", t.sock.as_raw_fd()))
        .unwrap()
        .ino();
    let table = std::fs::read_to_string("/proc/net/netlink").unwrap();
    let row = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.get(9) == Some(&inode.to_string().as_str()))
        .expect("the tracker's socket in /proc/net/netlink");
    u32::from_str_radix(row[3], 16).unwrap()
}

#[test]
fn a_tracker_subscribes_at_its_first_flag_and_leaves_at_shutdown() {
    let t = CapTracker::start().unwrap();
    // Nothing flagged: not in the group, so no fork or exit of the
    // machine runs its filter.
    assert_eq!(groups_of(&t), 0);
    fork_storm(5);
    assert_eq!(t.events_received(), 0);
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    t.set(me, true).unwrap();
    assert_eq!(groups_of(&t), 1 << (CN_IDX_PROC - 1));
    t.shutdown();
    assert_eq!(groups_of(&t), 0);
}

/// The proc connector sends its events in the first network namespace
/// only: a tracker started in another one (krgd of a local cluster's node
/// in its own namespace, or in a container) must still see forks.
#[test]
fn a_tracker_started_in_another_network_namespace_sees_forks() {
    let t = std::thread::spawn(|| {
        // SAFETY: unshare(2) of this thread's network namespace only.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        CapTracker::start().unwrap()
    })
    .join()
    .unwrap();
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    t.set(me, true).unwrap();
    fork_storm(5);
    assert!(
        wait_events(&t, 5) >= 5,
        "{} events from another namespace",
        t.events_received()
    );
    t.set(me, false).unwrap();
    t.shutdown();
}
