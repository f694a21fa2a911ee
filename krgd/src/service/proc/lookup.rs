//! This node's answers about its own processes: the rows of `krg ps`,
//! which process `NODE:PID` names here ([`named`]), and `krg kill` of it.
//!
//! A kill opens a pidfd for the process found, then checks again that the
//! pidfd's process is the one named (same namespace, same PID) and whose it
//! is, so a PID recycled in between is never signalled.

use std::os::fd::OwnedFd;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::proc::{Credentials, ProcRow};

use super::creds::{self, Origin};
use super::procfs::{self, Found};
use super::spawn::{pidfd_open, pidfd_signal};
use super::state::ProcState;

/// The process table rows of this node (those of `uid` only, if given).
pub fn list(st: &ProcState, uid: Option<u32>) -> Vec<ProcRow> {
    let mut found: Vec<(i32, i32)> = procfs::scan(&st.table.jobs())
        .iter()
        .map(|f| (f.host_pid, f.pid))
        .collect();
    // processes that migrated in keep their PIDs (krgd's namespace)
    found.extend(st.migration.adopted_pids().into_iter().map(|p| (p, p)));
    let mut rows = procfs::rows(st.node(), &found, creds::user_name);
    if let Some(uid) = uid {
        rows.retain(|r| r.uid == uid);
    }
    rows
}

fn not_found(node: u32, pid: i32) -> AdminError {
    AdminError::new(
        ErrorKind::NotFound,
        format!("no process {node}:{pid} (krg ps lists the processes of the cluster)"),
    )
}

/// What `NODE:PID` names on this node.
pub enum Named {
    /// A process of one of its jobs.
    Job(Found),
    /// A process that migrated in (it kept its PID, in krgd's namespace),
    /// or, with `stand_in`, the stand-in of one that moved on.
    Host { pid: i32, stand_in: bool },
}

/// The process this node's `krg ps` shows as `pid`: refused when it names
/// nothing, or processes of several jobs (one forked past its PID range).
pub fn named(st: &ProcState, pid: i32) -> Result<Named, AdminError> {
    let node = st.node();
    let mut found: Vec<Found> = procfs::scan(&st.table.jobs())
        .into_iter()
        .filter(|f| f.pid == pid)
        .collect();
    if found.len() > 1 {
        return Err(AdminError::new(
            ErrorKind::Conflict,
            format!("{node}:{pid} names processes of {} jobs (one of them forked past its PID range); name the job's program instead", found.len()),
        ));
    }
    if let Some(one) = found.pop() {
        return Ok(Named::Job(one));
    }
    let stand_in = st.migration.standins.runs_on(pid).is_some();
    if stand_in || st.migration.adopted_pids().contains(&pid) {
        return Ok(Named::Host { pid, stand_in });
    }
    Err(not_found(node, pid))
}

/// Send `signal` to process `pid` of this node for `creds`: root (from
/// here or a member node), or the process's owner (its real or saved uid,
/// as kill(2) decides).
pub fn kill(
    st: &ProcState,
    pid: i32,
    signal: i32,
    who: &Credentials,
    origin: Origin,
) -> Result<(), AdminError> {
    let node = st.node();
    if !(0..=64).contains(&signal) {
        return Err(AdminError::new(
            ErrorKind::InvalidArgument,
            format!("{signal} is not a signal number"),
        ));
    }
    // A process that migrated in, or the stand-in of one that moved on
    // (which passes the signal on to it), is signalled by its host PID.
    let target = match named(st, pid)? {
        Named::Host { pid, .. } => return kill_adopted(node, pid, signal, who, origin),
        Named::Job(target) => target,
    };
    let pidfd = pidfd_open(target.host_pid).map_err(|_| not_found(node, pid))?;
    let same = procfs::pid_ns_inode(target.host_pid) == Some(target.job.ns_ino)
        && procfs::ns_pid(target.host_pid) == Some(pid);
    let ids = procfs::uids(target.host_pid);
    let (true, Some(ids)) = (same, ids) else {
        return Err(not_found(node, pid));
    };
    may_signal(node, pid, &ids, who, origin)?;
    send(&pidfd, node, pid, signal)?;
    tracing::info!(pid, signal, uid = who.uid, "process signalled");
    Ok(())
}

/// Root (asked by a member, not an outsider) or the process's real or
/// saved uid may signal it.
fn may_signal(
    node: u32,
    pid: i32,
    ids: &[u32],
    who: &Credentials,
    origin: Origin,
) -> Result<(), AdminError> {
    let allowed = if who.uid == 0 {
        !matches!(origin, Origin::Outsider(_))
    } else {
        who.uid == ids[0] || who.uid == ids[2]
    };
    if allowed {
        return Ok(());
    }
    Err(AdminError::new(
        ErrorKind::PermissionDenied,
        format!(
            "process {node}:{pid} belongs to {}; uid {} may not signal it",
            creds::user_name(ids[0]),
            who.uid
        ),
    ))
}

/// Deliver `signal` (0: only check) through the process's pidfd.
fn send(pidfd: &OwnedFd, node: u32, pid: i32, signal: i32) -> Result<(), AdminError> {
    if signal == 0 {
        return Ok(());
    }
    pidfd_signal(pidfd, signal).map_err(|e| match e.raw_os_error() {
        Some(libc::ESRCH) => not_found(node, pid),
        _ => AdminError::new(ErrorKind::Internal, format!("signalling {node}:{pid}: {e}")),
    })
}

/// `kill` of a process that migrated in (it keeps its PID, in krgd's namespace).
fn kill_adopted(
    node: u32,
    pid: i32,
    signal: i32,
    who: &Credentials,
    origin: Origin,
) -> Result<(), AdminError> {
    let pidfd = pidfd_open(pid).map_err(|_| not_found(node, pid))?;
    let ids = procfs::uids(pid).ok_or_else(|| not_found(node, pid))?;
    may_signal(node, pid, &ids, who, origin)?;
    send(&pidfd, node, pid, signal)?;
    tracing::info!(pid, signal, uid = who.uid, "migrated process signalled");
    Ok(())
}
