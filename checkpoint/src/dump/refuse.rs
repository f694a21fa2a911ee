//! State this version refuses rather than restores wrongly, found in
//! /proc while the job runs (and again when it is frozen): per-thread
//! seccomp (but for root), SCHED_DEADLINE, a deleted working directory, fd tables
//! shared other than with the parent (CLONE_FILES), fds of /proc files of a process
//! and symlinks opened with O_PATH. (Stand-ins: [`super::standins`].)

use crate::error::{ChkptError, Result};
use crate::procfs;

/// Every thread, not only the leader: a filter installed by one thread
/// (without TSYNC) shows in that thread's status only. Root saves them
/// (see [`seccomp`](super::seccomp)); others cannot read them.
pub fn thread_state(pid: i32) -> Result<()> {
    for tid in procfs::threads(pid)? {
        let Ok(st) = procfs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else {
            continue; // exited meanwhile
        };
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root && procfs::status_field(&st, "Seccomp").is_some_and(|s| s != "0") {
            return Err(ChkptError::unsupported(
                pid,
                format!("seccomp (thread {tid})"),
                "only root can read a thread's filters and inject calls past them (run checkpoint as root)",
            ));
        }
        // SAFETY: sched_getscheduler of a thread id; no memory.
        if unsafe { libc::sched_getscheduler(tid) } & !libc::SCHED_RESET_ON_FORK == 6 {
            return Err(ChkptError::unsupported(
                pid,
                format!("SCHED_DEADLINE scheduling (thread {tid})"),
                "not saved by this version",
            ));
        }
    }
    Ok(())
}

/// A working directory that was removed cannot be entered again.
pub fn cwd(pid: i32) -> Result<()> {
    let cwd = procfs::readlink(format!("/proc/{pid}/cwd"))?;
    if cwd.ends_with(" (deleted)") {
        return Err(ChkptError::unsupported(
            pid,
            format!("a deleted working directory ({cwd})"),
            "it cannot be entered again at restart",
        ));
    }
    Ok(())
}

/// Processes of the tree that share one fd table (clone with CLONE_FILES
/// and without CLONE_THREAD): restart forks each with CLONE_FILES from its
/// parent, so a process may share only its parent's table (as it had it
/// from its fork). Returns the processes that share their parent's.
pub fn shared_fd_tables(tree: &[(i32, i32)]) -> Result<Vec<i32>> {
    const KCMP_FILES: i32 = 2;
    let same = |a: i32, b: i32| {
        // SAFETY: kcmp compares two processes' fd tables; no memory.
        unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_FILES, 0, 0) == 0 }
    };
    let with_parent: Vec<i32> = tree
        .iter()
        .filter(|&&(a, pa)| tree.iter().any(|t| t.0 == pa) && same(a, pa))
        .map(|t| t.0)
        .collect();
    // the first of a chain of processes each sharing its parent's table
    let top = |mut x: i32| {
        while with_parent.contains(&x) {
            match tree.iter().find(|t| t.0 == x) {
                Some(&(_, p)) => x = p,
                None => break,
            }
        }
        x
    };
    for (n, &(a, _)) in tree.iter().enumerate() {
        for &(b, _) in &tree[n + 1..] {
            if top(a) != top(b) && same(a, b) {
                return Err(ChkptError::unsupported(
                    b,
                    format!(
                        "an fd table shared with process {a} (CLONE_FILES), not by a fork from it"
                    ),
                    "restart can give a process only the table of the parent it is forked from",
                ));
            }
        }
    }
    Ok(with_parent)
}

/// A file of a process's /proc directory (`/proc/PID/…`, which
/// `/proc/self` and `/proc/thread-self` resolve to): its content is that
/// process's live state, which reopening by path at restart (by a task
/// under restore, or before the one it names exists) would not give back.
pub fn proc_file(target: &str) -> Option<String> {
    let rest = target.strip_prefix("/proc/")?;
    let first = rest.split('/').next().unwrap_or("");
    if first.parse::<u32>().is_ok() {
        return Some(format!(
            "a /proc file of process {first} (per-process state, not saved)"
        ));
    }
    matches!(first, "self" | "thread-self").then(|| "a /proc/self file (not saved)".to_string())
}
