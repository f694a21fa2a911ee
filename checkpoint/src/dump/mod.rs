//! `checkpoint PID`: save memory while the job runs, freeze the tree for
//! what changed meanwhile and for its other state, let it run, write one
//! SN — in named phases, as CRIU's `cr-dump.c` has them.
//!
//! - [`freeze`] — owner, refusals, ptrace seizure; [`refuse`] more of them
//! - [`seccomp`] — each thread's seccomp mode and filters
//! - [`attrs`] — prctl settings, scheduling, capabilities… of a task
//! - [`track`] — the dirty-page tracker krg keeps in each process
//! - [`precopy`] — private memory, in rounds while the job runs, the last
//!   one frozen; [`pages`] its page states, [`copy`] the copy itself
//! - [`files`] — fd tables, pipes, shared open file descriptions ([`fdkind`]:
//!   what one descriptor is);
//!   [`anon`] eventfd, timerfd, signalfd, epoll; [`sockets`] (their
//!   options: [`sockopts`]; connections not accepted yet: [`accept`];
//!   what waits on a unix socket: [`unixq`]);
//!   [`pty`];
//!   [`held`]
//!   locks, FIFOs, deleted files; [`inotify`]; [`fanotify`]; [`mqueue`]; [`inflight`]
//!   files sent over unix sockets and not received yet
//! - [`task`] — one task's state by /proc and injected system calls;
//!   [`timers`] its POSIX timers
//! - [`memory`] — mappings, shared memory (copied while frozen)
//! - [`cow`] — pages a child still shares with its parent since a fork
//! - [`sysv`] — SysV IPC objects
//! - [`pidns`] — the PIDs of a tree in a PID namespace below ours;
//!   [`mntns`] the mounts of such a tree's own mount namespace
//! - [`standins`] — stand-ins of processes that moved to other nodes
//! - [`write`] — the files of the SN, once the tree runs again

mod accept;
mod anon;
mod attrs;
mod copy;
mod cow;
mod fanotify;
mod fdkind;
mod files;
mod freeze;
mod held;
mod inflight;
mod inotify;
mod memory;
mod mntns;
mod mqueue;
mod pages;
mod pidns;
mod precopy;
mod pty;
mod refuse;
mod seccomp;
mod ship;
mod sockets;
mod sockopts;
mod standins;
mod sysv;
mod task;
mod timers;
mod track;
mod unixq;
mod write;

pub use freeze::tree;
pub use ship::{Ship, Staged};
pub use sockets::unix_path;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::checked_dir::CheckedDir;
use crate::error::{ChkptError, Result};
use crate::image::{self, FileKind, MmImage, Names, TaskEntry};
use crate::store;

use crate::timings::mark;
use copy::DataFile;
use freeze::{living, precheck, Boost, Frozen};
use precopy::ProcMem;
use task::TaskDump;
use write::{global_image, memory_files, node_image, write_metadata, write_tasks};

pub struct DumpOptions {
    /// Root of the checkpoint store (`/var/chkpt`).
    pub root: PathBuf,
    /// Kill the tree once it is saved.
    pub kill: bool,
    /// Leave the tree stopped (SIGSTOP) once it is saved (a migration's
    /// origin copy, until the target has taken over).
    pub stop: bool,
    /// This node's id (names the node file).
    pub node: u32,
    /// SysV semaphore sets and message queues that belong to the job.
    pub sysv_sem: Vec<i32>,
    pub sysv_msg: Vec<i32>,
    /// Save every page (start a new chain), even if an earlier SN has them.
    pub full: bool,
    /// The tree may live in a PID namespace below ours (a `krg run` job):
    /// each PID's number there is saved with the image, and restart gives
    /// it back in a new namespace (krgd moving a job translates them
    /// itself).
    pub other_pidns: bool,
    /// Regular files (device, inode) that stand for stdio leading out of
    /// the tree when a task has them on fd 0, 1 or 2: saved as such, and
    /// given restart's own fds of the same number, as a pipe to the job's
    /// launcher would be. krgd moving a detached job: its output files
    /// stay on the origin, fed by a relay.
    pub stdio_files: Vec<(u64, u64)>,
    /// The tree's stand-ins (by PID) and where each one's process was
    /// saved: the node it runs on saved it first, at the caller's request.
    /// A stand-in not listed is refused.
    pub stand_ins: Vec<(i32, image::PartRef)>,
}

