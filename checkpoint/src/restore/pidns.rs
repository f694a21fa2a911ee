//! Restoring into the PID namespace of a `krg run` job (`restart
//! --pidns-of INIT --ns-pid HOST:INNER …`): a job that migrates keeps the
//! PIDs it sees, in a new namespace on the target whose init krgd started.
//!
//! The image records the PIDs of krgd's namespace at dump time; the map
//! gives each its number in the job's namespace ([`translate`]). Then a
//! child of restart enters the job's namespace (setns on restart, then
//! fork), takes a mount namespace of its own with a `/proc` of the job's
//! namespace, and runs the usual restore there ([`inside`]): every PID it
//! forks with, ptraces and reads in `/proc` is the job's own. The restored
//! root enters restart's mount namespace again before anything else (its
//! children inherit it), so the job sees the node's mounts, not the
//! restorer's. When the restorer exits, the root is re-parented to the
//! job's init.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{ChkptError, Result};

use super::load::Loaded;

/// Where to restore: the namespace of process `init` (its PID 1), and the
/// number there of every PID the image records.
#[derive(Debug, Clone)]
pub struct PidNsTarget {
    /// PID (in restart's namespace) of the namespace's init.
    pub init: i32,
    /// (PID at dump time, PID in the job's namespace).
    pub map: Vec<(i32, i32)>,
}

/// Give every PID of the image its number in the job's namespace. Every
/// task and thread must be in the map; a parent, group or session outside
/// the tree that is not in it becomes 0 (outside: nothing to join).
pub fn translate(l: &mut Loaded, map: &[(i32, i32)]) -> Result<()> {
    let m: HashMap<i32, i32> = map.iter().copied().collect();
    let must = |p: i32| {
        m.get(&p).copied().ok_or_else(|| {
            ChkptError::Usage(format!(
                "PID {p} of the image has no number in the job's namespace (--ns-pid)"
            ))
        })
    };
    let may = |p: i32| m.get(&p).copied().unwrap_or(0);
    for t in l.tasks.iter_mut().map(|t| &mut t.task) {
        t.pid = must(t.pid)?;
        for th in &mut t.threads {
            th.tid = must(th.tid)?;
        }
        for th in &mut t.attrs.threads {
            th.tid = must(th.tid)?;
        }
        for f in &mut t.attrs.fds {
            f.owner_id = may(f.owner_id.abs()) * f.owner_id.signum();
        }
        t.ppid = may(t.ppid);
        t.pgid = may(t.pgid);
        t.sid = may(t.sid);
    }
    for z in &mut l.zombies {
        z.pid = must(z.pid)?;
        z.ppid = may(z.ppid);
        for th in &mut z.threads {
            *th = may(*th);
        }
        if let Some(zz) = &mut z.zombie {
            zz.pgid = may(zz.pgid);
            zz.sid = may(zz.sid);
        }
    }
    Ok(())
}

fn sys(op: &str, pid: i32) -> ChkptError {
    ChkptError::sys(op, pid)
}

/// Run `restore` in a child of restart that lives in `init`'s PID
/// namespace with a `/proc` of it; the PIDs it restored (the job's own
/// numbers). `wanted` are the PIDs the tree needs: the child's own PID in
/// the namespace must not be one of them. `restore` is given an fd on
/// restart's mount namespace, for the root to enter.
pub fn inside(
    init: i32,
    wanted: &[i32],
    restore: impl FnOnce(i32) -> Result<Vec<i32>>,
) -> Result<Vec<i32>> {
    let path = format!("/proc/{init}/ns/pid");
    let ns = std::fs::File::open(&path).map_err(|e| ChkptError::io(&path, e))?;
    let ours = std::fs::metadata("/proc/self/ns/pid").map_err(|e| ChkptError::io(&path, e))?;
    let theirs = ns.metadata().map_err(|e| ChkptError::io(&path, e))?;
    if std::os::unix::fs::MetadataExt::ino(&ours) == std::os::unix::fs::MetadataExt::ino(&theirs) {
        return Err(ChkptError::Usage(format!(
            "process {init} is in restart's own PID namespace: --pidns-of names the init of a job"
        )));
    }
    // SAFETY: setns on an fd we opened; it changes only the namespace of
    // restart's future children.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
        return Err(sys("setns(CLONE_NEWPID)", init));
    }
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(sys("pipe2", 0));
    }
    // SAFETY: pipe2 returned two descriptors nobody else owns.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: restart has a single thread here (load's helper threads are
    // joined), so the child may go on in Rust; it leaves with _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(sys("fork into the job's namespace", init));
    }
    if child == 0 {
        drop(rd);
        let text = match in_child(wanted, restore) {
            Ok(pids) => {
                let list: Vec<String> = pids.iter().map(i32::to_string).collect();
                format!("ok {}", list.join(" "))
            }
            Err(e) => format!("err {e}"),
        };
        let mut w = std::fs::File::from(wr);
        let _ = w.write_all(text.as_bytes());
        drop(w);
        // SAFETY: leave without running destructors that belong to the parent.
        unsafe { libc::_exit(0) }
    }
    drop(wr);
    let mut text = String::new();
    let _ = std::fs::File::from(rd).read_to_string(&mut text);
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    if let Some(list) = text.strip_prefix("ok") {
        return Ok(list
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect());
    }
    match text.strip_prefix("err ") {
        Some(msg) => Err(ChkptError::Usage(msg.to_string())),
        None => Err(ChkptError::Usage(format!(
            "the restorer in the job's namespace ended without an answer (wait status {status:#x})"
        ))),
    }
}

/// The child: its own mount namespace and `/proc`, then the restore.
fn in_child(wanted: &[i32], restore: impl FnOnce(i32) -> Result<Vec<i32>>) -> Result<Vec<i32>> {
    // SAFETY: prctl and getpid take no pointers.
    let me = unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        libc::getpid()
    };
    if wanted.contains(&me) {
        return Err(ChkptError::PidTaken(me));
    }
    let path = "/proc/self/ns/mnt";
    let home = std::fs::File::open(path).map_err(|e| ChkptError::io(path, e))?;
    // SAFETY: unshare and mount with constant, NUL-terminated strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(sys("unshare(CLONE_NEWNS)", me));
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(sys("mount --make-rprivate /", me));
        }
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) != 0
        {
            return Err(sys("mount proc of the job's namespace", me));
        }
    }
    restore(home.as_raw_fd())
}
