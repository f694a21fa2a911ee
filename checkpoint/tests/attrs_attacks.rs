//! A user against what restart, as root, grants a restored process:
//! credentials in every thread, capabilities, oom_score_adj, login uid,
//! priority. Jobs run as `nobody`; the attacker edits their own image.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use checkpoint::image::{self, FileKind, TaskImage};
use common::*;

const NOBODY: u32 = 65534;

fn nogroup() -> u32 {
    checkpoint::restore::ImageOwner::of_uid(NOBODY).unwrap().gid
}

fn workdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

fn nobody_cmd(exe: &Path, args: &[&str], out: &Path) -> Command {
    let mut cmd = root_cmd(exe, args, out);
    cmd.uid(NOBODY).gid(nogroup());
    cmd
}

/// The same command, left to change its identity itself.
fn root_cmd(exe: &Path, args: &[&str], out: &Path) -> Command {
    let stdout = File::create(out).unwrap();
    std::os::unix::fs::chown(out, Some(NOBODY), Some(nogroup())).unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .current_dir("/")
        .stdout(stdout)
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    cmd
}

fn status_of(pid: i32, tid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn tids(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn forge(path: &Path, f: impl FnOnce(&mut TaskImage)) {
    let mut meta: TaskImage = image::read_file(path, FileKind::Task).unwrap().meta;
    f(&mut meta);
    std::fs::write(path, image::encode(FileKind::Task, &meta).unwrap()).unwrap();
}

/// Threads are made while the task is still root's; each must end with
/// the job's credentials, not only the leader (a raw setresuid changes
/// one thread).
#[test]
fn every_thread_of_a_user_job_is_the_users() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = workdir();
    let exe = build_c(tmp.path(), "threads");
    let out = tmp.path().join("job.out");
    let pid = guard.add(spawn(nobody_cmd(&exe, &[], &out)).id() as i32);
    wait_until("threads run", || {
        last_count(&out) >= 2 && tids(pid).len() == 5
    });
    let store = tmp.path().join("store");
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    let log = tmp.path().join("restored.txt");
    ok(&restart_into(&store, pid, 1, &[], &log), "restart");
    let ids = tids(pid);
    assert_eq!(ids.len(), 5);
    for t in ids {
        let want = format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}");
        assert_eq!(status_of(pid, t, "Uid:"), want, "thread {t}");
        assert_eq!(
            status_of(pid, t, "CapEff:"),
            "0000000000000000",
            "thread {t}"
        );
        assert_eq!(
            status_of(pid, t, "CapPrm:"),
            "0000000000000000",
            "thread {t}"
        );
    }
    kill_reap(pid);
}

/// What a user cannot give themselves, written into their own image, is
/// refused before anything runs.
#[test]
fn forged_privileges_are_refused() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = workdir();
    let exe = build_c(tmp.path(), "bigmem");
    let out = tmp.path().join("job.out");
    let pid = guard.add(spawn(nobody_cmd(&exe, &["1"], &out)).id() as i32);
    wait_until("job runs", || alive(pid));
    let store = tmp.path().join("store");
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    let task = store
        .join(pid.to_string())
        .join(format!("task_{pid}_v1.bin"));
    assert_eq!(std::fs::metadata(&task).unwrap().uid(), NOBODY);
    let pristine = std::fs::read(&task).unwrap();
    type Edit = fn(&mut TaskImage);
    let attacks: [(Edit, &str); 9] = [
        (
            |t| t.attrs.caps.permitted = u64::MAX,
            "records capabilities",
        ),
        (
            |t| t.attrs.threads[0].caps.effective = 1 << 21,
            "records capabilities",
        ),
        (|t| t.attrs.caps.ambient = 1 << 21, "records capabilities"),
        (|t| t.attrs.oom_score_adj = -1000, "oom_score_adj"),
        (|t| t.attrs.loginuid = 0, "login uid 0"),
        (|t| t.attrs.threads[0].nice = -20, "raises the priority"),
        // nonsense written into the new kinds of state: one clear line
        (
            |t| t.attrs.parents_fd_table = true,
            "shares the fd table of a parent the image does not hold",
        ),
        (
            |t| {
                t.attrs.seccomp.push(image::ThreadSeccomp {
                    tid: t.pid,
                    strict: false,
                    filters: vec![image::SeccompFilter::default()],
                })
            },
            "a seccomp filter of 0 instructions",
        ),
        (
            |t| {
                t.attrs.posix_timers.push(image::PosixTimer {
                    notify: 4,
                    thread: 9,
                    ..Default::default()
                })
            },
            "signals thread #9",
        ),
    ];
    for (edit, want) in attacks {
        std::fs::write(&task, &pristine).unwrap();
        forge(&task, edit);
        let o = restart_out(&store, pid, 1);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{want}: must be refused");
        assert!(e.contains(want), "expected {want:?} in {e}");
        assert!(!alive(pid), "nothing runs after a refusal");
    }
    std::fs::write(&task, &pristine).unwrap();
    ok(&restart_out(&store, pid, 1), "the untouched image restarts");
    assert_eq!(status_of(pid, pid, "CapPrm:"), "0000000000000000");
    kill_reap(pid);
}

/// A user job holding capabilities (ambient, as pam_cap or a service
/// manager gives them) has a root-owned image and comes back with exactly
/// those capabilities — no more.
#[test]
fn a_job_with_capabilities_gets_exactly_them_back() {
    const CAP_NET_BIND_SERVICE: u32 = 10;
    let guard = Guard::new();
    become_subreaper();
    let tmp = workdir();
    let exe = build_c(tmp.path(), "bigmem");
    let out = tmp.path().join("job.out");
    let mut cmd = root_cmd(&exe, &["1"], &out);
    let gid = nogroup();
    // SAFETY: credential calls in the child before exec: become nobody
    // keeping CAP_NET_BIND_SERVICE, raised into the ambient set (which
    // survives exec).
    unsafe {
        cmd.pre_exec(move || {
            let bit = 1u32 << CAP_NET_BIND_SERVICE;
            let hdr = [0x2008_0522u32, 0];
            let data = [bit, bit, bit, 0, 0, 0];
            let fail = || Err(std::io::Error::last_os_error());
            if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(NOBODY, NOBODY, NOBODY) != 0
                || libc::syscall(libc::SYS_capset, hdr.as_ptr(), data.as_ptr()) != 0
                || libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    CAP_NET_BIND_SERVICE as libc::c_ulong,
                    0,
                    0,
                ) != 0
            {
                return fail();
            }
            Ok(())
        });
    }
    let pid = guard.add(spawn(cmd).id() as i32);
    wait_until("job runs", || {
        alive(pid) && !status_of(pid, pid, "CapAmb:").is_empty()
    });
    let want: Vec<String> = ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"]
        .iter()
        .map(|k| status_of(pid, pid, k))
        .collect();
    assert_eq!(
        want[4], "0000000000000400",
        "the job holds an ambient capability"
    );
    let store = tmp.path().join("store");
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    let task = store
        .join(pid.to_string())
        .join(format!("task_{pid}_v1.bin"));
    assert_eq!(std::fs::metadata(&task).unwrap().uid(), 0, "root's image");
    ok(&restart_out(&store, pid, 1), "restart");
    let got: Vec<String> = ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"]
        .iter()
        .map(|k| status_of(pid, pid, k))
        .collect();
    assert_eq!(got, want, "the same capabilities, no more");
    assert_eq!(
        status_of(pid, pid, "Uid:"),
        format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}")
    );
    kill_reap(pid);
}