#[derive(Debug)]
pub struct DumpReport {
    pub sn: u32,
    pub dir: PathBuf,
    pub tasks: Vec<i32>,
    pub image_bytes: u64,
    /// How long the tree was stopped.
    pub frozen: Duration,
    /// When the freeze began (with `stop`, the tree is still stopped).
    pub frozen_at: Instant,
    /// The SN this one is incremental on.
    pub parent: Option<u32>,
    /// Where the time went, phase by phase (see [`crate::timings`]); the
    /// phases between `freeze` and `resume` are the frozen time.
    pub phases: Vec<crate::timings::Phase>,
    /// With a [`Ship`]: for each memory file (by name) the byte ranges that
    /// differ from what was shipped before the freeze (header, pages copied
    /// since, metadata). Files not listed must be sent whole.
    pub delta: HashMap<String, Vec<(u64, u64)>>,
    /// For each memory file copied while the job ran (by name), the byte
    /// range its page data takes (a post-copy migration sends the rest
    /// first, and this range after the job runs on the target).
    pub page_data: HashMap<String, (u64, u64)>,
    /// Processes that job control had stopped before the freeze: with
    /// `stop`, whoever lets the tree run on again leaves them stopped.
    pub stopped_before: Vec<i32>,
}

/// Called with (bytes done, bytes known so far) while pages are copied.
pub type Progress<'a> = &'a dyn Fn(u64, u64);

/// Precopy rounds after the first, while they still copy this much.
const MORE_ROUNDS: usize = 2;
const ROUND_SMALL: u64 = 8 << 20;

pub fn checkpoint(pid: i32, opts: &DumpOptions, progress: Progress) -> Result<DumpReport> {
    checkpoint_shipped(pid, opts, progress, None)
}

