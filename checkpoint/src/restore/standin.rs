//! Stand-ins ([`StandInEntry`]): processes of the tree that had moved to
//! other nodes, whose nodes saved them. Each stand-in is forked again with
//! its PID inside its parent, joins its process group and session, gets
//! its fds 0-2 from what restart made for the tree, takes its parent's
//! credentials (none are read from the image), and executes `krg` as the
//! stand-in of its process, with the token its caller (krgd, which has the
//! process restored on its node meanwhile) gave for it.

use std::collections::HashMap;

use crate::error::{ChkptError, Result};
use crate::image::{FdKind, NodeImage, StandInEntry};
use crate::ptrace::{self, Injector};

use super::ctx::{take_creds, AREA_CODE, AREA_SCRATCH};
use super::fork::{fork_child, join_ids, CreatedTasks, PidPolicy};
use super::load::Loaded;
use super::plan::TreeFds;

/// The stand-ins SN `sn` of application `app` under `root` holds (in the
/// node file of `node`, or of the one node it holds), with the uid that
/// owns the image, to ask krgd for their tokens before restart.
/// Everything is checked again at restart.
pub fn listed(
    root: &std::path::Path,
    app: i32,
    sn: u32,
    node: Option<u32>,
) -> Result<(Vec<StandInEntry>, u32)> {
    let (dir, g, gfile) = super::load::open_global(&crate::store::app_dir(root, app), sn)?;
    let names = crate::image::Names { sn };
    let node = match node {
        Some(n) => n,
        None => super::load::only_node(&g.meta, &dir, &names)?,
    };
    let (n, nfile) =
        crate::image::read_in::<NodeImage>(&dir, &names.node(node), crate::image::FileKind::Node)?;
    if nfile.uid != gfile.uid {
        return Err(ChkptError::bad_image(
            nfile.path,
            "not owned as its global file is",
        ));
    }
    Ok((n.meta.stand_ins, gfile.uid))
}

/// Fork and start every stand-in of `l` (its parents forked already,
/// restart's working fds `work` still open in them).
pub(super) fn restore(
    l: &Loaded,
    injectors: &HashMap<i32, Injector>,
    work: &TreeFds<'_>,
    pids: PidPolicy,
    created: &mut CreatedTasks,
) -> Result<()> {
    if l.node.stand_ins.is_empty() {
        return Ok(());
    }
    let start = l.stand_in_start.as_ref().ok_or_else(|| {
        ChkptError::Usage("the image holds stand-ins and restart was given no tokens".into())
    })?;
    let area = work.area;
    for s in &l.node.stand_ins {
        let token = start
            .tokens
            .iter()
            .find(|t| t.0 == s.pid)
            .map(|t| t.1)
            .ok_or_else(|| ChkptError::Usage(format!("no token for stand-in {}", s.pid)))?;
        let parent = injectors.get(&s.ppid).ok_or_else(|| {
            ChkptError::Inconsistent(format!("stand-in {} has no parent {}", s.pid, s.ppid))
        })?;
        let pid = fork_child(parent, area, s.pid, pids)?;
        created.pids.push(pid);
        let inj = Injector::new(pid, area + AREA_CODE)?;
        join_ids(&inj, pid, s.pgid, s.sid, &created.pids)?;
        super::fds::close_missing_stdio(&inj, &s.stdio)?;
        for f in s
            .stdio
            .iter()
            .filter(|f| !matches!(f.kind, FdKind::InheritedStdio { .. }))
        {
            super::fds::install(&inj, f, work.pipe_fds, work.file_fds)?;
        }
        parents_creds(l, s, &inj, area)?;
        let env = vec![
            format!("{}={token:x}", crate::standin::TOKEN_VAR),
            format!("KRG_SOCKET={}", start.socket.display()),
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            format!("{}=", crate::standin::SAVED_VAR),
        ];
        let what = crate::standin::StandIn {
            program: &start.program,
            argv: &s.argv,
            env: &env,
        };
        crate::standin::exec_restored(pid, &inj, &what)?;
        ptrace::detach(pid)?;
    }
    Ok(())
}

/// A stand-in belongs to whom its parent belongs (as a zombie does).
fn parents_creds(l: &Loaded, s: &StandInEntry, inj: &Injector, area: u64) -> Result<()> {
    let Some(p) = l.tasks.iter().find(|t| t.task.pid == s.ppid) else {
        return Err(ChkptError::Inconsistent(format!(
            "stand-in {} has no parent {}",
            s.pid, s.ppid
        )));
    };
    take_creds(inj, area + AREA_SCRATCH, &p.task)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test
    use super::super::load::check_stand_ins as check;
    use super::*;
    use crate::image::{PartRef, TaskEntry};

    fn node(pgid: i32, sid: i32) -> NodeImage {
        NodeImage {
            tasks: vec![TaskEntry {
                pid: 10,
                ppid: 1,
                threads: vec![10],
                zombie: None,
            }],
            stand_ins: vec![StandInEntry {
                pid: 11,
                ppid: 10,
                pgid,
                sid,
                argv: vec![b"sleep".to_vec()],
                stdio: vec![],
                part: PartRef {
                    node: 2,
                    pid: 11,
                    host_pid: 500,
                    sn: 1,
                },
            }],
            ..NodeImage::empty(1)
        }
    }

    /// A tree under an init that never called setsid (CI's, a container's)
    /// or in a PID namespace of its own sees session and group 0: its
    /// stand-ins restart as well (they stay in restart's group).
    #[test]
    fn group_and_session_zero_are_accepted() {
        check(&node(0, 0), &[]).unwrap();
        check(&node(10, 10), &[]).unwrap();
        let e = check(&node(-3, 0), &[]).unwrap_err();
        assert!(e.contains("negative process group"), "{e}");
    }
}
