//! Cluster-wide locks: fcntl byte ranges and flock taken through one node's
//! mount conflict with the same lock through another node's mount.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{run, wait_until, Cluster};

fn flock_struct(typ: i32, start: i64, len: i64) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

fn setlk(f: &File, typ: i32, start: i64, len: i64, wait: bool) -> Result<(), i32> {
    let fl = flock_struct(typ, start, len);
    let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    // SAFETY: fcntl on an open descriptor with a valid struct flock.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &fl) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

fn getlk(f: &File, typ: i32, start: i64, len: i64) -> libc::flock {
    let mut fl = flock_struct(typ, start, len);
    assert_eq!(
        // SAFETY: fcntl F_GETLK fills the struct flock we own.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) },
        0
    );
    fl
}

fn rw(p: &std::path::Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

#[test]
fn fcntl_byte_range_locks_conflict_across_nodes() {
    let c = Cluster::with_kdfs(2);
    fs::write(c.mnt(0).join("f"), vec![0u8; 100]).unwrap();
    let a = rw(&c.mnt(0).join("f"));
    let b = rw(&c.mnt(1).join("f"));
    setlk(&a, libc::F_WRLCK, 0, 10, false).unwrap();
    let e = setlk(&b, libc::F_WRLCK, 5, 1, false).unwrap_err();
    assert!(e == libc::EAGAIN || e == libc::EACCES, "errno {e}");
    // Ranges that do not overlap do not conflict; shared locks coexist.
    setlk(&b, libc::F_WRLCK, 10, 10, false).unwrap();
    setlk(&a, libc::F_RDLCK, 50, 10, false).unwrap();
    setlk(&b, libc::F_RDLCK, 55, 10, false).unwrap();
    assert!(setlk(&b, libc::F_WRLCK, 59, 1, false).is_err());
    // F_GETLK through node 2 names node 1's lock; its pid is not one of
    // this node's (0).
    let fl = getlk(&b, libc::F_WRLCK, 0, 100);
    assert_eq!(i32::from(fl.l_type), libc::F_WRLCK);
    assert_eq!((fl.l_start, fl.l_len, fl.l_pid), (0, 10, 0));
    let fl = getlk(&b, libc::F_RDLCK, 30, 10);
    assert_eq!(i32::from(fl.l_type), libc::F_UNLCK);

    // A blocking request waits until the holder unlocks.
    let t = std::thread::spawn(move || {
        let start = Instant::now();
        setlk(&b, libc::F_WRLCK, 0, 5, true).unwrap();
        (start.elapsed(), b)
    });
    std::thread::sleep(Duration::from_millis(700));
    assert!(!t.is_finished(), "F_SETLKW did not wait");
    setlk(&a, libc::F_UNLCK, 0, 10, false).unwrap();
    let (waited, b) = t.join().unwrap();
    assert!(waited >= Duration::from_millis(600), "{waited:?}");
    assert!(setlk(&a, libc::F_WRLCK, 0, 1, false).is_err());
    // Closing a descriptor drops the process's locks on the file (POSIX).
    drop(b);
    setlk(&a, libc::F_WRLCK, 0, 100, false).unwrap();
}

/// `flock` (util-linux) on `p`, in its own process group.
fn flock_cmd(p: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("flock");
    cmd.args(args).arg(p);
    cmd.process_group(0);
    cmd
}

#[test]
fn flock_conflicts_across_nodes_and_dies_with_its_holder() {
    let c = Cluster::with_kdfs(2);
    fs::write(c.mnt(1).join("g"), b"").unwrap();
    let (pa, pb) = (c.mnt(0).join("g"), c.mnt(1).join("g"));
    let mut holder = flock_cmd(&pa, &["-x"])
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    let try_b = || {
        run(flock_cmd(&pb, &["-n", "-x"]).arg("true"))
            .status
            .success()
    };
    wait_until("node 1 holds the lock", Duration::from_secs(10), || {
        !try_b()
    });
    // Still refused a moment later: the lock is held, not just racing.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!try_b());
    // Shared flocks coexist across nodes; one is refused while node 1 holds
    // the exclusive one.
    assert!(!run(flock_cmd(&pb, &["-n", "-s"]).arg("true"))
        .status
        .success());

    // A blocked waiter can be killed (it does not hang until the lock comes).
    let mut doomed = flock_cmd(&pb, &["-x"]).arg("true").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(doomed.try_wait().unwrap().is_none(), "flock did not wait");
    let t = Instant::now();
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(!try_b());

    // A blocking flock on node 2 waits until node 1's holder is killed.
    let mut waiter = flock_cmd(&pb, &["-x"]).arg("true").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(waiter.try_wait().unwrap().is_none(), "flock did not wait");
    // SAFETY: kill(2) of the holder's own process group (flock and sleep).
    unsafe { libc::kill(-(holder.id() as i32), libc::SIGKILL) };
    holder.wait().unwrap();
    let t = Instant::now();
    let st = waiter.wait().unwrap();
    assert!(st.success() && t.elapsed() < Duration::from_secs(5));
    assert!(try_b());

    // Shared locks coexist across nodes.
    let mut shared = flock_cmd(&pa, &["-s"])
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    wait_until("node 1's shared lock", Duration::from_secs(10), || !try_b());
    assert!(run(flock_cmd(&pb, &["-n", "-s"]).arg("true"))
        .status
        .success());
    // SAFETY: as above.
    unsafe { libc::kill(-(shared.id() as i32), libc::SIGKILL) };
    shared.wait().unwrap();
}

/// `sqlite3 DB` running `n` transactions, each inserting one row tagged `who`.
fn sqlite_writer(db: &std::path::Path, who: &str, n: usize) -> std::process::Child {
    let mut script = String::from(".timeout 30000\n");
    for i in 0..n {
        script.push_str(&format!(
            "BEGIN IMMEDIATE; INSERT INTO t VALUES ({i}, '{who}'); COMMIT;\n"
        ));
    }
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || stdin.write_all(script.as_bytes()));
    child
}

#[test]
fn two_sqlite_writers_on_two_nodes_lose_no_transaction() {
    let c = Cluster::with_kdfs(2);
    let (da, db) = (c.mnt(0).join("t.db"), c.mnt(1).join("t.db"));
    let out = run(Command::new("sqlite3")
        .arg(&da)
        .arg("CREATE TABLE t(n INTEGER, who TEXT);"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    const N: usize = 150;
    let a = sqlite_writer(&da, "a", N);
    let b = sqlite_writer(&db, "b", N);
    for (who, w) in [("a", a), ("b", b)] {
        let out = w.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "writer {who}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for d in [&da, &db] {
        let out = run(Command::new("sqlite3").arg(d).arg(
            "PRAGMA integrity_check; SELECT who, count(*), count(DISTINCT n) FROM t GROUP BY who;",
        ));
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text,
            format!("ok\na|{N}|{N}\nb|{N}|{N}\n"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_locks_of_a_mount_that_dies_are_released_after_its_lease() {
    let c = Cluster::with_kdfs(2);
    fs::write(c.mnt(1).join("h"), b"").unwrap();
    // Node 1's mount in the foreground, so that its pid is ours to kill.
    c.umount(0);
    let mut client = Command::new(common::mount_bin())
        .arg(&c.nodes[0].store)
        .arg(c.mnt(0))
        .arg("-o")
        .arg(format!("{},foreground", c.mount_opts(0)))
        .spawn()
        .unwrap();
    let mnt = c.mnt(0).to_path_buf();
    wait_until("foreground mount", Duration::from_secs(20), || {
        common::is_mounted(&mnt) && mnt.join("h").exists()
    });
    let pb = c.mnt(1).join("h");
    let try_b = || {
        run(flock_cmd(&pb, &["-n", "-x"]).arg("true"))
            .status
            .success()
    };
    let mut holder = flock_cmd(&mnt.join("h"), &["-x"])
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    wait_until("node 1 holds the lock", Duration::from_secs(10), || {
        !try_b()
    });
    client.kill().unwrap();
    client.wait().unwrap();
    let t = Instant::now();
    assert!(!try_b(), "released before the lease ran out");
    wait_until(
        "the dead mount's lock released",
        Duration::from_secs(20),
        try_b,
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    // SAFETY: kill(2) of the holder's own process group.
    unsafe { libc::kill(-(holder.id() as i32), libc::SIGKILL) };
    let _ = holder.wait();
    let _ = run(Command::new("umount").arg("-l").arg(&mnt));
}

/// A krgd restarted (kill -9, then started again) forgot the locks on
/// its files, so another node took a lock someone still held. Now the
/// holder's mount sees the manager's new epoch at its next lease and
/// takes its locks again, and the restarted manager, whose marker file
/// says locks were held, lets only such reclaims take locks for its grace
/// period: the lock held through the restart still keeps node 2 out,
/// during the grace and after it, until its holder lets it go.
#[test]
fn locks_held_through_a_restart_of_the_owners_krgd_are_kept() {
    let mut c = Cluster::with_kdfs(2);
    fs::write(c.mnt(0).join("f"), vec![0u8; 100]).unwrap();
    let a = rw(&c.mnt(0).join("f"));
    setlk(&a, libc::F_WRLCK, 0, 10, false).unwrap();
    let b = rw(&c.mnt(1).join("f"));
    assert!(setlk(&b, libc::F_WRLCK, 0, 1, false).is_err());
    c.kill_krgd(0);
    c.start_krgd(0);
    let restarted = Instant::now();
    // node 2's descriptor died with the handles of node 1's krgd: a new one
    drop(b);
    let mut b = None;
    wait_until(
        "node 1 to serve the file again",
        Duration::from_secs(30),
        || {
            b = OpenOptions::new()
                .read(true)
                .write(true)
                .open(c.mnt(1).join("f"))
                .ok();
            b.is_some()
        },
    );
    let b = b.unwrap();
    // node 1's mount takes its lock again at its next lease (every 3 s)
    wait_until("the lock to be reclaimed", Duration::from_secs(30), || {
        i32::from(getlk(&b, libc::F_WRLCK, 0, 100).l_type) == libc::F_WRLCK
    });
    let e = setlk(&b, libc::F_WRLCK, 0, 1, false).unwrap_err();
    assert!(e == libc::EAGAIN || e == libc::EACCES, "errno {e}");
    // past the grace period: still the holder's
    let grace = kdfs::lockmgr::GRACE + Duration::from_secs(1);
    std::thread::sleep(grace.saturating_sub(restarted.elapsed()));
    let e = setlk(&b, libc::F_WRLCK, 0, 1, false).unwrap_err();
    assert!(e == libc::EAGAIN || e == libc::EACCES, "errno {e}");
    setlk(&b, libc::F_WRLCK, 20, 10, false).unwrap();
    setlk(&a, libc::F_UNLCK, 0, 10, false).unwrap();
    setlk(&b, libc::F_WRLCK, 0, 10, false).unwrap();
}

/// F_GETLK through `f`, or the errno when the request fails.
fn try_getlk(f: &File, typ: i32, start: i64, len: i64) -> Result<libc::flock, i32> {
    let mut fl = flock_struct(typ, start, len);
    // SAFETY: fcntl F_GETLK fills the struct flock we own.
    match unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) } {
        0 => Ok(fl),
        _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap()),
    }
}

/// Whether F_GETLK through `f` reports a write lock on `start..start+len`.
fn reports_write_lock(f: &File, start: i64, len: i64) -> bool {
    try_getlk(f, libc::F_WRLCK, start, len)
        .is_ok_and(|fl| i32::from(fl.l_type) == libc::F_WRLCK && fl.l_start == start)
}

/// `--replicas 2`: while a node is down (its krgd frozen), the locks of
/// its files are kept by its mirror (their holders take them again there,
/// within the failover), new ones are taken there without EIO; when the
/// node, thawed, takes its store back, the locks come back with it — not
/// the stale ones it held when it froze.
#[test]
fn the_locks_of_a_failed_node_s_files_go_on_at_its_mirror() {
    let c = Cluster::with_kdfs_formatted(3, &["--replicas", "2"]);
    // Node 2's file, mirrored on node 3.
    fs::write(c.mnt(1).join("f"), vec![0u8; 100]).unwrap();
    c.wait_mirrored(1);
    let a = rw(&c.mnt(0).join("f"));
    setlk(&a, libc::F_WRLCK, 0, 10, false).unwrap();
    let b = rw(&c.mnt(2).join("f"));
    assert!(setlk(&b, libc::F_WRLCK, 0, 1, false).is_err());

    let pid = c.krgd_pid(1).unwrap() as i32;
    let signal = |sig| {
        // SAFETY: kill(2) of the krgd this test started, by its PID.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    };
    signal(libc::SIGSTOP);
    let killed = Instant::now();
    wait_until(
        "node 1's lock taken again at node 3",
        Duration::from_secs(15),
        || reports_write_lock(&b, 0, 10),
    );
    eprintln!("lock at the mirror {:?} after the stop", killed.elapsed());
    // Past the mirror's grace: still node 1's; other ranges are free.
    let grace = Duration::from_secs(2) + kdfs::lockmgr::MOVE_GRACE;
    std::thread::sleep(grace.saturating_sub(killed.elapsed()));
    let e = setlk(&b, libc::F_WRLCK, 0, 1, false).unwrap_err();
    assert!(e == libc::EAGAIN || e == libc::EACCES, "errno {e}");
    setlk(&b, libc::F_WRLCK, 20, 10, false).unwrap();
    // A waiter through node 3 gets the lock when node 1 lets it go.
    let waiter = std::thread::spawn(move || setlk(&b, libc::F_WRLCK, 0, 5, true).map(|()| b));
    std::thread::sleep(Duration::from_millis(700));
    assert!(!waiter.is_finished(), "F_SETLKW did not wait");
    setlk(&a, libc::F_UNLCK, 0, 10, false).unwrap();
    let b = waiter.join().unwrap().unwrap();

    // Node 2 back: it takes its store back, and node 3's locks with it
    // (it forgets node 1's, which went meanwhile).
    signal(libc::SIGCONT);
    wait_until("node 2 serving again", Duration::from_secs(30), || {
        let log = fs::read_to_string(c.nodes[1].data.join("krgd.log")).unwrap_or_default();
        log.contains("took the store back")
    });
    let back = Instant::now();
    wait_until(
        "node 3's locks taken again at node 2",
        Duration::from_secs(15),
        || reports_write_lock(&a, 0, 5) && reports_write_lock(&a, 20, 10),
    );
    std::thread::sleep(grace.saturating_sub(back.elapsed()));
    let e = setlk(&a, libc::F_WRLCK, 0, 1, false).unwrap_err();
    assert!(e == libc::EAGAIN || e == libc::EACCES, "errno {e}");
    setlk(&a, libc::F_WRLCK, 50, 10, false).unwrap();
    drop(b);
    setlk(&a, libc::F_WRLCK, 0, 10, false).unwrap();
}