/// [`checkpoint`], the memory files handed to `ship` before the freeze.
pub fn checkpoint_shipped(
    pid: i32,
    opts: &DumpOptions,
    progress: Progress,
    mut ship: Option<&mut dyn Ship>,
) -> Result<DumpReport> {
    crate::timings::start();
    // SAFETY: getuid has no preconditions.
    let caller = unsafe { libc::getuid() };
    // 1. Who owns the job, and its directory, locked and cleaned.
    let owner = freeze::tree_owner(&tree(pid)?, caller)?;
    let dir = store::prepare_dir(&opts.root, pid, owner.uid, owner.gid)?;
    let _lock = store::lock(&dir)?;
    store::cleanup(&dir);
    let hist = store::History::read(&dir);
    let names = Names { sn: hist.next_sn() };
    mark("prepare");
    // 2. What this version refuses, found while the job runs on.
    let tree0 = precheck(pid, caller, opts.other_pidns, &opts.stdio_files)?;
    standins::check(pid, &standins::of(&tree0), &opts.stand_ins)?;
    if opts.other_pidns {
        // refused before any page is copied; read again once frozen
        pidns::map(pid, &tree0)?;
    }
    if freeze::zombie(pid).is_some() {
        return Err(ChkptError::unsupported(
            pid,
            "a zombie process",
            "it has exited: there is nothing to checkpoint",
        ));
    }
    mark("precheck");
    // 3. Memory, while the job runs.
    let mut staging = store::stage(&dir, names.sn)?;
    let base = Baseline {
        dir: &dir,
        latest: hist.latest(),
        parent: hist.baseline().filter(|_| !opts.full),
    };
    let shown = std::cell::Cell::new(0u64);
    let tick = |n: u64| {
        shown.set(shown.get() + n);
        progress(shown.get(), shown.get());
    };
    // From here on the trackers are reset: an attempt that does not commit
    // must leave its number dead (see store).
    staging.touched = true;
    let mut mems = precopy_tree(
        &living(&tree0),
        &base,
        &staging,
        &names,
        &tick,
        ship::reborrow(&mut ship),
    )?;
    mark("precopy");
    cow::compare_early(&living(&tree0), &mut mems);
    mark("cow_early");
    let shipped = match ship {
        Some(s) => ship::ship_rounds(s, &mut mems, &names, &tick)?,
        None => false,
    };
    // 4. Freeze, read the rest, copy what changed (any error from here on
    // lets the job go untouched). Every injected call while frozen is a
    // round trip through the scheduler: on a loaded machine, waiting less
    // for a CPU is what keeps the freeze short.
    let _boost = Boost::new();
    // (with --kill they are read while frozen: no read before is needed)
    let vma_pre: HashMap<i32, attrs::VmaFlags> = living(&tree0)
        .iter()
        .filter(|_| !opts.kill)
        .map(|&(p, _)| (p, attrs::vma_flags(p)))
        .collect();
    mark("vma_flags_pre");
    let started = Instant::now();
    let mut frozen = Frozen::default();
    let tree = freeze::freeze(pid, caller, opts.other_pidns, &mut frozen)?;
    mark("freeze");
    let pidns = if opts.other_pidns {
        pidns::map(pid, &tree)?
    } else {
        Vec::new()
    };
    if freeze::tree_owner(&tree, caller)? != owner {
        return Err(ChkptError::Changed(format!(
            "the credentials of process {pid}'s tree changed while it was being frozen"
        )));
    }
    let zombies: Vec<TaskEntry> = tree
        .iter()
        .filter_map(|&(p, pp)| {
            freeze::zombie(p).map(|z| TaskEntry {
                pid: p,
                ppid: pp,
                threads: Vec::new(),
                zombie: Some(z),
            })
        })
        .collect();
    let stand_in_pids = standins::of(&tree);
    standins::check(pid, &stand_in_pids, &opts.stand_ins)?;
    if !pidns.is_empty() {
        standins::not_in_a_job(&stand_in_pids)?;
    }
    let live = living(&tree);
    let how = How {
        opts,
        caller,
        frozen: &frozen,
        stand_ins: &stand_in_pids,
    };
    let mut state = read_tree(&live, &how, &mut mems, &staging, &names, &tick)?;
    let stand_ins = standins::entries(&tree, &opts.stand_ins, &mut state.files.fds, &state.tasks)?;
    frozen.repaired = std::mem::take(&mut state.files.repaired);
    mark("frozen_read");
    // 5. Let the job run again (or end it with --kill).
    frozen.kill = opts.kill;
    frozen.stop = opts.stop;
    // mapping flags read while frozen only where no read before it can
    // stand in: a task born since, a job that ends here (--kill: its
    // freeze costs it nothing), or a small one (its smaps costs about a
    // millisecond, less than a retry when a mapping made and gone around
    // the freeze leaves the reads before and after it in doubt)
    let vma_frozen: HashMap<i32, attrs::VmaFlags> = state
        .tasks
        .iter()
        .map(|d| d.task.pid)
        .filter(|&p| opts.kill || !vma_pre.contains_key(&p) || attrs::small(p))
        .map(|p| (p, attrs::vma_flags(p)))
        .collect();
    let stopped_before: Vec<i32> = frozen.stopped.keys().copied().collect();
    drop(frozen);
    if opts.kill {
        standins::kill(&stand_in_pids);
    }
    let frozen_for = started.elapsed();
    drop(_boost);
    mark("resume");
    // 6. Memory files, the mapping flags after the freeze, task, node,
    // global and description files; commit. The flags (a page-table walk
    // of the job's memory) are read by another thread meanwhile.
    let later: Vec<i32> = state
        .tasks
        .iter()
        .map(|d| d.task.pid)
        .filter(|p| !vma_frozen.contains_key(p))
        .collect();
    let (vma_post, parent) = std::thread::scope(|sc| -> Result<_> {
        let reader = sc.spawn(|| {
            later
                .iter()
                .map(|&p| (p, attrs::vma_flags(p)))
                .collect::<HashMap<i32, attrs::VmaFlags>>()
        });
        let parent = memory_files(&staging, &tree, &mut state.tasks, &mems, frozen_for);
        let post = reader
            .join()
            .map_err(|_| ChkptError::Thread("the mapping flags reader panicked".into()))?;
        Ok((post, parent?))
    })?;
    for d in &mut state.tasks {
        let p = d.task.pid;
        let (pre, post) = match vma_frozen.get(&p) {
            Some(f) => (Some(f), f),
            None => (
                vma_pre.get(&p),
                vma_post
                    .get(&p)
                    .ok_or_else(|| ChkptError::Inconsistent(format!("no mapping flags of {p}")))?,
            ),
        };
        attrs::settle_vma_flags(p, &mut d.task.attrs, &d.mm.vmas, pre, post)?;
    }
    mark("vma_flags_post");
    write_tasks(&staging.dir, &names, &state.tasks)?;
    let node = node_image(opts.node, &state, &tree, zombies, stand_ins);
    let nodes: Vec<u32> = std::iter::once(opts.node)
        .chain(opts.stand_ins.iter().map(|(_, p)| p.node))
        .collect();
    let global = global_image(pid, &names, &nodes, owner, frozen_for, parent, pidns)?;
    write_metadata(&staging.dir, &names, &global, &node, &state.tasks)?;
    let image_bytes = staging.chown_all(owner.uid, owner.gid)?;
    mark("write_files");
    let delta = if shipped {
        ship::delta(&mut mems, &names)?
    } else {
        HashMap::new()
    };
    let page_data = ship::page_data(&mems, &names);
    staging.commit(&dir, &names.global())?;
    mark("commit");
    Ok(DumpReport {
        sn: names.sn,
        dir: dir.path().to_path_buf(),
        tasks: tree.iter().map(|t| t.0).collect(),
        image_bytes,
        frozen: frozen_for,
        frozen_at: started,
        parent,
        phases: crate::timings::take(),
        delta,
        page_data,
        stopped_before,
    })
}

