//! What real programs hold beyond files, pipes and sockets, saved and
//! restored: file locks (flock, POSIX, OFD; leases refused), FIFOs,
//! deleted-but-open files, inotify watches, POSIX message queues, pipes
//! on fds above 2 leading outside the tree (restart's stdout, or
//! `--inherit-fd`), a shell pipeline on a terminal, a sqlite3 writer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
#![allow(clippy::zombie_processes)] // children are reaped by kill_reap

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// Start `exe args` with stdout and stderr into `out`.
fn start(exe: &Path, args: &[&str], out: &Path, guard: &Guard) -> i32 {
    let f = File::create(out).unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .stdin(Stdio::null());
    guard.add(spawn(cmd).id() as i32)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// (flock free, POSIX range free, OFD range free) for another process:
/// this test's own opens, closed again at once.
fn locks_free(dir: &Path) -> (bool, bool, bool) {
    let open = |n: &str| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(n))
            .unwrap()
    };
    let a = open("flock");
    // SAFETY: flock on our own fd.
    let flock_free = unsafe { libc::flock(a.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    let setlk = |f: &File, cmd: i32, start: i64, len: i64| {
        // SAFETY: a zeroed struct flock is valid; fcntl reads it.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_start = start;
        fl.l_len = len;
        // SAFETY: fcntl with a struct flock of ours.
        unsafe { libc::fcntl(f.as_raw_fd(), cmd, &fl) == 0 }
    };
    let b = open("posix");
    let posix_free = setlk(&b, libc::F_SETLK, 50, 10);
    let c = open("ofd");
    let ofd_free = setlk(&c, libc::F_OFD_SETLK, 1000, 10);
    (flock_free, posix_free, ofd_free)
}

/// A flock, a POSIX lock and an OFD lock held by the job are held again
/// after restart: another process's non-blocking attempts fail, as they
/// did before the checkpoint (and succeed while the job is down).
#[test]
fn file_locks_are_held_again_after_restart() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "locks");
    let dir = tmp.path().join("files");
    std::fs::create_dir(&dir).unwrap();
    let out = tmp.path().join("out.txt");
    let pid = start(&exe, &[dir.to_str().unwrap()], &out, &guard);
    wait_until("locks taken", || last_count(&out) >= 3);
    assert_eq!(locks_free(&dir), (false, false, false), "held before");
    let store = tmp.path().join("store");
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    assert_eq!(locks_free(&dir), (true, true, true), "free while down");
    let at = last_count(&out);
    ok(&restart_out(&store, pid, 1), "restart");
    wait_until("restored job runs", || last_count(&out) >= at + 3);
    assert_eq!(
        locks_free(&dir),
        (false, false, false),
        "held after restart"
    );
    // and once more, from the restored job
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint SN 2");
    kill_reap(pid);
    assert_eq!(locks_free(&dir), (true, true, true), "free while down");
    ok(&restart_out(&store, pid, 2), "restart SN 2");
    assert_eq!(locks_free(&dir), (false, false, false), "held after SN 2");
    kill_reap(pid);
}

/// The leases /proc/locks shows for the files `dir`/`names` (by inode):
/// "READ", "WRITE", or "" when none.
fn leases(dir: &Path, names: &[&str]) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let locks = std::fs::read_to_string("/proc/locks").unwrap();
    names
        .iter()
        .map(|n| {
            let ino = std::fs::metadata(dir.join(n)).unwrap().ino();
            locks
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|w| {
                    w.get(1) == Some(&"LEASE")
                        && w.get(5).is_some_and(|d| d.ends_with(&format!(":{ino}")))
                })
                .map(|w| w[3].to_string())
                .unwrap_or_default()
        })
        .collect()
}

