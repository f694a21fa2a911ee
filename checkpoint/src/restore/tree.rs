//! Rebuilding the process tree: the root forked from restart with its PID,
//! every child forked inside its restored parent with its PID, sessions and
//! process groups; the fds restart hands the whole tree; SysV objects; and
//! killing everything created if any step fails (the forks, the PID waits
//! and that clean-up are in [`super::fork`]).

use std::collections::HashMap;

use crate::error::{ChkptError, Result};
use crate::image::TaskImage;
use crate::ptrace::{self, Injector};
use crate::timings::mark;

use super::ctx::{set_fs_creds, TaskCtx, AREA_CODE, AREA_SCRATCH};
use super::fork::{fork_child_with, fork_root, join_session, CreatedTasks, PidPolicy};
use super::lazy::Pending;
use super::load::Loaded;
use super::plan::{MemPlan, TreeFds};
use super::serve::{Server, Space};
use super::{fds, mm, owner, sysv};

/// `--new-pids`: task `old` now runs as `new`.
fn remap(l: &mut Loaded, old: i32, new: i32) {
    if l.ctty_fg == Some(old) {
        l.ctty_fg = Some(new);
    }
    for z in &mut l.zombies {
        if z.ppid == old {
            z.ppid = new;
        }
        if let Some(zz) = &mut z.zombie {
            if zz.pgid == old {
                zz.pgid = new;
            }
            if zz.sid == old {
                zz.sid = new;
            }
        }
    }
    for t in l.tasks.iter_mut().map(|t| &mut t.task) {
        super::attrs::remap(&mut t.attrs, old, new);
        for f in &mut t.fds {
            if let crate::image::FdKind::Pidfd { pid } = &mut f.kind {
                if *pid == old {
                    *pid = new;
                }
            }
        }
        if t.pid == old {
            t.pid = new;
            if let Some(th) = t.threads.first_mut() {
                th.tid = new;
            }
        }
        if t.ppid == old {
            t.ppid = new;
        }
        if t.pgid == old {
            t.pgid = new;
        }
        if t.sid == old {
            t.sid = new;
        }
    }
}

