//! Freezing the tree: who it belongs to, what this version refuses (looked
//! at first while the job runs, [`precheck`]), the ptrace seizure that
//! holds it still (and lets it go on any error), and the priority the
//! checkpointing thread takes while it holds it ([`Boost`]).

use crate::error::{ChkptError, Result};
use crate::image::Zombie;
use crate::{procfs, ptrace};

/// The tree rooted at `pid`, parents before children: (pid, ppid).
pub fn tree(pid: i32) -> Result<Vec<(i32, i32)>> {
    let stat = procfs::parse_stat(
        &procfs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|_| ChkptError::NoSuchProcess(pid))?,
    )?;
    let mut out = vec![(pid, stat.ppid())];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].0;
        match procfs::children(p) {
            Ok(children) => out.extend(children.into_iter().map(|c| (c, p))),
            // reaped since its parent listed it (the tree runs while it is
            // checked): left for the look at it to find it gone
            Err(e) if e.is_gone() && i > 0 => {}
            Err(e) => return Err(e),
        }
        i += 1;
    }
    Ok(out)
}

/// Detaches (or kills) every seized task when dropped, so that an error
/// anywhere leaves the job running.
#[derive(Default)]
pub struct Frozen {
    tids: Vec<i32>,
    /// Kill the tasks instead of letting them run on (`--kill`).
    pub kill: bool,
    /// Leave the tasks stopped (SIGSTOP) instead of running: a migration
    /// keeps its origin copy stopped until the target has taken over.
    pub stop: bool,
    /// Established TCP sockets in repair mode: back to normal if the job
    /// runs on, closed silently with it if it is killed.
    pub repaired: Vec<super::sockets::Repairing>,
    /// Processes stopped by job control when seized: PID → stop signal.
    /// (Detaching leaves them stopped: the kernel puts the group stop back.)
    pub stopped: std::collections::HashMap<i32, i32>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &t in self.tids.iter().rev() {
            if self.kill {
                // SAFETY: plain kill of a task we froze.
                unsafe { libc::kill(t, libc::SIGKILL) };
            }
            if self.stop && !self.kill {
                let _ = ptrace::detach_with(t, libc::SIGSTOP);
            } else {
                let _ = ptrace::detach(t);
            }
        }
        for r in &mut self.repaired {
            r.keep = self.kill;
        }
    }
}

/// Who a process belongs to, for the image: its user when its real,
/// effective, saved and file-system ids all agree, else root — a process
/// that holds another identity (a setuid or setgid program) is root's
/// business, and its image must not be a file its real user may edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

fn owner_of(pid: i32, status: &str, caller: u32) -> Result<Owner> {
    let uids = procfs::status_ids(status, "Uid")?;
    let gids = procfs::status_ids(status, "Gid")?;
    let one_uid = uids.iter().all(|&u| u == uids[0]);
    let one_gid = gids.iter().all(|&g| g == gids[0]);
    if caller != 0 && (!one_uid || uids[0] != caller || !one_gid) {
        return Err(ChkptError::Permission(format!(
            "process {pid} runs with uids {uids:?} and gids {gids:?}; only root may checkpoint a process that is not entirely yours"
        )));
    }
    let privileged = super::attrs::privilege(pid, status);
    if let (Some(why), true) = (&privileged, caller != 0) {
        return Err(ChkptError::Permission(format!(
            "process {pid} {why}; only root may checkpoint a process that holds privileges"
        )));
    }
    Ok(if one_uid && one_gid && privileged.is_none() {
        Owner {
            uid: uids[0],
            gid: gids[0],
        }
    } else {
        Owner { uid: 0, gid: 0 }
    })
}