/// Where the previous SNs are, and which one this one may build on.
struct Baseline<'a> {
    dir: &'a CheckedDir,
    /// The latest committed SN (its memory files record the trackers).
    latest: Option<u32>,
    /// The SN the trackers were last reset at, if this SN may refer to it.
    parent: Option<u32>,
}

impl Baseline<'_> {
    fn mm_of(&self, sn: u32, pid: i32) -> Option<MmImage> {
        let names = Names { sn };
        image::read_in::<MmImage>(self.dir, &names.task_mm(pid), FileKind::Mm)
            .ok()
            .map(|(d, _)| d.meta)
    }
}

/// The process's tracker (taken over, or created), and the parent's memory
/// image when its pages may be referred to.
fn tracker_for(pid: i32, base: &Baseline) -> Result<(Option<track::Tracker>, Option<MmImage>)> {
    let live = track::ours(pid);
    let start = task::start_time(pid)?;
    let recorded = base
        .latest
        .and_then(|sn| base.mm_of(sn, pid))
        .filter(|m| m.start_time == start)
        .and_then(|m| m.tracker);
    if let Some(rec) = recorded {
        if live.contains(&(rec.fd, rec.ino)) {
            if let Ok(t) = track::adopt(pid, rec.fd, rec.ino) {
                let parent = base
                    .parent
                    .filter(|&p| Some(p) == base.latest)
                    .and_then(|sn| base.mm_of(sn, pid));
                return Ok((Some(t), parent));
            }
        }
    }
    let stale: Vec<i32> = live.iter().map(|t| t.0).collect();
    // Without a tracker every page is copied while frozen, as before.
    Ok((track::create(pid, &stale).ok(), None))
}

/// Round 0 and the running rounds, for every process of the tree.
fn precopy_tree(
    tree: &[(i32, i32)],
    base: &Baseline,
    staging: &store::Staging,
    names: &Names,
    tick: &dyn Fn(u64),
    mut ship: Option<&mut dyn Ship>,
) -> Result<HashMap<i32, ProcMem>> {
    let mut mems = HashMap::new();
    for &(p, _) in tree {
        let one = precopy_one(
            p,
            tree.len() > 1,
            base,
            staging,
            names,
            tick,
            ship::reborrow(&mut ship),
        );
        match one {
            Ok(mem) => {
                mems.insert(p, mem);
            }
            // exited meanwhile: nothing to save (its file goes at commit)
            Err(e) if e.is_gone() && p != tree[0].0 => {}
            Err(e) => return Err(e),
        }
    }
    for _ in 0..MORE_ROUNDS {
        if mems.values().map(|m| m.last_round).sum::<u64>() < ROUND_SMALL {
            break;
        }
        for mem in mems.values_mut() {
            match mem.round(false, tick) {
                Err(e) if !e.is_gone() => return Err(e),
                _ => {}
            }
        }
    }
    Ok(mems)
}