/// `--ctty-fg`: the root, a session leader with no terminal yet, takes
/// its fd 0 as its controlling terminal (which puts its own group in the
/// foreground: no SIGTTOU for what follows) and hands the foreground to
/// `fg`, once every group of the tree exists.
fn take_terminal(root: &TaskCtx, fg: i32) -> Result<()> {
    let i = root.inj;
    i.call(
        "ioctl(TIOCSCTTY)",
        libc::SYS_ioctl,
        [0, libc::TIOCSCTTY, 0, 0, 0, 0],
    )?;
    if fg > 0 {
        let at = root.scratch();
        ptrace::write_mem(root.task.pid, at, &fg.to_ne_bytes())?;
        i.call(
            "ioctl(TIOCSPGRP)",
            libc::SYS_ioctl,
            [0, libc::TIOCSPGRP, at, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// The restored tree.
pub struct Restored {
    pub pids: Vec<i32>,
    /// `restart --lazy`: the page server's PID.
    pub server: Option<i32>,
}

/// Restore the loaded tree (with `lazy`, private anonymous pages are left
/// to a page server).
pub fn restore_tree(l: &mut Loaded, area: u64, pids: PidPolicy, lazy: bool) -> Result<Restored> {
    let mut created = CreatedTasks {
        pids: Vec::new(),
        done: false,
    };
    // SysV objects are created as the image's owner: the kernel records the
    // owner, not root, as their creator.
    let (segs, ipc) = owner::run_as(&l.owner, || {
        let segs = sysv::shm_create(&l.node.sysv_shm)?;
        match sysv::restore_sem_msg(&l.node.sysv_sem, &l.node.sysv_msg) {
            Ok(c) => Ok((segs, c)),
            Err(e) => {
                sysv::shm_remove(&segs);
                Err(e)
            }
        }
    })?;
    let r = restore_tasks(l, area, pids, lazy, &mut created);
    if r.is_err() {
        drop(created);
        sysv::shm_remove(&segs);
        ipc.remove();
        return r;
    }
    created.done = true;
    let destroyed: Vec<i32> = l
        .node
        .sysv_shm
        .iter()
        .filter(|s| s.destroyed)
        .map(|s| s.shmid)
        .collect();
    sysv::shm_remove(&destroyed);
    r
}

/// The memory files, duplicated in restart to fds `base..base + n` above
/// every fd restart holds, so that the root task (a fork of restart)
/// inherits them at those numbers and passes them on to its children.
struct MmFds {
    base: i32,
    fds: Vec<std::os::fd::OwnedFd>,
}

fn place_mm_fds(l: &Loaded) -> Result<MmFds> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let recorded = l
        .tasks
        .iter()
        .flat_map(|t| t.task.fds.iter().map(|f| f.fd))
        .max()
        .unwrap_or(2);
    let ours = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| ChkptError::io("/proc/self/fd", e))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .max()
        .unwrap_or(2);
    let base = recorded.max(ours).max(2) + 1;
    let mut fds = Vec::new();
    for (n, f) in l.files.iter().enumerate() {
        let want = base + n as i32;
        // SAFETY: F_DUPFD_CLOEXEC on an fd we own; every fd from `base` up
        // is free, so the lowest free one is `want`.
        let fd = unsafe { libc::fcntl(f.file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, want) };
        if fd < 0 {
            return Err(ChkptError::io(&f.path, std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        fds.push(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        if fd != want {
            return Err(ChkptError::Thread(format!(
                "memory image fd landed at {fd}, not {want}: another thread opened files"
            )));
        }
    }
    Ok(MmFds { base, fds })
}

fn restore_tasks(
    l: &mut Loaded,
    area: u64,
    pids: PidPolicy,
    lazy: bool,
    created: &mut CreatedTasks,
) -> Result<Restored> {
    let mm_fds = place_mm_fds(l)?;
    let old_root = l.tasks[0].task.pid;
    mark("prepare");
    let root_pid = fork_root(old_root, pids)?;
    mark("fork_root");
    remap(l, old_root, root_pid);
    created.pids.push(root_pid);
    let root = &l.tasks[0].task;
    let syscall_at = area + AREA_CODE;
    let rinj = Injector::new(root.pid, syscall_at)?;
    if let Some(fd) = pids.rejoin_mnt {
        rinj.call(
            "setns(mount namespace)",
            libc::SYS_setns,
            [fd as u64, libc::CLONE_NEWNS as u64, 0, 0, 0, 0],
        )?;
    }
    join_session(&rinj, root, &[])?;
    // Nothing of the restarter's fd table goes further than stdio, but the
    // memory images.
    let mm_end = mm_fds.base + mm_fds.fds.len() as i32;
    rinj.call(
        "close_range",
        libc::SYS_close_range,
        [3, mm_fds.base as u64 - 1, 0, 0, 0, 0],
    )?;
    rinj.call(
        "close_range",
        libc::SYS_close_range,
        [mm_end as u64, u32::MAX as u64, 0, 0, 0, 0],
    )?;
    drop(mm_fds.fds);
    let pipe_base = mm_end;
    // Everything the root opens for the tree is opened as the job's user.
    set_fs_creds(&rinj, area + AREA_SCRATCH, root)?;
    let pipe_fds = fds::create_pipes(&rinj, area + AREA_SCRATCH, &l.node.pipes, pipe_base)?;
    let shm_base = pipe_base + 2 * pipe_fds.len() as i32;
    let shm_fds = mm::create_shared(&rinj, area + AREA_SCRATCH, &l.node.shared_mem, shm_base)?;
    let deleted_base = shm_base + shm_fds.len() as i32;
    let mms: Vec<&crate::image::MmImage> = l.tasks.iter().map(|t| &t.mm).collect();
    let deleted_fds = mm::create_deleted(&rinj, area + AREA_SCRATCH, &mms, deleted_base)?;
    let file_base = deleted_base + deleted_fds.len() as i32;
    let images: Vec<&TaskImage> = l.tasks.iter().map(|t| &t.task).collect();
    let holders = super::files::Holders {
        tasks: &images,
        stand_ins: &l.node.stand_ins,
    };
    let file_fds = super::files::create_files(
        &rinj,
        area + AREA_SCRATCH,
        &holders,
        file_base,
        &l.inherit_fds,
        &deleted_fds,
        &super::queues::TreeSockets {
            in_flight: &l.node.in_flight,
            extras: &l.node.sockets,
            pipe_fds: &pipe_fds,
            file_fds: None,
        },
    )?;
    mark("tree_files");

    let plan = MemPlan::new(l, lazy)?;
    let mut injectors: HashMap<i32, Injector> = HashMap::new();
    injectors.insert(root.pid, rinj);
    let tree = TreeFds {
        area,
        data_fds: mm_fds.base,
        pipe_fds: &pipe_fds,
        shm_fds: &shm_fds,
        deleted_fds: &deleted_fds,
        file_fds: &file_fds,
        work_end: file_base + file_fds.len() as i32,
    };
    let mut memory_done = vec![false; l.tasks.len()];
    for idx in 1..l.tasks.len() {
        // a child sharing pages with its parent is forked from the
        // parent's restored memory, and keeps them (see `mm::reuse_vma`)
        if let Some(p) =
            plan.inherit.parent[idx].filter(|&p| plan.inherit.shares[idx] && !memory_done[p])
        {
            tree.memory(l, p, &injectors, &plan)?;
            memory_done[p] = true;
        }
        let (old, ppid) = (l.tasks[idx].task.pid, l.tasks[idx].task.ppid);
        let parent = injectors.get(&ppid).ok_or_else(|| {
            ChkptError::Inconsistent(format!("task {old} has no parent {ppid} in the image"))
        })?;
        let flags = match l.tasks[idx].task.attrs.parents_fd_table {
            true => libc::CLONE_FILES as u64,
            false => 0,
        };
        let pid = fork_child_with(parent, area, old, pids, flags)?;
        remap(l, old, pid);
        created.pids.push(pid);
        let inj = Injector::new(pid, syscall_at)?;
        // dies with its (half-restored) parent, and so on up to restart
        inj.call(
            "prctl(PR_SET_PDEATHSIG)",
            libc::SYS_prctl,
            [
                libc::PR_SET_PDEATHSIG as u64,
                libc::SIGKILL as u64,
                0,
                0,
                0,
                0,
            ],
        )?;
        let created_pids: Vec<i32> = l.tasks[..idx].iter().map(|t| t.task.pid).collect();
        join_session(&inj, &l.tasks[idx].task, &created_pids)?;
        injectors.insert(pid, inj);
    }
    // Zombies exit again as they had, for their (not yet restored) parents.
    super::zombie::restore(l, &injectors, area, pids, created)?;
    // Stand-ins become stand-ins again, for processes restored elsewhere.
    super::standin::restore(l, &injectors, &tree, pids, created)?;
    mark("fork_children");
    for (idx, done) in memory_done.iter().enumerate() {
        if !done {
            tree.memory(l, idx, &injectors, &plan)?;
        }
    }
    let l = &*l;
    let mut first_holder = HashMap::new();
    for t in &l.tasks {
        for f in &t.task.fds {
            if let Some(file) = f.kind.file() {
                first_holder.entry(file).or_insert(t.task.pid);
            }
        }
    }
    let mut ctxs = Vec::new();
    for (idx, t) in l.tasks.iter().enumerate() {
        let inj = injectors.get(&t.task.pid).ok_or_else(|| {
            ChkptError::Inconsistent(format!("task {} was not created", t.task.pid))
        })?;
        ctxs.push(tree.ctx(l, idx, inj, &plan, &first_holder));
    }
    let mut spaces = Vec::new();
    for ctx in &ctxs {
        let done = ctx.restore()?;
        mark("task_rest");
        if let Some(uffd) = done {
            spaces.push(Space {
                uffd,
                pending: Pending::new(ctx.lazy),
            });
        }
    }
    if let (Some(fg), Some(root)) = (l.ctty_fg, ctxs.first()) {
        take_terminal(root, fg)?;
    }
    // Children are forked from the area, so it goes only once all exist.
    for ctx in &ctxs {
        ctx.drop_area()?;
    }
    mark("drop_area");
    if let Some(g) = &l.gate {
        // Nothing runs before the caller says so; a refusal leaves
        // `created` to kill the tasks.
        super::gate::wait(g)?;
        mark("gate");
    }
    let pids: Vec<i32> = l.tasks.iter().map(|t| t.task.pid).collect();
    // The server exists before any task runs: a page touched at once waits
    // for it, not forever. It starts serving once every task is detached
    // (`go` closed): a mismatch it finds must not kill tasks restart is
    // still letting go.
    let (server, go) = if spaces.is_empty() {
        (None, None)
    } else {
        let (pid, go) = start_server(l, spaces, &pids)?;
        (Some(pid), Some(go))
    };
    for t in l.tasks.iter().rev() {
        if t.task.attrs.stopped.is_some() {
            // stopped by job control when checkpointed: pending now, it
            // stops the process as soon as a thread is let go
            // SAFETY: plain kill of a task this restart created.
            unsafe { libc::kill(t.task.pid, libc::SIGSTOP) };
        }
        for th in t.task.threads.iter().rev() {
            ptrace::detach(th.tid)?;
        }
    }
    created.done = true;
    drop(go);
    mark("detach");
    Ok(Restored { pids, server })
}

/// Fork the page server (see [`serve`](super::serve)): in its own session,
/// stdin and stdout on /dev/null, stderr kept for its one-line errors.
/// It waits until the returned pipe end is closed (or restart exits).
fn start_server(
    l: &Loaded,
    spaces: Vec<Space>,
    pids: &[i32],
) -> Result<(i32, std::os::fd::OwnedFd)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut ends = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(ChkptError::sys("pipe (page server)", 0));
    }
    // SAFETY: two new fds that nothing else owns.
    let (wait_end, go) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    // SAFETY: restart has no other thread now (its helper threads were
    // joined); the child goes on in Rust and ends with _exit.
    let r = unsafe { libc::fork() };
    if r < 0 {
        return Err(ChkptError::sys("fork (page server)", 0));
    }
    if r > 0 {
        return Ok((r, go));
    }
    drop(go);
    let mut b = [0u8; 1];
    // SAFETY: reading into a one-byte buffer; returns at EOF, when restart
    // closed its end (or exited).
    while unsafe { libc::read(wait_end.as_raw_fd(), b.as_mut_ptr().cast(), 1) } < 0
        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
    {}
    drop(wait_end);
    // SAFETY: the child: its own session, no terminal input or output.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
        }
    }
    let server = Server {
        spaces,
        files: &l.files,
        checks: &l.checks,
        pids: pids.to_vec(),
        fetch: l.fetch.as_ref(),
    };
    let code = match server.run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("restart (page server): {e}");
            1
        }
    };
    // SAFETY: leave without running restart's destructors (they belong to
    // the parent: its traced tasks, its files).
    unsafe { libc::_exit(code) }
}