/// A process that has exited and waits for its parent to reap it: what
/// the parent will get. (A process whose main thread exited while others
/// run shows the same state, but has threads: that is no zombie.)
pub fn zombie(pid: i32) -> Option<Zombie> {
    let stat =
        procfs::parse_stat(&procfs::read_to_string(format!("/proc/{pid}/stat")).ok()?).ok()?;
    let threads = procfs::threads(pid).ok()?;
    (stat.state == 'Z' && threads == [pid]).then(|| Zombie {
        status: stat.field(52) as i32,
        pgid: stat.field(5) as i32,
        sid: stat.field(6) as i32,
    })
}

/// `pidns`: the tree may live in another PID namespace (a `krg run` job
/// krgd migrates: it translates the PIDs at restore).
pub fn check_task(pid: i32, caller: u32, pidns: bool) -> Result<Owner> {
    let status = procfs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| ChkptError::NoSuchProcess(pid))?;
    let owner = owner_of(pid, &status, caller)?;
    if zombie(pid).is_some() || crate::standin::is_stand_in(pid) {
        // a stand-in holds nothing of its process: whether the tree may
        // have it is the dump's to say (super::standins)
        return Ok(owner);
    }
    if procfs::status_field(&status, "State").is_some_and(|st| st.starts_with('Z')) {
        // two looks (status, then zombie()): a process reaped in between
        // (its parent runs on while the tree is checked) is gone, and the
        // caller looks at the tree again; one that became a whole zombie
        // in between is one
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(ChkptError::NoSuchProcess(pid));
        }
        if zombie(pid).is_some() {
            return Ok(owner);
        }
        return Err(ChkptError::unsupported(
            pid,
            "a process whose main thread has exited",
            "its other threads run on, but there is no thread to restore it from",
        ));
    }
    refuse_unsaved_state(pid, pidns)?;
    let tracer = procfs::status_field(&status, "TracerPid").unwrap_or("0");
    if tracer != "0" {
        return Err(ChkptError::unsupported(
            pid,
            "a process already being traced",
            format!("by PID {tracer}"),
        ));
    }
    Ok(owner)
}

/// State this version cannot save: refused rather than silently lost.
fn refuse_unsaved_state(pid: i32, pidns: bool) -> Result<()> {
    super::refuse::thread_state(pid)?;
    super::refuse::cwd(pid)?;
    // file locks are saved with the fds they are held through, and leases
    // refused there, naming the fd (dump::held::locks)
    for ns in ["pid", "mnt", "net", "ipc", "uts", "user", "cgroup", "time"] {
        if pidns && ns == "pid" {
            continue;
        }
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).ok();
        if theirs.is_none() || ours.is_none() || theirs == ours {
            continue;
        }
        if pidns && ns == "mnt" {
            // a job's own namespace, for its /proc
            super::mntns::check_job_mounts(pid)?;
        } else {
            return Err(ChkptError::unsupported(
                pid,
                format!("a process in another {ns} namespace"),
                "run checkpoint (and restart) in the job's namespaces",
            ));
        }
    }
    Ok(())
}

/// The owner of a whole tree: its tasks' common owner, or root when they
/// differ (see [`Owner`]).
pub fn tree_owner(tree: &[(i32, i32)], caller: u32) -> Result<Owner> {
    let root = tree.first().map_or(0, |t| t.0);
    // a process that exited since the tree was listed has no say
    let mut owners = tree.iter().filter_map(|&(p, _)| {
        match procfs::read_to_string(format!("/proc/{p}/status")) {
            Ok(status) => Some(owner_of(p, &status, caller)),
            Err(_) if p != root => None,
            Err(_) => Some(Err(ChkptError::NoSuchProcess(p))),
        }
    });
    let first = owners.next().unwrap_or(Err(ChkptError::NoSuchProcess(0)))?;
    for o in owners {
        if o? != first {
            return Ok(Owner { uid: 0, gid: 0 });
        }
    }
    Ok(first)
}

