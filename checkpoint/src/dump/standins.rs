//! The stand-ins of a tree: `krg` in the place of a process that moved to
//! another node ([`crate::standin`]). A stand-in holds nothing of its
//! process: the node the process runs on saves it (the caller had it do
//! so first, [`super::DumpOptions::stand_ins`]). The tree's node file keeps
//! the stand-in as its parent and its shell know it — PID, process group,
//! session, command line, fds 0-2 — with where its process was saved
//! ([`StandInEntry`]). A stand-in is neither frozen nor read otherwise: it
//! runs on, relaying its process.

use std::collections::{HashMap, HashSet};

use crate::error::{ChkptError, Result};
use crate::image::{FdImage, FdKind, PartRef, StandInEntry};
use crate::procfs;

use super::task::TaskDump;

const WHAT: &str = "the stand-in of a process that moved to another node (krg ps shows where)";

/// The stand-ins among the processes of `tree`.
pub(super) fn of(tree: &[(i32, i32)]) -> Vec<i32> {
    tree.iter()
        .map(|t| t.0)
        .filter(|&p| crate::standin::is_stand_in(p))
        .collect()
}

/// Refuse the tree if its root is a stand-in, or if a stand-in's process
/// was not saved where it runs (`parts`: by stand-in PID).
pub(super) fn check(root: i32, stand_ins: &[i32], parts: &[(i32, PartRef)]) -> Result<()> {
    for &p in stand_ins {
        if p == root {
            return Err(ChkptError::unsupported(
                p,
                WHAT,
                "checkpoint its PID through krgd: the node it runs on saves it",
            ));
        }
        if !parts.iter().any(|(s, _)| *s == p) {
            return Err(ChkptError::unsupported(
                p,
                WHAT,
                "the node it runs on saves its process when checkpoint asks krgd \
                 (not with --no-capability-check)",
            ));
        }
    }
    Ok(())
}

/// A krg job's tree (in a PID namespace of its own) comes back as a job,
/// whose namespace this version does not make stand-ins in.
pub(super) fn not_in_a_job(stand_ins: &[i32]) -> Result<()> {
    match stand_ins.first() {
        Some(&p) => Err(ChkptError::unsupported(
            p,
            format!("{WHAT}, in a krg job"),
            "a job's tree with stand-ins in it is not saved as one application: checkpoint each process where it runs",
        )),
        None => Ok(()),
    }
}

/// A stand-in's fd this version does not save.
pub(super) fn refused(pid: i32, fd: i32, what: &str) -> ChkptError {
    ChkptError::unsupported(
        pid,
        format!("fd {fd} of a stand-in ({what})"),
        "a stand-in's fds 0-2 are saved when each is a pipe, a terminal, a file opened by path, or what a process of the tree has open too",
    )
}

/// The node file's entries of the stand-ins of `tree`, in tree order:
/// their fds 0-2 taken out of `fds` (the tree's fd tables, where
/// [`super::files::collect`] listed them), each checked to be something
/// restart can give it again from what it makes for `tasks`.
pub(super) fn entries(
    tree: &[(i32, i32)],
    parts: &[(i32, PartRef)],
    fds: &mut HashMap<i32, Vec<FdImage>>,
    tasks: &[TaskDump],
) -> Result<Vec<StandInEntry>> {
    let opened: HashSet<u32> = tasks
        .iter()
        .flat_map(|d| d.task.fds.iter().filter_map(|f| f.kind.file()))
        .collect();
    let mut out = Vec::new();
    for &(pid, ppid) in tree {
        let Some(&(_, part)) = parts.iter().find(|(s, _)| *s == pid) else {
            continue;
        };
        let stdio = fds.remove(&pid).unwrap_or_default();
        for f in &stdio {
            let ok = match &f.kind {
                FdKind::Pipe { .. } | FdKind::InheritedStdio { .. } | FdKind::Path { .. } => true,
                FdKind::External { .. } | FdKind::Pidfd { .. } => false,
                k => k.file().is_some_and(|n| opened.contains(&n)),
            };
            if !ok {
                let what = procfs::readlink(format!("/proc/{pid}/fd/{}", f.fd))
                    .unwrap_or_else(|_| "?".into());
                return Err(refused(pid, f.fd, &what));
            }
        }
        let stat = procfs::parse_stat(&procfs::read_to_string(format!("/proc/{pid}/stat"))?)?;
        out.push(StandInEntry {
            pid,
            ppid,
            pgid: stat.field(5) as i32,
            sid: stat.field(6) as i32,
            argv: cmdline(pid)?,
            stdio,
            part,
        });
    }
    Ok(out)
}

/// The command line of `pid` (a stand-in's is its process's).
fn cmdline(pid: i32) -> Result<Vec<Vec<u8>>> {
    let path = format!("/proc/{pid}/cmdline");
    let raw = std::fs::read(&path).map_err(|e| ChkptError::io(&path, e))?;
    Ok(raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// `--kill`: the stand-ins end with the tree (each one's process ends
/// with it, on its node, as when a stand-in is killed).
pub(super) fn kill(stand_ins: &[i32]) {
    for &p in stand_ins {
        // SAFETY: plain kill(2) of a process of the tree, which is ours.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}
