//! The files of an SN once the tree runs again: page runs and metadata of
//! every memory file, task files, the node and global files, the readable
//! description (see [`super::checkpoint_shipped`], step 6).

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use crate::checked_dir::CheckedDir;
use crate::error::{ChkptError, Result};
use crate::image::{self, FileKind, GlobalImage, Names, NodeImage, StandInEntry, TaskEntry};
use crate::timings::mark;
use crate::{procfs, store};

use super::freeze::Owner;
use super::precopy::ProcMem;
use super::task::TaskDump;
use super::{copy, memory, TreeState};

/// The memory files: those of processes gone before the freeze removed,
/// the page runs of the others made and their metadata written. Returns
/// the SN the tree refers to, if any.
pub(super) fn memory_files(
    staging: &store::Staging,
    tree: &[(i32, i32)],
    tasks: &mut [TaskDump],
    mems: &HashMap<i32, ProcMem>,
    frozen_for: Duration,
) -> Result<Option<u32>> {
    for name in staging.dir.entries()? {
        // memory files of processes gone before the freeze
        let Some(name) = name.to_str() else { continue };
        let pid = name
            .strip_prefix("task_mm_")
            .and_then(|r| r.split('_').next())
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| !tree.iter().any(|t| t.0 == p)) {
            staging.dir.remove_file(name)?;
        }
    }
    for d in tasks.iter_mut() {
        if let Some(mem) = mems.get(&d.task.pid) {
            memory::shared_crcs(&mut d.mm.vmas, &mem.data);
            mem.fill_runs(&mut d.mm.vmas);
        }
    }
    mark("page_runs");
    finish_mm(tasks, mems, frozen_for)
}

/// Complete each memory image (parent, tracker, frozen time) and write its
/// metadata after its pages. Returns the SN the tree refers to, if any.
fn finish_mm(
    tasks: &mut [TaskDump],
    mems: &HashMap<i32, ProcMem>,
    frozen: Duration,
) -> Result<Option<u32>> {
    let mut parent = None;
    for d in tasks.iter_mut() {
        let p = d.task.pid;
        let mem = mems
            .get(&p)
            .ok_or_else(|| ChkptError::Inconsistent(format!("no memory state of {p}")))?;
        let refers =
            d.mm.vmas
                .iter()
                .flat_map(|v| &v.runs)
                .any(|r| r.data == image::RunData::Parent);
        d.mm.parent = mem.parent.filter(|_| refers);
        parent = parent.or(d.mm.parent);
        d.mm.tracker = mem.tracker.as_ref().map(|t| t.record());
        d.mm.frozen_us = frozen.as_micros() as u64;
        let data_len = mem.data.slots * image::PAGE;
        image::finish_with_data(
            &mem.data.file,
            &mem.data.path,
            FileKind::Mm,
            &d.mm,
            copy::DATA_OFF,
            data_len,
        )?;
    }
    Ok(parent)
}

pub(super) fn write_tasks(dir: &CheckedDir, names: &Names, tasks: &[TaskDump]) -> Result<()> {
    for d in tasks {
        image::write_small(dir, &names.task(d.task.pid), FileKind::Task, &d.task)?;
    }
    Ok(())
}

/// The node file: the tasks in tree order (parents before children),
/// zombies among them; the stand-ins.
pub(super) fn node_image(
    node: u32,
    state: &TreeState,
    tree: &[(i32, i32)],
    zombies: Vec<TaskEntry>,
    stand_ins: Vec<StandInEntry>,
) -> NodeImage {
    let mut tasks: Vec<TaskEntry> = state
        .tasks
        .iter()
        .map(|d| TaskEntry {
            pid: d.task.pid,
            ppid: d.task.ppid,
            threads: d.task.threads.iter().map(|t| t.tid).collect(),
            zombie: None,
        })
        .chain(zombies)
        .collect();
    let at = |p: i32| tree.iter().position(|t| t.0 == p).unwrap_or(usize::MAX);
    tasks.sort_by_key(|t| at(t.pid));
    NodeImage {
        node,
        tasks,
        pipes: state.files.pipes.clone(),
        shared_mem: state.shared_mem.clone(),
        sysv_shm: state.sysv.shm.clone(),
        sysv_sem: state.sysv.sem.clone(),
        sysv_msg: state.sysv.msg.clone(),
        in_flight: state.files.in_flight.clone(),
        sockets: state.files.socket_extras.clone(),
        stand_ins,
    }
}

/// `nodes`: this node, and the nodes that saved parts of the
/// application (their bits in the node mask; their files are there).
pub(super) fn global_image(
    pid: i32,
    names: &Names,
    nodes: &[u32],
    owner: Owner,
    frozen: Duration,
    parent: Option<u32>,
    pidns: Vec<(i32, i32)>,
) -> Result<GlobalImage> {
    Ok(GlobalImage {
        app_id: pid,
        sn: names.sn,
        node_mask: nodes
            .iter()
            .fold(0, |m, &n| m | 1u64.checked_shl(n).unwrap_or(0)),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        uid: owner.uid,
        kernel: procfs::read_to_string("/proc/sys/kernel/osrelease")?
            .trim()
            .to_string(),
        frozen_us: frozen.as_micros() as u64,
        parent,
        pidns,
    })
}

/// The node and global files, and the readable description.
pub(super) fn write_metadata(
    dir: &CheckedDir,
    names: &Names,
    global: &GlobalImage,
    node: &NodeImage,
    tasks: &[TaskDump],
) -> Result<()> {
    image::write_small(dir, &names.node(node.node), FileKind::Node, node)?;
    image::write_small(dir, &names.global(), FileKind::Global, global)?;
    let views: Vec<_> = tasks.iter().map(|d| (&d.task, &d.mm)).collect();
    let desc = crate::describe::description(global, node, &views);
    let dname = names.description();
    dir.create_file(&dname)?
        .write_all(desc.as_bytes())
        .map_err(|e| ChkptError::io(dir.join(&dname), e))
}
