//! Process trees: same PIDs, same parent/child relations, pipes and files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs::File;
use std::process::{Command, Stdio};

use common::*;

fn ppid(pid: i32) -> i32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rsplit_once(") ")
        .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Field `n` (1-based, proc(5)) of /proc/PID/stat.
fn stat_field(pid: i32, n: usize) -> i32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rsplit_once(") ")
        .and_then(|(_, r)| r.split_whitespace().nth(n - 3)?.parse().ok())
        .unwrap_or(0)
}

fn log_last(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .last()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
}

#[test]
fn three_process_tree_with_pipes_and_files() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "tree");
    let out = tmp.path().join("out.txt");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.arg(tmp.path())
        .stdout(File::create(&out).unwrap())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let root = guard.add(spawn(cmd).id() as i32);
    wait_until("tokens circulate", || last_count(&out) >= 5);
    let child = guard.add(children(root)[0]);
    let grandchild = guard.add(children(child)[0]);

    let o = checkpoint_out(&store, root, &["--kill"]);
    ok(&o, "checkpoint");
    assert!(String::from_utf8_lossy(&o.stdout).contains("3 task(s)"));
    // --kill: the tree is gone once saved
    kill_reap(root);
    // the orphans were adopted by this test (subreaper): reap them
    wait_until("tree gone", || !alive(child) && !alive(grandchild));
    kill_reap(child);
    kill_reap(grandchild);
    let at_kill = last_count(&out);
    let child_log = log_last(&tmp.path().join("child.log"));

    ok(&restart_out(&store, root, 1), "restart");
    assert!(alive(root) && alive(child) && alive(grandchild));
    assert_eq!(ppid(child), root, "child's parent restored");
    assert_eq!(ppid(grandchild), child, "grandchild's parent restored");
    // the root was started with setsid: session and group come back too
    for p in [root, child, grandchild] {
        assert_eq!(stat_field(p, 5), root, "process group of {p}");
        assert_eq!(stat_field(p, 6), root, "session of {p}");
    }
    // The tokens go around the restored pipes again (each hop checks its
    // parent), the counter goes on without gap or reset, files keep offsets.
    wait_until("restored tree runs", || last_count(&out) >= at_kill + 10);
    wait_until("child log grows", || {
        log_last(&tmp.path().join("child.log")) > child_log
    });
    for p in [grandchild, child, root] {
        kill_reap(p);
    }
}

fn shared_memory_case(sysv: bool) {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "shmtree");
    let out = tmp.path().join("out.txt");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    if sysv {
        cmd.arg("sysv");
    }
    cmd.stdout(File::create(&out).unwrap())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let root = guard.add(spawn(cmd).id() as i32);
    wait_until("shared counter runs", || last_count(&out) >= 3);
    let child = guard.add(children(root)[0]);
    ok(&checkpoint_out(&store, root, &["--kill"]), "checkpoint");
    kill_reap(root);
    wait_until("child gone", || !alive(child));
    kill_reap(child);
    let at_kill = last_count(&out);
    ok(&restart_out(&store, root, 1), "restart");
    assert_eq!(ppid(child), root);
    // the parent sees the restored child's writes: one object, mapped by both
    wait_until("restored pair shares memory", || {
        last_count(&out) >= at_kill + 5
    });
    for p in [child, root] {
        kill_reap(p);
    }
}

#[test]
fn shared_anonymous_memory_stays_shared() {
    shared_memory_case(false);
}

/// SysV shm in the host's IPC namespace (CRIU refuses this): same shmid,
/// same contents, attached by both processes, still marked for removal.
#[test]
fn sysv_shared_memory_in_host_ipc_namespace() {
    shared_memory_case(true);
}

/// SysV semaphores and message queues named on the command line, removed
/// between checkpoint and restart (as by a reboot) and recreated with their
/// ids, values and queued messages.
#[test]
fn sysv_semaphores_and_message_queues() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "sysvipc");
    let out = tmp.path().join("out.txt");
    let ids = tmp.path().join("ids");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.arg(&ids)
        .stdout(File::create(&out).unwrap())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let pid = guard.add(spawn(cmd).id() as i32);
    wait_until("ipc steps", || last_count(&out) >= 3);
    let v: Vec<i32> = std::fs::read_to_string(&ids)
        .unwrap()
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    let (sem, msq) = (v[0], v[1]);
    ok(
        &checkpoint_out(
            &store,
            pid,
            &[
                "--kill",
                "--sysv-sem",
                &sem.to_string(),
                "--sysv-msg",
                &msq.to_string(),
            ],
        ),
        "checkpoint",
    );
    kill_reap(pid);
    // SAFETY: removing the test's own IPC objects.
    unsafe {
        libc::semctl(sem, 0, libc::IPC_RMID);
        libc::msgctl(msq, libc::IPC_RMID, std::ptr::null_mut());
    }
    let at_kill = last_count(&out);
    ok(&restart_out(&store, pid, 1), "restart");
    wait_until("restored ipc steps", || last_count(&out) >= at_kill + 5);
    kill_reap(pid);
    // SAFETY: cleanup of the recreated objects.
    unsafe {
        libc::semctl(sem, 0, libc::IPC_RMID);
        libc::msgctl(msq, libc::IPC_RMID, std::ptr::null_mut());
    }
}

