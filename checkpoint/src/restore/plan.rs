//! The plan of a tree's memory restore, made before any task is forked:
//! which pieces each task reads, leaves to the page server or has copied
//! in, and which children share pages with their parent (forked once the
//! parent's memory is back, they inherit them); and what every task's
//! restore context shares.

use std::collections::HashMap;

use crate::error::{ChkptError, Result};
use crate::image::{MmImage, RunData, PAGE};
use crate::ptrace::Injector;

use super::ctx::TaskCtx;
use super::load::{Loaded, LoadedTask};
use super::pages::Piece;

/// Where each task's saved pages go, decided before any task is forked.
pub(super) struct MemPlan {
    /// Per task: pieces it reads itself, pieces left to the page server
    /// (`--lazy`), pieces restart copies in.
    pub pieces: Vec<[Vec<Piece>; 3]>,
    pub inherit: Inheritance,
}

impl MemPlan {
    pub fn new(l: &Loaded, lazy: bool) -> Result<Self> {
        let inherit = Inheritance::of(&l.tasks)?;
        Ok(MemPlan {
            pieces: split_pieces(&l.tasks, &inherit, lazy),
            inherit,
        })
    }
}

/// Which tasks share pages with their parent ([`RunData::Cow`]).
pub(super) struct Inheritance {
    /// Per task: the index of its parent in the image, if there.
    pub parent: Vec<Option<usize>>,
    /// Per task: does it share pages with its parent?
    pub shares: Vec<bool>,
    /// Per task: the ranges its children share with it.
    pub handed_down: Vec<Vec<(u64, u64)>>,
}

impl Inheritance {
    /// Checked: a task shares pages only with a parent restored before it,
    /// in mappings that parent has alike.
    pub fn of(tasks: &[LoadedTask]) -> Result<Self> {
        let n = tasks.len();
        let parent: Vec<Option<usize>> = tasks
            .iter()
            .map(|t| tasks.iter().position(|p| p.task.pid == t.task.ppid))
            .collect();
        let mut shares = vec![false; n];
        let mut handed_down: Vec<Vec<(u64, u64)>> = vec![Vec::new(); n];
        for (idx, t) in tasks.iter().enumerate() {
            let cow = cow_ranges(&t.mm);
            if cow.is_empty() {
                continue;
            }
            let p = parent[idx].filter(|&p| p < idx).ok_or_else(|| {
                ChkptError::Inconsistent(format!(
                    "task {} shares pages with a parent not restored before it",
                    t.task.pid
                ))
            })?;
            let pm = &tasks[p].mm;
            for v in
                t.mm.vmas
                    .iter()
                    .filter(|v| v.runs.iter().any(|r| r.data == RunData::Cow))
            {
                if !pm.vmas.iter().any(|pv| pv.same_mapping(v)) {
                    return Err(ChkptError::Inconsistent(format!(
                        "task {} shares pages of {:#x}-{:#x} with its parent, which maps no such area",
                        t.task.pid, v.start, v.end
                    )));
                }
            }
            shares[idx] = true;
            handed_down[p].extend(cow);
        }
        Ok(Inheritance {
            parent,
            shares,
            handed_down,
        })
    }
}

/// Per task: the pieces it reads itself, those left to the page server
/// (`lazy`), those restart copies in — with `lazy`, the pages its children
/// inherit among them (they must be in before the children are forked),
/// and those of its command line and environment.
pub(super) fn split_pieces(
    tasks: &[LoadedTask],
    inherit: &Inheritance,
    lazy: bool,
) -> Vec<[Vec<Piece>; 3]> {
    tasks
        .iter()
        .zip(&inherit.handed_down)
        .map(|(t, down)| {
            let (read, anon) = super::fill::split(&t.task, &t.mm.vmas, &t.pieces);
            if !lazy {
                return [read, Vec::new(), anon];
            }
            let mut early = down.clone();
            early.extend(shown_in_proc(&t.mm));
            let (now, later) = super::lazy::divide(&anon, &early);
            [read, later, now]
        })
        .collect()
}

/// The pages of a process's command line and environment, as page-aligned
/// ranges: `ps`, `pgrep` and `krg ps` read them through /proc, and a read
/// from another process is not served by the userfaultfd (the kernel
/// cannot wait there: the page reads as missing, the command line as
/// empty), so they are copied in before the process runs.
fn shown_in_proc(mm: &MmImage) -> impl Iterator<Item = (u64, u64)> {
    let p = &mm.params;
    [(p.arg_start, p.arg_end), (p.env_start, p.env_end)]
        .into_iter()
        // (an edited image may say anything: an empty or reversed range is none)
        .filter(|&(s, e)| s < e)
        .map(|(s, e)| (s & !(PAGE - 1), e.saturating_add(PAGE - 1) & !(PAGE - 1)))
}

/// The pages of `mm` shared with the parent process, as sorted ranges.
fn cow_ranges(mm: &MmImage) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = mm
        .vmas
        .iter()
        .flat_map(|v| &v.runs)
        .filter(|r| r.data == RunData::Cow)
        .map(|r| (r.addr, r.addr + r.pages * PAGE))
        .collect();
    v.sort_unstable();
    v
}

/// What the restore of every task shares: the injection area, the fds
/// restart set up in the root for the whole tree.
pub(super) struct TreeFds<'a> {
    pub area: u64,
    pub data_fds: i32,
    pub pipe_fds: &'a HashMap<u64, (i32, i32)>,
    pub shm_fds: &'a HashMap<u64, i32>,
    pub deleted_fds: &'a HashMap<u64, i32>,
    pub file_fds: &'a HashMap<u32, i32>,
    pub work_end: i32,
}

impl TreeFds<'_> {
    pub fn ctx<'a>(
        &'a self,
        l: &'a Loaded,
        idx: usize,
        inj: &'a Injector,
        plan: &'a MemPlan,
        first_holder: &'a HashMap<u32, i32>,
    ) -> TaskCtx<'a> {
        let t = &l.tasks[idx];
        let [read, lazy, copied] = &plan.pieces[idx];
        TaskCtx {
            inj,
            area: self.area,
            task: &t.task,
            mm: &t.mm,
            pieces: read,
            lazy,
            copied,
            data_fds: self.data_fds,
            files: &l.files,
            checks: &l.checks,
            work_base: self.data_fds,
            pipe_fds: self.pipe_fds,
            shm_fds: self.shm_fds,
            deleted_fds: self.deleted_fds,
            file_fds: self.file_fds,
            first_holder,
            work_end: self.work_end,
        }
    }

    /// The memory of task `idx` (see [`TaskCtx::restore_memory`]).
    pub fn memory(
        &self,
        l: &Loaded,
        idx: usize,
        injectors: &HashMap<i32, Injector>,
        plan: &MemPlan,
    ) -> Result<()> {
        let pid = l.tasks[idx].task.pid;
        let inj = injectors
            .get(&pid)
            .ok_or_else(|| ChkptError::Inconsistent(format!("task {pid} was not created")))?;
        // (only the fds need the first holders)
        self.ctx(l, idx, inj, plan, &HashMap::new())
            .restore_memory()
    }
}