/// A read lease and a write lease held by the job are held again after
/// restart (the job's own F_GETLEASE sees them, and /proc/locks), not
/// while it is down; a lease on a file that has changed owner meanwhile
/// is not taken again (restart fails, naming it).
#[test]
fn file_leases_are_held_again_after_restart() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exe = build_c(dir, "locks");
    let out = dir.join("out.txt");
    let pid = start(&exe, &[dir.to_str().unwrap(), "lease"], &out, &guard);
    wait_until("leases taken", || last_count(&out) >= 2);
    let names = ["lease", "wlease"];
    assert_eq!(leases(dir, &names), ["READ", "WRITE"]);
    let store = dir.join("store");
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    assert_eq!(leases(dir, &names), ["", ""], "none while down");
    let at = last_count(&out);
    ok(&restart_out(&store, pid, 1), "restart");
    wait_until("restored job runs", || last_count(&out) >= at + 3);
    assert_eq!(leases(dir, &names), ["READ", "WRITE"], "held again");
    // a user's job whose leased file is root's now: not taken again
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint SN 2");
    kill_reap(pid);
    let task = store
        .join(pid.to_string())
        .join(format!("task_{pid}_v2.bin"));
    let mut t: checkpoint::image::TaskImage =
        checkpoint::image::read_file(&task, checkpoint::image::FileKind::Task)
            .unwrap()
            .meta;
    t.uids = [65534; 4];
    t.gids = [65534; 4];
    t.groups.clear();
    std::fs::write(
        &task,
        checkpoint::image::encode(checkpoint::image::FileKind::Task, &t).unwrap(),
    )
    .unwrap();
    // nobody may open the files, but not lease them
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    mode(dir, 0o755);
    for n in names.iter().chain(&["out.txt"]) {
        mode(&dir.join(n), 0o666);
    }
    let o = restart_out(&store, pid, 2);
    assert!(
        !o.status.success(),
        "a lease on root's file was taken for uid 65534"
    );
    let e = stderr(&o);
    assert!(e.contains("lease") && e.contains("uid 0"), "{e}");
    assert!(!alive(pid), "nothing left running");
    assert_eq!(leases(dir, &names), ["", ""]);
}

/// A FIFO that always holds one unread token (read through a second fd)
/// and a deleted file read 4 bytes at a time: after restart the token is
/// there (the FIFO, removed meanwhile, is made again with its mode), the
/// file has its content, offset, size and no name; and again from SN 2
/// of the restored job.
#[test]
fn fifo_and_deleted_file_come_back() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "held");
    let fifo = tmp.path().join("fifo");
    let out = tmp.path().join("out.txt");
    let args = [fifo.to_str().unwrap(), tmp.path().to_str().unwrap()];
    let pid = start(&exe, &args, &out, &guard);
    wait_until("job runs", || last_count(&out) >= 3);
    let store = tmp.path().join("store");
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    std::fs::remove_file(&fifo).unwrap();
    let at = last_count(&out);
    ok(&restart_out(&store, pid, 1), "restart");
    wait_until("restored job runs", || last_count(&out) >= at + 5);
    let m = std::fs::metadata(&fifo).unwrap();
    assert!(m.file_type().is_fifo());
    assert_eq!(m.mode() & 0o777, 0o640);
    let link = std::fs::read_link(format!("/proc/{pid}/fd/5")).unwrap();
    assert!(link.to_string_lossy().ends_with("(deleted)"), "{link:?}");
    // again from the restored job (its deleted file is now an O_TMPFILE
    // one), the FIFO left in place this time
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint SN 2");
    kill_reap(pid);
    let at = last_count(&out);
    ok(&restart_out(&store, pid, 2), "restart SN 2");
    wait_until("job runs from SN 2", || last_count(&out) >= at + 5);
    kill_reap(pid);
}

/// Mappings of deleted files come back: one shared with an fd still open
/// on the file (writes through the one are read through the other), a
/// private one with a rewritten page and a page of the file, one whose
/// fd was closed; twice, the second time from the restored job's own
/// unnamed files.
#[test]
fn mappings_of_deleted_files_come_back() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "unlinkmap");
    let out = tmp.path().join("out.txt");
    let pid = start(&exe, &[tmp.path().to_str().unwrap()], &out, &guard);
    wait_until("job runs", || last_count(&out) >= 3);
    let store = tmp.path().join("store");
    for sn in [1, 2] {
        ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
        kill_reap(pid);
        let at = last_count(&out);
        ok(&restart_out(&store, pid, sn), "restart");
        // counter_lines fails on "BAD"
        wait_until("restored job runs", || last_count(&out) >= at + 5);
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert_eq!(maps.matches("(deleted)").count(), 3, "{maps}");
    }
    kill_reap(pid);
}