/// Freeze the tree, re-reading children until no new one appears (and
/// again when one exits before it could be seized).
pub fn freeze(pid: i32, caller: u32, pidns: bool, frozen: &mut Frozen) -> Result<Vec<(i32, i32)>> {
    loop {
        let t = tree(pid)?;
        let mut again = false;
        for &(p, _) in &t {
            match seize_task(p, caller, pidns, frozen) {
                Ok(new) => again |= new,
                Err(e) if e.is_gone() && p != pid => again = true,
                Err(e) => return Err(e),
            }
        }
        if !again {
            return Ok(t);
        }
    }
}

/// Seize every thread of `p` not seized yet; true if there were some.
fn seize_task(p: i32, caller: u32, pidns: bool, frozen: &mut Frozen) -> Result<bool> {
    if !frozen.tids.contains(&p) {
        check_task(p, caller, pidns)?;
        if zombie(p).is_some() {
            // nothing to stop: it only waits to be reaped (by its parent,
            // which is stopped)
            return Ok(false);
        }
        if crate::standin::is_stand_in(p) {
            // it runs on, relaying its process, which its node saved
            return Ok(false);
        }
    }
    let mut new = false;
    for tid in procfs::threads(p)? {
        if frozen.tids.contains(&tid) {
            continue;
        }
        match ptrace::seize_and_interrupt(tid) {
            Ok(sig) => {
                if let Some(sig) = sig {
                    frozen.stopped.insert(p, sig);
                }
                frozen.tids.push(tid);
            }
            // it exited between the look and the seize (seizing a zombie
            // is EPERM): the caller looks at the tree again
            Err(_) if exited(tid) => {}
            Err(e) => return Err(e),
        }
        new = true;
    }
    Ok(new)
}

/// Has task `tid` exited (a zombie, dead, or gone)?
fn exited(tid: i32) -> bool {
    procfs::read_to_string(format!("/proc/{tid}/stat"))
        .ok()
        .and_then(|s| procfs::parse_stat(&s).ok())
        .is_none_or(|st| matches!(st.state, 'Z' | 'X' | 'x'))
}

/// This thread at the highest priority while it holds the tree frozen;
/// the previous one back when dropped.
pub(super) struct Boost {
    was: i32,
}

impl Boost {
    pub(super) fn new() -> Self {
        // SAFETY: getpriority/setpriority of the calling thread (PRIO_PROCESS
        // with 0 is the caller on Linux); failure (not root) changes nothing.
        unsafe {
            let was = libc::getpriority(libc::PRIO_PROCESS, 0);
            libc::setpriority(libc::PRIO_PROCESS, 0, -20);
            Boost { was }
        }
    }
}

impl Drop for Boost {
    fn drop(&mut self) {
        // SAFETY: as in new.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, self.was) };
    }
}

/// The tree without its zombies and stand-ins (they have no files,
/// memory or threads to save).
pub(super) fn living(tree: &[(i32, i32)]) -> Vec<(i32, i32)> {
    tree.iter()
        .copied()
        .filter(|&(p, _)| zombie(p).is_none() && !crate::standin::is_stand_in(p))
        .collect()
}

/// Refuse what this version cannot save before touching anything, while
/// the job runs (so a refusal costs it nothing). A process that exits
/// meanwhile (a short-lived child) only makes the look start over.
pub(super) fn precheck(
    pid: i32,
    caller: u32,
    pidns: bool,
    stdio: &[(u64, u64)],
) -> Result<Vec<(i32, i32)>> {
    let mut tries = 0;
    loop {
        let t = tree(pid)?;
        let r = t
            .iter()
            .try_for_each(|&(p, _)| check_task(p, caller, pidns).map(|_| ()))
            .and_then(|()| super::refuse::shared_fd_tables(&living(&t)).map(|_| ()))
            .and_then(|()| {
                let stand_ins = super::standins::of(&t);
                let check = super::sockets::Take::Check;
                super::files::collect(&living(&t), caller, check, stdio, &stand_ins).map(|_| ())
            });
        match r {
            Ok(()) => return Ok(t),
            Err(e) if e.is_gone() && tries < 20 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}
