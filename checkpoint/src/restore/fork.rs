//! Making the tasks of a restored tree: the root forked from restart with
//! its recorded PID, each child forked inside its (not yet restored)
//! parent by an injected `clone3`, each waiting a moment for a PID still
//! held by a zombie; sessions and process groups joined right after; and
//! every task made killed again if the restore fails half way. Used by
//! `tree` (the whole tree) and `zombie` (zombies made to exit at once).

use std::time::{Duration, Instant};

use crate::error::{ChkptError, Result};
use crate::image::TaskImage;
use crate::ptrace::{self, Injector};

use super::ctx::{clone_args, AREA_SCRATCH};

/// How restored tasks get their PIDs.
#[derive(Debug, Clone, Copy)]
pub struct PidPolicy {
    /// How long to wait for a recorded PID still held (a zombie not yet reaped).
    pub wait: Duration,
    /// Let the kernel choose new PIDs instead of the recorded ones.
    pub fresh: bool,
    /// An fd of restart (inherited by the root) on the mount namespace the
    /// tree must live in, when restart itself runs in another one
    /// ([`super::pidns`]): the root enters it first thing.
    pub rejoin_mnt: Option<i32>,
}

/// The first wait for a PID still taken; it doubles up to [`LAST_PAUSE`].
/// A migrated process's PID is usually free a few ms after its origin copy
/// was killed: a fixed 20 ms poll cost a migration 20 ms of downtime.
const FIRST_PAUSE: Duration = Duration::from_micros(250);
const LAST_PAUSE: Duration = Duration::from_millis(20);

/// Sleep `pause`; the next one.
fn backoff(pause: Duration) -> Duration {
    std::thread::sleep(pause);
    (pause * 2).min(LAST_PAUSE)
}

/// Fork the root task from the restarter with its recorded PID; it stops
/// itself under ptrace before touching anything.
pub(super) fn fork_root(pid: i32, pids: PidPolicy) -> Result<i32> {
    let deadline = Instant::now() + pids.wait;
    let mut pause = FIRST_PAUSE;
    // SAFETY: getpid has no preconditions.
    let restart = unsafe { libc::getpid() };
    loop {
        let tid = [pid];
        let mut args = clone_args(tid.as_ptr() as u64);
        if pids.fresh {
            args[8] = 0;
            args[9] = 0;
        }
        // SAFETY: fork-like clone3 (no CLONE_VM, no stack): the child continues
        // here on a copy of our memory and only makes async-signal-safe calls.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                args.as_ptr(),
                std::mem::size_of_val(&args),
            )
        };
        if r == 0 {
            // SAFETY: child side: die with restart (a half-restored task,
            // with root's credentials still, must never run on its own),
            // become traced, stop, never return into Rust state.
            // Restart killed before the death signal was set: nothing
            // would send it (the test that kills restart found this).
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                if libc::getppid() != restart {
                    libc::_exit(127);
                }
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                libc::raise(libc::SIGSTOP);
                libc::_exit(127);
            }
        }
        if r > 0 {
            ptrace::wait_stop(r as i32)?;
            // its children and threads are seized with it; the filters it
            // gets back must not stop the calls injected after them
            ptrace::suspend_seccomp(r as i32);
            return Ok(r as i32);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(ChkptError::Sys {
                op: format!("clone3 with PID {pid}"),
                pid,
                err,
            });
        }
        if Instant::now() >= deadline {
            return Err(ChkptError::PidTaken(pid));
        }
        pause = backoff(pause);
    }
}

/// Fork `child` inside the (not yet restored) `parent` with an injected clone3.
pub(super) fn fork_child(parent: &Injector, area: u64, child: i32, pids: PidPolicy) -> Result<i32> {
    fork_child_with(parent, area, child, pids, 0)
}

/// [`fork_child`] with clone `flags` (CLONE_FILES: the child shares its
/// parent's fd table, as it did).
pub(super) fn fork_child_with(
    parent: &Injector,
    area: u64,
    child: i32,
    pids: PidPolicy,
    flags: u64,
) -> Result<i32> {
    let scratch = area + AREA_SCRATCH;
    let deadline = Instant::now() + pids.wait;
    let mut pause = FIRST_PAUSE;
    let mut buf = Vec::new();
    let mut args = clone_args(scratch + 128);
    args[0] = flags;
    if pids.fresh {
        args[8] = 0;
        args[9] = 0;
    }
    for w in args {
        buf.extend_from_slice(&w.to_le_bytes());
    }
    buf.resize(128, 0);
    buf.extend_from_slice(&(child as u64).to_le_bytes());
    ptrace::write_mem(parent.tid, scratch, &buf)?;
    loop {
        let r = parent.raw(libc::SYS_clone3, [scratch, 88, 0, 0, 0, 0])?;
        if r == child as i64 || (pids.fresh && r > 0) {
            ptrace::seize_and_interrupt(r as i32)?;
            return Ok(r as i32);
        }
        if r != -(libc::EEXIST as i64) {
            return Err(ChkptError::Injected {
                name: "clone3",
                pid: child,
                errno: std::io::Error::from_raw_os_error(-r as i32),
            });
        }
        if Instant::now() >= deadline {
            return Err(ChkptError::PidTaken(child));
        }
        pause = backoff(pause);
    }
}

/// Kills every task created so far if restore fails half way.
pub(super) struct CreatedTasks {
    pub pids: Vec<i32>,
    /// Set once the whole tree is restored: the tasks are kept.
    pub done: bool,
}

impl Drop for CreatedTasks {
    fn drop(&mut self) {
        if !self.done {
            for &p in &self.pids {
                // SAFETY: killing processes this restart created.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            // Reap everything: the root (our child) and every traced task,
            // threads included — a traced thread's zombie is ours to reap,
            // and its process cannot be reaped before it.
            loop {
                let mut st = 0;
                // SAFETY: status is a valid pointer.
                if unsafe { libc::waitpid(-1, &mut st, libc::__WALL) } < 0 {
                    break;
                }
            }
        }
    }
}

/// Session and process group, right after the fork and before the task's
/// own children are forked (they inherit them): a session leader calls
/// setsid, a group leader setpgid(0, 0), a member of a group whose leader was
/// already recreated joins it; anything else stays in restart's.
pub(super) fn join_session(i: &Injector, t: &TaskImage, created: &[i32]) -> Result<()> {
    join_ids(i, t.pid, t.pgid, t.sid, created)
}

/// [`join_session`] for a task `pid` of group `pgid` and session `sid`.
pub(super) fn join_ids(i: &Injector, pid: i32, pgid: i32, sid: i32, created: &[i32]) -> Result<()> {
    if sid == pid {
        i.call("setsid", libc::SYS_setsid, [0; 6])?;
    } else if pgid == pid {
        i.call("setpgid", libc::SYS_setpgid, [0; 6])?;
    } else if created.contains(&pgid) {
        i.call("setpgid", libc::SYS_setpgid, [0, pgid as u64, 0, 0, 0, 0])?;
    }
    Ok(())
}