/// Eighty mapped files (more than restart keeps open at once while it maps
/// them): every mapping comes back with its pages and protection, and no
/// descriptor restart opened for them is left in the process.
#[test]
fn many_mapped_files_come_back_and_leave_no_descriptor() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "manymaps");
    let files = tmp.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let out = tmp.path().join("out.txt");
    let pid = start(&exe, &[files.to_str().unwrap()], &out, &guard);
    wait_until("job runs", || last_count(&out) >= 3);
    let fds = |pid: i32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let mapped = |pid: i32| {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let mut m: Vec<String> = maps
            .lines()
            .filter(|l| l.contains(files.to_str().unwrap()))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                format!("{} {} {}", f[0], f[1], f[5])
            })
            .collect();
        m.sort();
        m
    };
    let (fds_before, maps_before) = (fds(pid), mapped(pid));
    assert_eq!(maps_before.len(), 170, "{maps_before:?}");
    let store = tmp.path().join("store");
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    let at = last_count(&out);
    ok(&restart_out(&store, pid, 1), "restart");
    // counter_lines fails on "BAD"
    wait_until("restored job runs", || last_count(&out) >= at + 3);
    assert_eq!(
        mapped(pid),
        maps_before,
        "the same mappings, same protection"
    );
    assert_eq!(fds(pid), fds_before, "no descriptor left by restart");
    kill_reap(pid);
}

/// inotify watches come back with their numbers (1 and 3, 2 was given
/// back) and masks: the job's own checks of each event's watch go on.
#[test]
fn inotify_watches_come_back_by_path() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "inotify");
    let dir = tmp.path().join("watched");
    std::fs::create_dir(&dir).unwrap();
    let out = tmp.path().join("out.txt");
    let pid = start(&exe, &[dir.to_str().unwrap()], &out, &guard);
    wait_until("job runs", || last_count(&out) >= 3);
    let store = tmp.path().join("store");
    // an event may be in flight at the freeze: refused, tried again
    let mut o = checkpoint_out(&store, pid, &["--kill"]);
    for _ in 0..10 {
        if o.status.success() || !stderr(&o).contains("events are waiting") {
            break;
        }
        o = checkpoint_out(&store, pid, &["--kill"]);
    }
    ok(&o, "checkpoint");
    kill_reap(pid);
    let at = last_count(&out);
    let sn = std::fs::read_dir(store.join(pid.to_string()))
        .unwrap()
        .filter_map(|e| {
            let n = e.ok()?.file_name().into_string().ok()?;
            n.strip_prefix("global_v")?
                .strip_suffix(".bin")?
                .parse()
                .ok()
        })
        .max()
        .unwrap();
    ok(&restart_out(&store, pid, sn), "restart");
    wait_until("restored job runs", || last_count(&out) >= at + 5);
    kill_reap(pid);
}

fn mq_exists(name: &str) -> Option<i64> {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: mq_open/mq_getattr/mq_close on a name and attr of ours.
    unsafe {
        let q = libc::mq_open(c.as_ptr(), libc::O_RDONLY);
        if q < 0 {
            return None;
        }
        let mut a: libc::mq_attr = std::mem::zeroed();
        libc::mq_getattr(q, &mut a);
        libc::mq_close(q);
        Some(a.mq_curmsgs)
    }
}