/// Bytes still buffered in a pipe (here ~190 KB, more than the default pipe
/// size) are saved without being consumed and are there again after restart.
#[test]
fn buffered_pipe_data_survives() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "pipebuf");
    let out = tmp.path().join("out.txt");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.stdout(File::create(&out).unwrap())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let root = guard.add(spawn(cmd).id() as i32);
    wait_until("reader runs", || last_count(&out) >= 5);
    let child = guard.add(children(root)[0]);
    ok(&checkpoint_out(&store, root, &["--kill"]), "checkpoint");
    let insp = run(Command::new(bin("checkpoint"))
        .arg("inspect")
        .arg(store.join(root.to_string()))
        .arg("1"));
    let text = String::from_utf8_lossy(&insp.stdout).into_owned();
    let buffered: u64 = text
        .lines()
        .find_map(|l| l.split("with ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(buffered > 65536, "pipe data saved: {text}");
    kill_reap(root);
    wait_until("child gone", || !alive(child));
    kill_reap(child);
    let at_kill = last_count(&out);
    ok(&restart_out(&store, root, 1), "restart");
    wait_until("reader continues on the same bytes", || {
        last_count(&out) >= at_kill + 20
    });
    for p in [child, root] {
        kill_reap(p);
    }
}

/// Pages 24-255 shared since the fork stay one physical page each for the
/// restored parent and child, the pages either rewrote stay private (eager
/// restart of an incremental SN, then --lazy of a full one), and a write of
/// the restored child is not seen by the parent.
#[test]
fn copy_on_write_sharing_after_fork_is_restored() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exe = build_c(dir, "cowtree");
    let store = dir.join("store");
    let mut cmd = Command::new(&exe);
    cmd.arg(dir).stdout(Stdio::null()).stderr(Stdio::null());
    let root = guard.add(spawn(cmd).id() as i32);
    wait_until("forked", || children(root).len() == 1);
    let child = guard.add(children(root)[0]);
    wait_until("both ready", || {
        [root, child]
            .iter()
            .all(|p| dir.join(format!("ready.{p}")).exists())
    });
    let addr: u64 = std::fs::read_to_string(dir.join("addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let parent_wrote = std::cell::Cell::new(false);
    let shared_as_before = |what: &str| {
        let (p, c) = (frames(root, addr, 256), frames(child, addr, 256));
        for i in 0..256 {
            assert_ne!(p[i], 0, "{what}: parent's page {i} in memory");
            if i < 24 || (parent_wrote.get() && (32..40).contains(&i)) {
                assert_ne!(p[i], c[i], "{what}: page {i} private to each");
            } else {
                assert_eq!(p[i], c[i], "{what}: page {i} shared");
            }
        }
        assert_eq!(cow_check(dir, root), "ok", "{what}: parent's pages");
        assert_eq!(cow_check(dir, child), "ok", "{what}: child's pages");
    };
    shared_as_before("before checkpoint");
    // SN 1 while running, SN 2 (incremental) ends the tree
    ok(&checkpoint_out(&store, root, &[]), "checkpoint");
    // reading the pages did not give either a private copy
    shared_as_before("after SN 1");
    // the parent rewrites pages 32-39 between the SNs: shared in SN 1,
    // the child's own old pages in SN 2
    // SAFETY: signalling a test process.
    unsafe { libc::kill(root, libc::SIGUSR2) };
    wait_until("parent wrote", || {
        let (p, c) = (frames(root, addr, 40), frames(child, addr, 40));
        (32..40).all(|i| p[i] != c[i])
    });
    parent_wrote.set(true);
    let o = checkpoint_out(&store, root, &["--kill"]);
    ok(&o, "checkpoint --kill");
    let sn = saved_sn(&o);
    let desc = std::fs::read_to_string(
        store
            .join(root.to_string())
            .join(format!("description_v{sn}.txt")),
    )
    .unwrap();
    // pages 40-255 of the area, and whatever else neither wrote since
    let shared: u64 = desc
        .split(" page(s) shared with the parent process")
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(shared >= 216, "{desc}");
    // SN 2 is cheap for the child too: its shared pages are not copied
    // again, only the 8 its parent rewrote since (and what else changed)
    let saved: u64 = desc
        .lines()
        .find(|l| l.starts_with(&format!("task_mm_{child}_v{sn}.bin")))
        .and_then(|l| l.split(" saved page(s)").next())
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    assert!((8..64).contains(&saved), "{desc}");
    kill_reap(root);
    wait_until("tree gone", || !alive(child));
    kill_reap(child);
    ok(&restart_out(&store, root, sn), "restart");
    shared_as_before("restarted");
    // the child's writes are its own
    // SAFETY: signalling a test process.
    unsafe { libc::kill(child, libc::SIGUSR2) };
    wait_until("child wrote", || {
        let (p, c) = (frames(root, addr, 32), frames(child, addr, 32));
        (24..32).all(|i| p[i] != c[i])
    });
    assert_eq!(cow_check(dir, child), "ok", "child's own writes");
    assert_eq!(cow_check(dir, root), "ok", "parent unaffected");
    // again, restored lazily
    let o = checkpoint_out(&store, root, &["--kill", "--full"]);
    ok(&o, "checkpoint --kill --full");
    let sn = saved_sn(&o);
    kill_reap(root);
    wait_until("tree gone", || !alive(child));
    kill_reap(child);
    let o = restart_into(&store, root, sn, &["--lazy"], &dir.join("lazy.out"));
    ok(&o, "restart --lazy");
    let (p, c) = (frames(root, addr, 256), frames(child, addr, 256));
    for i in 40..256 {
        assert!(
            p[i] != 0 && p[i] == c[i],
            "lazily restored: page {i} shared"
        );
    }
    assert_eq!(cow_check(dir, root), "ok", "lazy: parent's pages");
    assert_eq!(cow_check(dir, child), "ok", "lazy: child's pages");
    for p in [child, root] {
        kill_reap(p);
    }
}

/// What `fdshare` child `pid` sees at fd 77.
fn seen(dir: &std::path::Path, pid: i32) -> String {
    ask_usr1(dir, pid, "seen")
}

/// A child cloned with CLONE_FILES shares its parent's fd table again
/// after restart (an fd the parent opens then is the child's too), and a
/// forked sibling keeps a table of its own.
#[test]
fn fd_table_shared_with_the_parent_is_shared_again() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exe = build_c(dir, "fdshare");
    std::fs::write(dir.join("probe"), "probe").unwrap();
    let store = dir.join("store");
    let mut cmd = Command::new(&exe);
    cmd.arg(dir).stdout(Stdio::null()).stderr(Stdio::null());
    let root = guard.add(spawn(cmd).id() as i32);
    wait_until("children started", || dir.join("pids").exists());
    let pids: Vec<i32> = std::fs::read_to_string(dir.join("pids"))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let (a, b) = (guard.add(pids[0]), guard.add(pids[1]));
    assert_eq!(seen(dir, a), "closed");
    ok(&checkpoint_out(&store, root, &["--kill"]), "checkpoint");
    for p in [root, a, b] {
        kill_reap(p);
    }
    ok(&restart_out(&store, root, 1), "restart");
    assert_eq!(ppid(a), root);
    // SAFETY: signalling a test process.
    unsafe { libc::kill(root, libc::SIGUSR2) };
    wait_until("the parent opened fd 77", || {
        std::fs::read_link(format!("/proc/{root}/fd/77")).is_ok()
    });
    assert_eq!(seen(dir, a), "open:probe", "the shared table");
    assert_eq!(seen(dir, b), "closed", "the forked child's own table");
    for p in [a, b, root] {
        kill_reap(p);
    }
}

/// Pidfds come back naming the same tasks: the process's own, its child's
/// (a signal through it ends the child, `waitid(P_PIDFD)` through it gets
/// its exit status) and its thread's (PIDFD_THREAD, non-blocking: a signal
/// through it reaches that thread). A forged pidfd of a process outside
/// the image is refused before anything starts.
#[test]
fn pidfds_name_the_same_tasks_after_restart() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exe = build_c(dir, "pidfds");
    let store = dir.join("store");
    let mut cmd = Command::new(&exe);
    cmd.arg(dir).stdout(Stdio::null()).stderr(Stdio::null());
    let root = guard.add(spawn(cmd).id() as i32);
    wait_until("pidfds made", || dir.join("ready").exists());
    let kids = children(root);
    assert_eq!(kids.len(), 1);
    guard.add(kids[0]);
    let o = checkpoint_out(&store, root, &["--kill"]);
    ok(&o, "checkpoint");
    // the parent first: its child, left to this subreaper, is reaped next
    for p in [root, kids[0]] {
        kill_reap(p);
    }
    // a forged pidfd of a process outside the image (init): refused
    use checkpoint::image::{self, FdImage, FdKind, FileKind, TaskImage};
    let task = store
        .join(root.to_string())
        .join(format!("task_{root}_v1.bin"));
    let genuine = std::fs::read(&task).unwrap();
    let mut t: TaskImage = image::read_file(&task, FileKind::Task).unwrap().meta;
    t.fds.push(FdImage {
        fd: 60,
        flags: 0,
        kind: FdKind::Pidfd { pid: 1 },
    });
    std::fs::write(&task, image::encode(FileKind::Task, &t).unwrap()).unwrap();
    let o = restart_out(&store, root, 1);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("a pidfd of 1"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!alive(root));
    std::fs::write(&task, genuine).unwrap();
    ok(&restart_out(&store, root, 1), "restart");
    assert_eq!(ask_usr1(dir, root, "check"), "ok");
    kill_reap(root);
}
