//! A user against root's `restart`, with what root makes on the user's
//! behalf from an image: FIFOs, deleted files, message queues, and the
//! file `--inherit-fd` names. The job runs as `nobody`; the image, the
//! user's own files, is edited the way its owner could (decoded, changed,
//! encoded with a fresh CRC). Each forged request is refused, or fails
//! with the user's own rights, and leaves root's things untouched.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use checkpoint::image::{
    self, DeletedImage, FdImage, FdKind, FifoImage, FileKind, MqMessage, MqueueImage, TaskImage,
};
use common::*;

const NOBODY: u32 = 65534;

fn nogroup() -> u32 {
    checkpoint::restore::ImageOwner::of_uid(NOBODY).unwrap().gid
}

/// A work directory the job's user can traverse, with a root-only
/// directory in it.
fn workdir() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let private = t.path().join("root-only");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(private.join("victim"), b"root's secret\n").unwrap();
    (t, private)
}

/// A nobody job checkpointed by root into `store`, then killed.
fn user_image(tmp: &Path, store: &Path, guard: &Guard) -> i32 {
    let exe = build_c(tmp, "bigmem");
    let out = tmp.join("job.out");
    let stdout = File::create(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(NOBODY), Some(nogroup())).unwrap();
    let mut cmd = Command::new(exe);
    cmd.arg("1")
        .uid(NOBODY)
        .gid(nogroup())
        .current_dir("/")
        .stdout(stdout)
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let pid = guard.add(spawn(cmd).id() as i32);
    wait_until("job runs", || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .is_ok_and(|s| s.contains(&format!("Uid:\t{NOBODY}")))
            && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("bigmem"))
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    ok(&checkpoint_out(store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    pid
}

/// Add an fd of `kind` to the task file, as its owner could.
fn forge_fd(store: &Path, pid: i32, fd: i32, flags: u32, kind: FdKind) {
    let path = store
        .join(pid.to_string())
        .join(format!("task_{pid}_v1.bin"));
    let mut meta: TaskImage = image::read_file(&path, FileKind::Task).unwrap().meta;
    meta.fds.push(FdImage { fd, flags, kind });
    std::fs::write(&path, image::encode(FileKind::Task, &meta).unwrap()).unwrap();
}

fn failed(o: &std::process::Output, pid: i32) -> String {
    assert!(!o.status.success(), "restart should have failed");
    assert!(!alive(pid), "nothing may run after a failed restart");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A FIFO "made again" in a directory only root may write: made as the
/// user, so refused by the kernel; nothing appears there.
#[test]
fn forged_fifo_in_a_root_directory_is_not_made() {
    let guard = Guard::new();
    become_subreaper();
    let (tmp, private) = workdir();
    let store = tmp.path().join("store");
    let pid = user_image(tmp.path(), &store, &guard);
    let planted = private.join("planted");
    let fifo = FifoImage {
        path: planted.to_str().unwrap().into(),
        ino: 1,
        mode: 0o666,
        data: b"x".to_vec(),
    };
    forge_fd(&store, pid, 40, 0, FdKind::Fifo { file: 1000, fifo });
    let e = failed(&restart_out(&store, pid, 1), pid);
    assert!(e.contains("Permission denied"), "{e}");
    assert!(
        !planted.exists(),
        "root made the user's FIFO in a root-only directory"
    );
}

/// A deleted file "made again" in a root-only directory (O_TMPFILE as the
/// user: refused), and one claiming more content than the limit (refused
/// before anything runs).
#[test]
fn forged_deleted_files_are_refused() {
    let guard = Guard::new();
    become_subreaper();
    let (tmp, private) = workdir();
    let store = tmp.path().join("store");
    let pid = user_image(tmp.path(), &store, &guard);
    let del = DeletedImage {
        path: private.join("gone").to_str().unwrap().into(),
        pos: 0,
        mode: 0o644,
        content: b"planted".to_vec(),
        size: 7,
        ino: 1,
    };
    forge_fd(
        &store,
        pid,
        41,
        2,
        FdKind::Deleted {
            file: 1001,
            del: del.clone(),
        },
    );
    let e = failed(&restart_out(&store, pid, 1), pid);
    assert!(e.contains("Permission denied"), "{e}");
    let names: Vec<_> = std::fs::read_dir(&private).unwrap().flatten().collect();
    assert_eq!(names.len(), 1, "only the victim in the root-only directory");

    let store2 = tmp.path().join("store2");
    let pid2 = user_image(tmp.path(), &store2, &guard);
    let huge = DeletedImage {
        path: "/tmp/x".into(),
        size: image::MAX_DELETED_BYTES + 1,
        ..del
    };
    forge_fd(
        &store2,
        pid2,
        41,
        2,
        FdKind::Deleted {
            file: 1001,
            del: huge,
        },
    );
    let e = failed(&restart_out(&store2, pid2, 1), pid2);
    assert!(e.contains("bad deleted-file record"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

fn mq_curmsgs(name: &str) -> Option<i64> {
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

/// A forged queue named like root's private queue: opened as the user,
/// refused; root's queue keeps its one message. A queue larger than a
/// user may make is refused before anything runs.
#[test]
fn forged_message_queues_are_refused() {
    let guard = Guard::new();
    become_subreaper();
    let (tmp, _) = workdir();
    let name = format!("krg-victim-{}", std::process::id());
    let slash = std::ffi::CString::new(format!("/{name}")).unwrap();
    // SAFETY: root's own private queue with one message.
    unsafe {
        let mut a: libc::mq_attr = std::mem::zeroed();
        a.mq_maxmsg = 4;
        a.mq_msgsize = 32;
        let q = libc::mq_open(slash.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600, &a);
        assert!(q >= 0);
        libc::mq_send(q, b"secret".as_ptr().cast(), 6, 0);
        libc::mq_close(q);
    }
    let store = tmp.path().join("store");
    let pid = user_image(tmp.path(), &store, &guard);
    let mq = MqueueImage {
        name: name.clone(),
        unlinked: false,
        mode: 0o666,
        uid: NOBODY,
        gid: nogroup(),
        maxmsg: 4,
        msgsize: 32,
        messages: vec![MqMessage {
            prio: 0,
            data: b"forged".to_vec(),
        }],
    };
    forge_fd(
        &store,
        pid,
        42,
        2,
        FdKind::Mqueue {
            file: 1002,
            mq: mq.clone(),
        },
    );
    let e = failed(&restart_out(&store, pid, 1), pid);
    assert!(e.contains("Permission denied"), "{e}");
    assert_eq!(
        mq_curmsgs(&format!("/{name}")),
        Some(1),
        "root's queue changed"
    );

    let store2 = tmp.path().join("store2");
    let pid2 = user_image(tmp.path(), &store2, &guard);
    let big = MqueueImage {
        name: format!("{name}-big"),
        maxmsg: 100_000,
        messages: Vec::new(),
        ..mq
    };
    forge_fd(
        &store2,
        pid2,
        42,
        2,
        FdKind::Mqueue {
            file: 1002,
            mq: big,
        },
    );
    let e = failed(&restart_out(&store2, pid2, 1), pid2);
    assert!(e.contains("larger than a user may make"), "{e}");
    assert_eq!(mq_curmsgs(&format!("/{name}-big")), None);
    // SAFETY: removes root's test queue.
    unsafe { libc::mq_unlink(slash.as_ptr()) };
}

/// `--inherit-fd` naming a root-only file for a user's job: opened as the
/// user, refused.
#[test]
fn inherit_fd_opens_as_the_user() {
    let guard = Guard::new();
    become_subreaper();
    let (tmp, private) = workdir();
    let store = tmp.path().join("store");
    let pid = user_image(tmp.path(), &store, &guard);
    let what = "pipe:[1]".to_string();
    forge_fd(&store, pid, 43, 0, FdKind::External { file: 1003, what });
    let arg = format!("43:{}", private.join("victim").display());
    let o = run(Command::new(bin("restart"))
        .arg("--dir")
        .arg(&store)
        .args(["--inherit-fd", &arg])
        .arg(pid.to_string())
        .arg("1"));
    let e = failed(&o, pid);
    assert!(e.contains("Permission denied"), "{e}");
}

/// A queue made again for a user's job belongs to the user (made under
/// the user's identity), with the recorded mode and messages.
#[test]
fn users_message_queue_is_made_by_the_user() {
    use std::os::unix::fs::MetadataExt;
    let guard = Guard::new();
    become_subreaper();
    let (tmp, _) = workdir();
    let store = tmp.path().join("store");
    let pid = user_image(tmp.path(), &store, &guard);
    let name = format!("krg-user-{}", std::process::id());
    let mq = MqueueImage {
        name: name.clone(),
        unlinked: false,
        mode: 0o640,
        uid: NOBODY,
        gid: nogroup(),
        maxmsg: 4,
        msgsize: 32,
        messages: vec![
            MqMessage {
                prio: 2,
                data: b"a".to_vec(),
            },
            MqMessage {
                prio: 1,
                data: b"b".to_vec(),
            },
        ],
    };
    forge_fd(&store, pid, 42, 2, FdKind::Mqueue { file: 1002, mq });
    ok(&restart_out(&store, pid, 1), "restart");
    let m = std::fs::metadata(format!("/proc/{pid}/fd/42")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (NOBODY, 0o640));
    assert_eq!(mq_curmsgs(&format!("/{name}")), Some(2));
    kill_reap(pid);
    let c = std::ffi::CString::new(format!("/{name}")).unwrap();
    // SAFETY: removes the test queue.
    unsafe { libc::mq_unlink(c.as_ptr()) };
}

/// A fanotify group forged into a user's image (making one needs
/// CAP_SYS_ADMIN, which the user never had) is refused before anything
/// starts.
#[test]
fn forged_fanotify_group_is_refused() {
    let guard = Guard::new();
    become_subreaper();
    let (tmp, _) = workdir();
    let store = tmp.path().join("store");
    let pid = user_image(tmp.path(), &store, &guard);
    let fa = checkpoint::image::FanotifyImage {
        flags: 0,
        event_flags: 0,
        marks: vec![checkpoint::image::FanotifyMark {
            mount: true,
            path: "/".into(),
            flags: 0,
            mask: 0x3b,
            ignored_mask: 0,
        }],
    };
    forge_fd(&store, pid, 42, 0, FdKind::Fanotify { file: 1000, fa });
    let e = failed(&restart_out(&store, pid, 1), pid);
    assert!(e.contains("a fanotify group in a user's image"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}