/// Two message queues, each always holding two messages of different
/// priorities: one still named, one removed while open. Both come back
/// (the named one is removed between kill and restart: made again, with
/// its mode) with their messages in order, the job's checks go on.
#[test]
fn message_queues_come_back_with_their_messages() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "mqueue");
    let name = format!("krg-test-{}", std::process::id());
    let out = tmp.path().join("out.txt");
    let pid = start(&exe, &[&name], &out, &guard);
    wait_until("job runs", || last_count(&out) >= 4);
    let store = tmp.path().join("store");
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    let slash = format!("/{name}");
    assert_eq!(
        mq_exists(&slash),
        Some(2),
        "messages put back at checkpoint"
    );
    let c = std::ffi::CString::new(slash.clone()).unwrap();
    // SAFETY: removes the queue by name.
    unsafe { libc::mq_unlink(c.as_ptr()) };
    let at = last_count(&out);
    ok(&restart_out(&store, pid, 1), "restart");
    wait_until("restored job runs", || last_count(&out) >= at + 5);
    assert!(mq_exists(&slash).is_some(), "named queue made again");
    assert_eq!(
        mq_exists(&format!("{slash}-gone")),
        None,
        "removed one stays removed"
    );
    kill_reap(pid);
    // SAFETY: removes the queue by name.
    unsafe { libc::mq_unlink(c.as_ptr()) };
}

/// A job writing to fd 5, a pipe to a process outside the tree (this
/// test): restarted, it writes on restart's stdout; with
/// `--inherit-fd 5:PATH`, into PATH.
#[test]
fn pipe_leading_outside_goes_to_stdout_or_inherit_fd() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let (rd, wr) = std::io::pipe().unwrap();
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import os,time\nn=0\nwhile True:\n n+=1\n os.write(5, b'%d ok\\n' % n)\n time.sleep(0.02)\n",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let w = wr.as_raw_fd();
    // SAFETY: dup2 (or fcntl) then close_range in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            // the pipe may already be fd 5 (tests run in parallel): dup2
            // onto itself would leave it close-on-exec
            if w == 5 {
                libc::fcntl(5, libc::F_SETFD, 0);
            } else {
                libc::dup2(w, 5);
            }
            libc::syscall(libc::SYS_close_range, 6u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let pid = guard.add(cmd.spawn().unwrap().id() as i32);
    drop(wr);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut rd = rd;
        let mut b = [0u8; 4096];
        while let Ok(n) = rd.read(&mut b) {
            if n == 0 {
                break;
            }
            s2.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&b[..n]));
        }
    });
    let text = || seen.lock().unwrap().clone();
    wait_until("job writes to fd 5", || last_of(&text()) >= 3);
    let store = tmp.path().join("store");
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    let at = last_of(&text());
    // restart's own stdout
    let log = tmp.path().join("stdout.txt");
    ok(&restart_into(&store, pid, 1, &[], &log), "restart");
    let from = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    wait_until("lines on restart's stdout", || {
        counter_lines(&from(&log)).len() >= 3
    });
    let first = counter_lines(&from(&log))[0];
    assert!(
        first > at && first <= at + 2,
        "resumed at {first}, saved at {at}"
    );
    kill_reap(pid);
    // --inherit-fd
    let file = tmp.path().join("fd5.txt");
    std::fs::write(&file, b"").unwrap();
    let arg = format!("5:{}", file.display());
    ok(
        &restart_into(&store, pid, 1, &["--inherit-fd", &arg], &log),
        "restart --inherit-fd",
    );
    wait_until("lines in the --inherit-fd file", || {
        counter_lines(&from(&file)).len() >= 3
    });
    assert!(from(&log).is_empty(), "nothing on stdout: {}", from(&log));
    kill_reap(pid);
    let o = restart_into(&store, pid, 1, &["--inherit-fd", "5:relative"], &log);
    assert!(!o.status.success());
    let o = restart_into(&store, pid, 1, &["--inherit-fd", "7:/dev/null"], &log);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("no task of the image has fd 7"),
        "{e}"
    );
    assert!(!alive(pid));
}

/// A fanotify group comes back with its marks (one on a file, one on a
/// mount with only an ignored mask): the same fdinfo, and an open of the
/// marked file brings an event.
#[test]
fn fanotify_marks_come_back() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exe = build_c(dir, "fanotify");
    let out = dir.join("out.txt");
    let pid = start(&exe, &[dir.to_str().unwrap()], &out, &guard);
    wait_until("group made", || dir.join("ready").exists());
    let store = dir.join("store");
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    ok(&restart_out(&store, pid, 1), "restart");
    assert_eq!(ask_usr1(dir, pid, "check"), "ok");
    kill_reap(pid);
}