/// Round 0 of one process (`forked`: of a tree of more than one, which
/// may share pages since a fork: see [`DataFile::keep_shared`]), handed
/// to `ship` part by part as it is copied.
fn precopy_one(
    p: i32,
    forked: bool,
    base: &Baseline,
    staging: &store::Staging,
    names: &Names,
    tick: &dyn Fn(u64),
    ship: Option<&mut dyn Ship>,
) -> Result<ProcMem> {
    let name = names.task_mm(p);
    let mut data = DataFile::new(staging.dir.create_file(&name)?, staging.dir.join(&name));
    if forked {
        data.keep_shared();
    }
    let (tracker, parent) = tracker_for(p, base)?;
    mark("tracker");
    let parent_sn = base.parent;
    let parent = parent.as_ref().and_then(|m| parent_sn.map(|sn| (sn, m)));
    let mut mem = ProcMem::new(p, data, tracker, parent)?;
    match ship {
        Some(s) => ship::first_round(s, &mut mem, names, tick)?,
        None => mem.round(false, tick)?,
    };
    Ok(mem)
}

/// Everything read from the frozen tree.
pub(crate) struct TreeState {
    tasks: Vec<TaskDump>,
    files: files::TreeFiles,
    shared_mem: Vec<image::SharedMemObject>,
    sysv: sysv::TreeSysv,
}

/// fd tables first (pipes are classified with the whole tree in view), then
/// each task's state, its last memory round and shared memory, then SysV
/// objects — while frozen: a removed segment vanishes with its last user.
/// Page runs are made from the page states after the tree runs again.
/// What [`read_tree`] works with besides the tree.
struct How<'a> {
    opts: &'a DumpOptions,
    caller: u32,
    frozen: &'a Frozen,
    /// The tree's stand-ins (their fds 0-2 are read with the tasks').
    stand_ins: &'a [i32],
}

fn read_tree(
    tree: &[(i32, i32)],
    how: &How,
    mems: &mut HashMap<i32, ProcMem>,
    staging: &store::Staging,
    names: &Names,
    tick: &dyn Fn(u64),
) -> Result<TreeState> {
    let (opts, caller) = (how.opts, how.caller);
    let shared_tables = refuse::shared_fd_tables(tree)?;
    // a connection --kill closes is locked until restart makes it again
    let take = if opts.kill {
        sockets::Take::RepairLocked
    } else {
        sockets::Take::Repair
    };
    let mut files = files::collect(tree, caller, take, &opts.stdio_files, how.stand_ins)?;
    mark("frozen_files");
    let mut shared = memory::SharedSeen::new();
    let ids = attrs::tree_ids(tree);
    let mut tasks = Vec::new();
    for &(p, pp) in tree {
        let fds = files.fds.remove(&p).unwrap_or_default();
        let ctx = attrs::AttrCtx {
            stopped: how.frozen.stopped.get(&p).copied(),
            is_root: p == tree[0].0,
            ids: &ids,
        };
        let mut d = task::dump_task(p, pp, fds, &ctx)?;
        mark("frozen_task");
        d.task.locks = files.locks.remove(&p).unwrap_or_default();
        d.task.attrs.parents_fd_table = shared_tables.contains(&p);
        let mem = match mems.entry(p) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                // born after the precopy: copied whole, now
                let name = names.task_mm(p);
                let mut data =
                    DataFile::new(staging.dir.create_file(&name)?, staging.dir.join(&name));
                if tree.len() > 1 {
                    data.keep_shared();
                }
                v.insert(ProcMem::new(p, data, None, None)?)
            }
        };
        mem.round(true, tick)?;
        mark("frozen_last_round");
        let jobs = memory::shared_jobs(&mut d.mm.vmas, &mut shared, &mut mem.data);
        copy::copy(p, &jobs, &mut mem.data, tick, false)?;
        mark("frozen_shared_mem");
        tasks.push(d);
    }
    memory::dedupe_deleted(tasks.iter_mut().flat_map(|d| d.mm.vmas.iter_mut()));
    cow::mark(&tasks, mems)?;
    mark("frozen_cow");
    let mms = tasks.iter().map(|d| &d.mm);
    let sysv = sysv::collect(mms, &opts.sysv_sem, &opts.sysv_msg, caller)?;
    Ok(TreeState {
        tasks,
        files,
        shared_mem: memory::shared_sizes(&shared),
        sysv,
    })
}
