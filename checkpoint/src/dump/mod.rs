//! `checkpoint PID`: freeze the tree, read its state, write one SN, let it
//! run — in named phases, as CRIU's `cr-dump.c` has them.
//!
//! - [`freeze`] — owner, refusals, ptrace seizure
//! - [`files`] — fd tables, pipes, shared open file descriptions
//! - [`task`] — one task's state by /proc and injected system calls
//! - [`memory`] — which pages, and the raw copy
//! - [`sysv`] — SysV IPC objects

mod files;
mod freeze;
mod memory;
mod sysv;
mod task;

pub use freeze::tree;

use std::io::Write;
use std::path::PathBuf;

use crate::checked_dir::CheckedDir;
use crate::error::{ChkptError, Result};
use crate::image::{self, FileKind, GlobalImage, Names, NodeImage, TaskEntry};
use crate::{procfs, store};

use freeze::{Frozen, Owner};
use task::TaskDump;

pub struct DumpOptions {
    /// Root of the checkpoint store (`/var/chkpt`).
    pub root: PathBuf,
    /// Kill the tree once it is saved.
    pub kill: bool,
    /// This node's id (names the node file).
    pub node: u32,
    /// SysV semaphore sets and message queues that belong to the job.
    pub sysv_sem: Vec<i32>,
    pub sysv_msg: Vec<i32>,
}

#[derive(Debug)]
pub struct DumpReport {
    pub sn: u32,
    pub dir: PathBuf,
    pub tasks: Vec<i32>,
    pub image_bytes: u64,
}

/// Called with (bytes done, bytes total) while pages are copied.
pub type Progress<'a> = &'a dyn Fn(u64, u64);

/// Everything read from the frozen tree, before any file is written.
struct TreeState {
    tasks: Vec<TaskDump>,
    files: files::TreeFiles,
    shared_mem: Vec<image::SharedMemObject>,
    sysv: sysv::TreeSysv,
}

pub fn checkpoint(pid: i32, opts: &DumpOptions, progress: Progress) -> Result<DumpReport> {
    // SAFETY: getuid has no preconditions.
    let caller = unsafe { libc::getuid() };
    // 1. Who owns the job, and its directory, locked and cleaned.
    let owner = freeze::tree_owner(&tree(pid)?, caller)?;
    let dir = store::prepare_dir(&opts.root, pid, owner.uid, owner.gid)?;
    let _lock = store::lock(&dir)?;
    store::cleanup(&dir);
    let names = Names {
        sn: store::committed_sns(&dir).last().map_or(1, |s| s + 1),
    };
    // 2. Freeze (any error from here on lets the job go untouched).
    let mut frozen = Frozen::default();
    let tree = freeze::freeze(pid, caller, &mut frozen)?;
    if freeze::tree_owner(&tree, caller)? != owner {
        return Err(ChkptError::Changed(format!(
            "the credentials of process {pid}'s tree changed while it was being frozen"
        )));
    }
    // 3. Read the tree's state.
    let state = read_tree(&tree, opts, caller)?;
    // 4. Write pages and task files while still frozen.
    let staging = store::stage(&dir, names.sn)?;
    write_tasks(&staging.dir, &names, &state.tasks, progress)?;
    // 5. Let the job run again (or end it with --kill).
    frozen.kill = opts.kill;
    drop(frozen);
    // 6. Node, global and description files; commit.
    let node = node_image(opts.node, &state);
    let global = global_image(pid, &names, opts.node, owner)?;
    write_metadata(&staging.dir, &names, &global, &node, &state.tasks)?;
    let image_bytes = staging.chown_all(owner.uid, owner.gid)?;
    staging.commit(&dir, &names.global())?;
    Ok(DumpReport {
        sn: names.sn,
        dir: dir.path().to_path_buf(),
        tasks: tree.iter().map(|t| t.0).collect(),
        image_bytes,
    })
}

/// fd tables first (pipes are classified with the whole tree in view), then
/// each task's state and memory plan, then SysV objects — while frozen: a
/// removed segment vanishes with its last user.
fn read_tree(tree: &[(i32, i32)], opts: &DumpOptions, caller: u32) -> Result<TreeState> {
    let mut files = files::collect(tree)?;
    let mut shared = memory::SharedSeen::new();
    let mut tasks = Vec::new();
    for &(p, pp) in tree {
        let fds = files.fds.remove(&p).unwrap_or_default();
        tasks.push(task::dump_task(p, pp, fds, &mut shared)?);
    }
    let mms = tasks.iter().map(|d| &d.mm);
    let sysv = sysv::collect(mms, &opts.sysv_sem, &opts.sysv_msg, caller)?;
    Ok(TreeState {
        tasks,
        files,
        shared_mem: memory::shared_sizes(&shared),
        sysv,
    })
}

fn write_tasks(
    dir: &CheckedDir,
    names: &Names,
    tasks: &[TaskDump],
    progress: Progress,
) -> Result<()> {
    let total: u64 = tasks.iter().map(|d| d.pages * image::PAGE).sum();
    let done = std::cell::Cell::new(0u64);
    for d in tasks {
        let p = d.task.pid;
        let mut f = dir.create_file(&names.task_mm(p))?;
        memory::write_mm(p, &d.mm, d.pages, &mut f, &|n| {
            done.set(done.get() + n);
            progress(done.get(), total);
        })?;
        image::write_small(dir, &names.task(p), FileKind::Task, &d.task)?;
    }
    Ok(())
}

fn node_image(node: u32, state: &TreeState) -> NodeImage {
    NodeImage {
        node,
        tasks: state
            .tasks
            .iter()
            .map(|d| TaskEntry {
                pid: d.task.pid,
                ppid: d.task.ppid,
                threads: d.task.threads.iter().map(|t| t.tid).collect(),
            })
            .collect(),
        pipes: state.files.pipes.clone(),
        shared_mem: state.shared_mem.clone(),
        sysv_shm: state.sysv.shm.clone(),
        sysv_sem: state.sysv.sem.clone(),
        sysv_msg: state.sysv.msg.clone(),
    }
}

fn global_image(pid: i32, names: &Names, node: u32, owner: Owner) -> Result<GlobalImage> {
    Ok(GlobalImage {
        app_id: pid,
        sn: names.sn,
        node_mask: 1u64.checked_shl(node).unwrap_or(0),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        uid: owner.uid,
        kernel: procfs::read_to_string("/proc/sys/kernel/osrelease")?
            .trim()
            .to_string(),
    })
}

/// The node and global files, and the readable description.
fn write_metadata(
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
