//! `restart PID SN`: rebuild the tree with its recorded PIDs.
//!
//! No code of ours runs inside a restored process. The restarter forks the
//! root with clone3(set_tid), which stops itself for ptrace; every further
//! step — forking children with their PIDs, unmapping the restarter's memory,
//! mapping the recorded areas and reading the pages into them from the image
//! with pread, fds, cwd, signals, credentials — is a system call injected
//! over ptrace at a `syscall` instruction on a page the restarter mapped at
//! an address no recorded mapping uses. Registers go in last, then detach.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::checked_dir::{CheckedDir, OpenedFile};
use crate::error::{ChkptError, Result};
use crate::image::{
    self, FileKind, GlobalImage, MmImage, Names, NodeImage, TaskImage, VmaKind, PAGE,
};
use crate::image_owner::{self, ImageOwner};
use crate::ptrace::{self, Injector};
use crate::{procfs, store};

/// Layout of the injection area: code page, scratch pages, a parking zone
/// used while moving the kernel's vDSO/vvar pages.
const AREA_CODE: u64 = 0;
const AREA_SCRATCH: u64 = PAGE;
const SCRATCH_LEN: u64 = 15 * PAGE;
const AREA_PARK: u64 = 16 * PAGE;
const PARK_LEN: u64 = 64 * PAGE;
const AREA_LEN: u64 = AREA_PARK + PARK_LEN;

pub struct RestoreOptions {
    pub root: PathBuf,
    /// Whose node file to restart; `None`: the one node the checkpoint holds.
    pub node: Option<u32>,
    /// How long to wait for a recorded PID still held (e.g. a zombie not yet reaped).
    pub pid_wait: Duration,
    /// Let the kernel choose new PIDs instead of the recorded ones.
    pub new_pids: bool,
}

#[derive(Debug)]
pub struct RestoreReport {
    pub pids: Vec<i32>,
}

/// One checkpoint, fully read and checked.
pub struct Loaded {
    pub global: GlobalImage,
    pub node: NodeImage,
    pub tasks: Vec<LoadedTask>,
    /// The owner of every file of the checkpoint.
    pub owner: ImageOwner,
}

/// One task of a loaded checkpoint.
pub struct LoadedTask {
    pub task: TaskImage,
    pub mm: MmImage,
    /// The memory image, open since it was checked: the restored task reads
    /// its pages from this very file (inherited as `mm_fd`), never by name.
    pub mm_file: std::fs::File,
    pub mm_path: PathBuf,
    /// Where page data starts in the memory image.
    pub data_off: u64,
}

/// The node a checkpoint holds tasks of, when it is only one.
fn only_node(global: &GlobalImage, dir: &CheckedDir, names: &Names) -> Result<u32> {
    let nodes: Vec<u32> = (0..64u32)
        .filter(|n| global.node_mask & (1u64 << n) != 0)
        .collect();
    match nodes[..] {
        [n] => Ok(n),
        [] => Err(ChkptError::bad_image(
            dir.join(&names.global()),
            "its node mask is empty",
        )),
        _ => Err(ChkptError::Other(format!(
            "SN {} holds tasks of nodes {nodes:?}: choose one with --node",
            names.sn
        ))),
    }
}

/// Every file of a checkpoint has the owner of its global file.
fn same_owner(f: &OpenedFile, uid: u32) -> Result<()> {
    if f.uid != uid {
        return Err(ChkptError::Permission(format!(
            "{} belongs to uid {} but the checkpoint's global file to uid {uid}: refusing a mixed image",
            f.path.display(),
            f.uid
        )));
    }
    Ok(())
}

/// Read every file of the checkpoint and check it (magic, version, CRC,
/// lengths, that page runs lie inside the data, referenced files exist,
/// one owner for every file, and credentials that owner has).
pub fn load(dir: &Path, sn: u32, node: Option<u32>) -> Result<Loaded> {
    let dir = CheckedDir::open(dir)?;
    let names = Names { sn };
    if !dir.contains(&names.global()) {
        return Err(ChkptError::NoSuchCheckpoint {
            dir: dir.path().to_path_buf(),
            sn,
        });
    }
    let (g, gfile) = image::read_in::<GlobalImage>(&dir, &names.global(), FileKind::Global)?;
    let global = g.meta;
    let owner_uid = gfile.uid;
    let dir_uid = dir.stat()?.st_uid;
    if dir_uid != owner_uid && dir_uid != 0 {
        return Err(ChkptError::Permission(format!(
            "{} belongs to uid {dir_uid} but its images to uid {owner_uid}: refusing it",
            dir.path().display()
        )));
    }
    let owner = ImageOwner::of_uid(owner_uid)?;
    let node = match node {
        Some(n) => n,
        None => only_node(&global, &dir, &names)?,
    };
    let (n, nfile) = image::read_in::<NodeImage>(&dir, &names.node(node), FileKind::Node)?;
    same_owner(&nfile, owner_uid)?;
    let node = n.meta;
    if node.tasks.is_empty() {
        return Err(ChkptError::bad_image(nfile.path, "no task"));
    }
    owner.check_ipc(&node)?;
    let mut tasks = Vec::new();
    for te in &node.tasks {
        let (t, tfile) = image::read_in::<TaskImage>(&dir, &names.task(te.pid), FileKind::Task)?;
        same_owner(&tfile, owner_uid)?;
        let (d, mfile) = image::read_in::<MmImage>(&dir, &names.task_mm(te.pid), FileKind::Mm)?;
        same_owner(&mfile, owner_uid)?;
        check_mm(&mfile.path, &d)?;
        let task = t.meta;
        if task.pid <= 0
            || task.threads.iter().any(|t| t.tid <= 0)
            || task.threads.is_empty()
            || ptrace::regs_from_bytes(&task.threads[0].regs).is_none()
        {
            return Err(ChkptError::bad_image(&tfile.path, "no usable registers"));
        }
        owner.check_task(&task)?;
        tasks.push(LoadedTask {
            task,
            mm: d.meta,
            mm_file: mfile.file,
            mm_path: mfile.path,
            data_off: d.data_off,
        });
    }
    Ok(Loaded {
        global,
        node,
        tasks,
        owner,
    })
}

/// Mappings page aligned, page runs inside the data and their mapping,
/// mapped files present.
fn check_mm(path: &Path, d: &image::Decoded<MmImage>) -> Result<()> {
    for v in &d.meta.vmas {
        if v.start >= v.end || v.start % PAGE != 0 || v.end % PAGE != 0 {
            return Err(ChkptError::bad_image(
                path,
                format!("bad mapping {:#x}-{:#x}", v.start, v.end),
            ));
        }
        for r in &v.runs {
            let len = r.pages.checked_mul(PAGE);
            let end = len.and_then(|l| r.data_off.checked_add(l));
            let vend = len.and_then(|l| r.addr.checked_add(l));
            if end.is_none_or(|e| e > d.data_len)
                || r.addr < v.start
                || vend.is_none_or(|e| e > v.end)
                || r.data_off % PAGE != 0
            {
                return Err(ChkptError::bad_image(
                    path,
                    "page run outside the data or its mapping",
                ));
            }
        }
        if let VmaKind::File { path: f, .. } = &v.kind {
            if !Path::new(f).exists() {
                return Err(ChkptError::bad_image(
                    path,
                    format!("mapped file {f} is missing"),
                ));
            }
        }
    }
    Ok(())
}

pub fn restart(app: i32, sn: u32, opts: &RestoreOptions) -> Result<RestoreReport> {
    let dir = store::app_dir(&opts.root, app);
    let mut loaded = load(&dir, sn, opts.node)?;
    if opts.new_pids && loaded.tasks.iter().any(|t| t.task.threads.len() > 1) {
        return Err(ChkptError::Other(
            "--new-pids does not handle multi-threaded processes (their TIDs live in their memory)"
                .into(),
        ));
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Err(ChkptError::Permission(
            "restart must run as root (clone3 with a chosen PID needs CAP_CHECKPOINT_RESTORE)"
                .into(),
        ));
    }
    let area = map_area(&loaded)?;
    let r = restore_tree(&mut loaded, area, opts);
    // SAFETY: unmapping the area we mapped in this process.
    unsafe { libc::munmap(area as *mut libc::c_void, AREA_LEN as usize) };
    r
}

/// Map the injection area in the restarter (children inherit it) at an
/// address far from every recorded mapping.
fn map_area(l: &Loaded) -> Result<u64> {
    let mut used: Vec<(u64, u64)> = l
        .tasks
        .iter()
        .flat_map(|t| t.mm.vmas.iter().map(|v| (v.start, v.end)))
        .collect();
    used.sort_unstable();
    const MARGIN: u64 = 64 << 20;
    let mut cand = 0x1000_0000u64;
    let fits = |c: u64| {
        used.iter()
            .all(|&(s, e)| c + AREA_LEN + MARGIN <= s || c >= e + MARGIN)
    };
    for _ in 0..100_000 {
        if fits(cand) {
            // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
            let p = unsafe {
                libc::mmap(
                    cand as *mut libc::c_void,
                    AREA_LEN as usize,
                    libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if p as u64 == cand {
                // `syscall` then `jmp .`: a child forked by an injected clone3
                // spins on the jmp until we attach to it.
                // SAFETY: the page is ours, writable and at least 4 bytes long.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        [0x0fu8, 0x05, 0xeb, 0xfe].as_ptr(),
                        p as *mut u8,
                        4,
                    )
                };
                return Ok(cand);
            }
            if p != libc::MAP_FAILED {
                // SAFETY: an old kernel ignoring NOREPLACE gave us another address.
                unsafe { libc::munmap(p, AREA_LEN as usize) };
            }
        }
        cand += MARGIN;
    }
    Err(ChkptError::Other(
        "no free address range for the restore area".into(),
    ))
}

/// clone3 arguments for a fork-like child with a chosen PID.
fn clone_args(set_tid_ptr: u64) -> [u64; 11] {
    [0, 0, 0, 0, libc::SIGCHLD as u64, 0, 0, 0, set_tid_ptr, 1, 0]
}

/// Fork the root task from the restarter with its recorded PID; it stops
/// itself under ptrace before touching anything.
fn fork_root(pid: i32, wait: Duration, new_pid: bool) -> Result<i32> {
    let deadline = Instant::now() + wait;
    loop {
        let tid = [pid];
        let mut args = clone_args(tid.as_ptr() as u64);
        if new_pid {
            args[8] = 0;
            args[9] = 0;
        }
        // SAFETY: fork-like clone3 (no CLONE_VM, no stack): the child continues
        // here on a copy of our memory and only makes async-signal-safe calls.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                args.as_ptr(),
                std::mem::size_of_val(&args),
            )
        };
        if r == 0 {
            // SAFETY: child side: become traced, stop, never return into Rust state.
            unsafe {
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                libc::raise(libc::SIGSTOP);
                libc::_exit(127);
            }
        }
        if r > 0 {
            ptrace::wait_stop(r as i32)?;
            return Ok(r as i32);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(ChkptError::Sys {
                op: format!("clone3 with PID {pid}"),
                pid,
                err,
            });
        }
        if Instant::now() >= deadline {
            return Err(ChkptError::PidTaken(pid));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fork `child` inside the (not yet restored) `parent` with an injected clone3.
fn fork_child(
    parent: &Injector,
    area: u64,
    child: i32,
    wait: Duration,
    new_pid: bool,
) -> Result<i32> {
    let scratch = area + AREA_SCRATCH;
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut args = clone_args(scratch + 128);
    if new_pid {
        args[8] = 0;
        args[9] = 0;
    }
    for w in args {
        buf.extend_from_slice(&w.to_le_bytes());
    }
    buf.resize(128, 0);
    buf.extend_from_slice(&(child as u64).to_le_bytes());
    ptrace::write_mem(parent.tid, scratch, &buf)?;
    loop {
        let r = parent.raw(libc::SYS_clone3, [scratch, 88, 0, 0, 0, 0])?;
        if r == child as i64 || (new_pid && r > 0) {
            ptrace::seize_and_interrupt(r as i32)?;
            return Ok(r as i32);
        }
        if r != -(libc::EEXIST as i64) {
            return Err(ChkptError::Injected {
                name: "clone3",
                pid: child,
                errno: std::io::Error::from_raw_os_error(-r as i32),
            });
        }
        if Instant::now() >= deadline {
            return Err(ChkptError::PidTaken(child));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Groups and file-system uid/gid of the job's user (capabilities to
/// fork with chosen PIDs and to set credentials stay until the end).
fn set_fs_creds(i: &Injector, scratch: u64, t: &TaskImage) -> Result<()> {
    let groups: Vec<u8> = t.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    if groups.len() as u64 > SCRATCH_LEN {
        return Err(ChkptError::Other("too many supplementary groups".into()));
    }
    ptrace::write_mem(i.tid, scratch, &groups)?;
    i.call(
        "setgroups",
        libc::SYS_setgroups,
        [t.groups.len() as u64, scratch, 0, 0, 0, 0],
    )?;
    i.raw(libc::SYS_setfsgid, [t.gids[3] as u64, 0, 0, 0, 0, 0])?;
    i.raw(libc::SYS_setfsuid, [t.uids[3] as u64, 0, 0, 0, 0, 0])?;
    Ok(())
}

/// Create the non-leader threads of a restored process with their TIDs:
/// clone3(CLONE_THREAD | …) injected in the leader; each new thread spins on
/// the area's `jmp .` until attached. Then its clear_child_tid and rseq
/// registration go back (its registers are set with everyone else's).
fn create_threads(leader: &Injector, area: u64, t: &TaskImage) -> Result<()> {
    let scratch = area + AREA_SCRATCH;
    let flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM) as u64;
    for (n, th) in t.threads.iter().enumerate() {
        let inj_own;
        let inj = if n == 0 {
            leader
        } else {
            let mut args = clone_args(scratch + 128);
            args[0] = flags;
            args[4] = 0; // no exit signal for a thread
            let mut buf = Vec::new();
            for w in args {
                buf.extend_from_slice(&w.to_le_bytes());
            }
            buf.resize(128, 0);
            buf.extend_from_slice(&(th.tid as u64).to_le_bytes());
            ptrace::write_mem(leader.tid, scratch, &buf)?;
            let r = leader.raw(libc::SYS_clone3, [scratch, 88, 0, 0, 0, 0])?;
            if r != th.tid as i64 {
                return Err(if r == -(libc::EEXIST as i64) {
                    ChkptError::PidTaken(th.tid)
                } else {
                    ChkptError::Injected {
                        name: "clone3(thread)",
                        pid: th.tid,
                        errno: std::io::Error::from_raw_os_error(-r as i32),
                    }
                });
            }
            ptrace::seize_and_interrupt(th.tid)?;
            inj_own = Injector::new(th.tid, leader.syscall_at)?;
            &inj_own
        };
        inj.call(
            "set_tid_address",
            libc::SYS_set_tid_address,
            [th.clear_tid, 0, 0, 0, 0, 0],
        )?;
        // PR_SET_NAME takes at most 16 bytes including the NUL.
        let mut name: Vec<u8> = th.comm.as_bytes().iter().copied().take(15).collect();
        name.push(0);
        ptrace::write_mem(leader.tid, scratch, &name)?;
        inj.call(
            "prctl(PR_SET_NAME)",
            libc::SYS_prctl,
            [libc::PR_SET_NAME as u64, scratch, 0, 0, 0, 0],
        )?;
        let (ptr, len, sig) = th.rseq;
        if ptr != 0 {
            inj.call(
                "rseq(register)",
                libc::SYS_rseq,
                [ptr, len as u64, 0, sig as u64, 0, 0],
            )?;
        }
    }
    Ok(())
}

/// Kills every task created so far if restore fails half way.
struct Created(Vec<i32>, bool);

impl Drop for Created {
    fn drop(&mut self) {
        if !self.1 {
            for &p in &self.0 {
                // SAFETY: killing processes this restart created.
                unsafe { libc::kill(p, libc::SIGKILL) };
                let _ = ptrace::detach(p);
                let mut st = 0;
                // SAFETY: reaping our own child; status is a valid pointer.
                unsafe { libc::waitpid(p, &mut st, libc::__WALL) };
            }
        }
    }
}

/// Session and process group, right after the fork and before the task's
/// own children are forked (they inherit them): a session leader calls
/// setsid, a group leader setpgid(0, 0), a member of a group whose leader was
/// already recreated joins it; anything else stays in restart's.
fn join_session(i: &Injector, t: &TaskImage, created: &[i32]) -> Result<()> {
    if t.sid == t.pid {
        i.call("setsid", libc::SYS_setsid, [0; 6])?;
    } else if t.pgid == t.pid {
        i.call("setpgid", libc::SYS_setpgid, [0; 6])?;
    } else if created.contains(&t.pgid) {
        i.call("setpgid", libc::SYS_setpgid, [0, t.pgid as u64, 0, 0, 0, 0])?;
    }
    Ok(())
}

/// `--new-pids`: task `old` now runs as `new`.
fn remap(l: &mut Loaded, old: i32, new: i32) {
    for t in l.tasks.iter_mut().map(|t| &mut t.task) {
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

fn restore_tree(l: &mut Loaded, area: u64, opts: &RestoreOptions) -> Result<RestoreReport> {
    let mut created = Created(Vec::new(), false);
    // SysV objects are created as the image's owner: the kernel records the
    // owner, not root, as their creator.
    let (segs, ipc) = image_owner::run_as(&l.owner, || {
        let segs = crate::sysvshm::create(&l.node.sysv_shm)?;
        match crate::sysvipc::restore(&l.node.sysv_sem, &l.node.sysv_msg) {
            Ok(c) => Ok((segs, c)),
            Err(e) => {
                crate::sysvshm::remove(&segs);
                Err(e)
            }
        }
    })?;
    let r = restore_tasks(l, area, opts, &mut created);
    if r.is_err() {
        drop(created);
        crate::sysvshm::remove(&segs);
        ipc.remove();
        return r;
    }
    created.1 = true;
    let destroyed: Vec<i32> = l
        .node
        .sysv_shm
        .iter()
        .filter(|s| s.destroyed)
        .map(|s| s.shmid)
        .collect();
    crate::sysvshm::remove(&destroyed);
    r
}

/// The memory images, duplicated in restart to fds `base..base + n` above
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
    for (n, t) in l.tasks.iter().enumerate() {
        let want = base + n as i32;
        // SAFETY: F_DUPFD_CLOEXEC on an fd we own; every fd from `base` up
        // is free, so the lowest free one is `want`.
        let fd = unsafe { libc::fcntl(t.mm_file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, want) };
        if fd < 0 {
            return Err(ChkptError::io(&t.mm_path, std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        fds.push(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        if fd != want {
            return Err(ChkptError::Other(format!(
                "memory image fd landed at {fd}, not {want}"
            )));
        }
    }
    Ok(MmFds { base, fds })
}

fn restore_tasks(
    l: &mut Loaded,
    area: u64,
    opts: &RestoreOptions,
    created: &mut Created,
) -> Result<RestoreReport> {
    let mm_fds = place_mm_fds(l)?;
    let old_root = l.tasks[0].task.pid;
    let root_pid = fork_root(old_root, opts.pid_wait, opts.new_pids)?;
    remap(l, old_root, root_pid);
    created.0.push(root_pid);
    let root = &l.tasks[0].task;
    let syscall_at = area + AREA_CODE;
    let rinj = Injector::new(root.pid, syscall_at)?;
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
    let pipe_fds =
        crate::restore_fds::create_pipes(&rinj, area + AREA_SCRATCH, &l.node.pipes, pipe_base)?;
    let shm_base = pipe_base + 2 * pipe_fds.len() as i32;
    let shm_fds =
        crate::restore_mm::create_shared(&rinj, area + AREA_SCRATCH, &l.node.shared_mem, shm_base)?;
    let file_base = shm_base + shm_fds.len() as i32;
    let images: Vec<&TaskImage> = l.tasks.iter().map(|t| &t.task).collect();
    let file_fds =
        crate::restore_fds::create_files(&rinj, area + AREA_SCRATCH, &images, file_base)?;

    let mut injectors: HashMap<i32, Injector> = HashMap::new();
    injectors.insert(root.pid, rinj);
    for idx in 1..l.tasks.len() {
        let (old, ppid) = (l.tasks[idx].task.pid, l.tasks[idx].task.ppid);
        let parent = injectors.get(&ppid).ok_or_else(|| {
            ChkptError::Other(format!("task {old} has no parent {ppid} in the image"))
        })?;
        let pid = fork_child(parent, area, old, opts.pid_wait, opts.new_pids)?;
        remap(l, old, pid);
        created.0.push(pid);
        let inj = Injector::new(pid, syscall_at)?;
        let created_pids: Vec<i32> = l.tasks[..idx].iter().map(|t| t.task.pid).collect();
        join_session(&inj, &l.tasks[idx].task, &created_pids)?;
        injectors.insert(pid, inj);
    }
    let l = &*l;
    let mut ctxs = Vec::new();
    for (n, t) in l.tasks.iter().enumerate() {
        let inj = injectors
            .get(&t.task.pid)
            .ok_or_else(|| ChkptError::Other("lost a task".into()))?;
        ctxs.push(TaskCtx {
            inj,
            area,
            task: &t.task,
            mm: &t.mm,
            mm_path: &t.mm_path,
            mm_fd: mm_fds.base + n as i32,
            data_off: t.data_off,
            work_base: mm_fds.base,
            pipe_fds: &pipe_fds,
            shm_fds: &shm_fds,
            file_fds: &file_fds,
            work_end: file_base + file_fds.len() as i32,
        });
    }
    for ctx in &ctxs {
        ctx.restore()?;
    }
    // Children are forked from the area, so it goes only once all exist.
    for ctx in &ctxs {
        ctx.drop_area()?;
    }
    for t in l.tasks.iter().rev() {
        for th in t.task.threads.iter().rev() {
            ptrace::detach(th.tid)?;
        }
    }
    created.1 = true;
    Ok(RestoreReport {
        pids: l.tasks.iter().map(|t| t.task.pid).collect(),
    })
}

pub struct TaskCtx<'a> {
    pub inj: &'a Injector,
    pub area: u64,
    pub task: &'a TaskImage,
    pub mm: &'a MmImage,
    pub mm_path: &'a Path,
    /// The task's memory image, inherited from restart (see [`MmFds`]).
    pub mm_fd: i32,
    pub data_off: u64,
    /// fds `work_base..work_end` are restart's working fds in every task
    /// (memory images, then pipes, memfds and open files), closed once the
    /// task's own fds are in place.
    pub work_base: i32,
    pub work_end: i32,
    /// pipe inode → (read fd, write fd) in the restored processes.
    pub pipe_fds: &'a HashMap<u64, (i32, i32)>,
    /// shared memory object id → its memfd in the restored processes.
    pub shm_fds: &'a HashMap<u64, i32>,
    /// open file number → its fd in the restored processes.
    pub file_fds: &'a HashMap<u32, i32>,
}

impl TaskCtx<'_> {
    pub fn scratch(&self) -> u64 {
        self.area + AREA_SCRATCH
    }

    /// Put a NUL-terminated string in scratch memory; returns its address.
    pub fn put_str(&self, s: &str, slot: u64) -> Result<u64> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        if b.len() as u64 > SCRATCH_LEN / 2 {
            return Err(ChkptError::Other(format!("path too long: {s}")));
        }
        let addr = self.scratch() + slot * (SCRATCH_LEN / 2);
        ptrace::write_mem(self.inj.tid, addr, &b)?;
        Ok(addr)
    }

    pub fn put_bytes(&self, b: &[u8]) -> Result<u64> {
        if b.len() as u64 > SCRATCH_LEN {
            return Err(ChkptError::Other("scratch buffer too small".into()));
        }
        ptrace::write_mem(self.inj.tid, self.scratch(), b)?;
        Ok(self.scratch())
    }

    fn restore(&self) -> Result<()> {
        let t = self.task;
        let i = self.inj;
        // File access as the job's user from here on: every file the image
        // names is opened with that user's rights, never root's.
        set_fs_creds(i, self.scratch(), t)?;
        crate::restore_mm::restore(self)?;
        // Threads need CAP_CHECKPOINT_RESTORE for their TIDs: before the
        // credentials drop, after the memory they share is in place.
        create_threads(i, self.area, t)?;
        crate::restore_fds::restore(self)?;
        let cwd = self.put_str(&t.cwd, 0)?;
        i.call("chdir", libc::SYS_chdir, [cwd, 0, 0, 0, 0, 0])?;
        i.call("umask", libc::SYS_umask, [t.umask as u64, 0, 0, 0, 0, 0])?;
        crate::restore_sig::restore(self)?;
        set_rlimits(t)?;
        crate::restore_sig::queue_pending(self)?;
        // Credentials last: after this the process has only the job's rights.
        i.call(
            "setresgid",
            libc::SYS_setresgid,
            [
                t.gids[0] as u64,
                t.gids[1] as u64,
                t.gids[2] as u64,
                0,
                0,
                0,
            ],
        )?;
        i.call(
            "setresuid",
            libc::SYS_setresuid,
            [
                t.uids[0] as u64,
                t.uids[1] as u64,
                t.uids[2] as u64,
                0,
                0,
                0,
            ],
        )?;
        // Changing ids clears the dumpable flag; the job's owner must keep
        // /proc access to it (and the right to checkpoint it again).
        i.call(
            "prctl",
            libc::SYS_prctl,
            [libc::PR_SET_DUMPABLE as u64, 1, 0, 0, 0, 0],
        )?;
        i.call(
            "personality",
            libc::SYS_personality,
            [t.personality as u64, 0, 0, 0, 0, 0],
        )?;
        if t.no_new_privs {
            i.call(
                "prctl(PR_SET_NO_NEW_PRIVS)",
                libc::SYS_prctl,
                [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
            )?;
        }
        Ok(())
    }

    /// Last injected call: remove the injection area itself. The single-step
    /// trap comes right after the `syscall` instruction, before the next
    /// fetch, so the vanished page is never executed again.
    fn drop_area(&self) -> Result<()> {
        self.inj.call(
            "munmap",
            libc::SYS_munmap,
            [self.area, AREA_LEN, 0, 0, 0, 0],
        )?;
        set_registers(self.task)
    }
}

fn set_rlimits(t: &TaskImage) -> Result<()> {
    for r in &t.rlimits {
        let new = libc::rlimit64 {
            rlim_cur: r.cur,
            rlim_max: r.max,
        };
        // SAFETY: new is a valid rlimit; old is not requested.
        if unsafe { libc::prlimit64(t.pid, r.resource as _, &new, std::ptr::null_mut()) } < 0 {
            return Err(ChkptError::sys(
                format!(
                    "restoring rlimit {} (cur {} max {})",
                    r.resource, r.cur, r.max
                ),
                t.pid,
            ));
        }
    }
    Ok(())
}

/// Registers as recorded, with an interrupted system call turned into what
/// the kernel would have done on return to user space: restarted, or EINTR
/// where it would have needed the lost restart block.
fn set_registers(t: &TaskImage) -> Result<()> {
    for th in &t.threads {
        let mut r = ptrace::regs_from_bytes(&th.regs)
            .ok_or_else(|| ChkptError::Other("bad registers".into()))?;
        if (r.orig_rax as i64) >= 0 {
            match r.rax as i64 {
                -514..=-512 => {
                    r.rax = r.orig_rax;
                    r.rip = r.rip.wrapping_sub(2);
                }
                -516 => r.rax = (-(libc::EINTR as i64)) as u64,
                _ => {}
            }
            r.orig_rax = u64::MAX;
        }
        ptrace::set_xstate(th.tid, &th.xstate)?;
        ptrace::set_regs(th.tid, &r)?;
        ptrace::set_sigmask(th.tid, th.sigmask)?;
    }
    Ok(())
}

/// The maps of a live process (used for what the restarter left in a child).
pub fn current_maps(pid: i32) -> Result<Vec<procfs::MapLine>> {
    procfs::parse_maps(&procfs::read_to_string(format!("/proc/{pid}/maps"))?)
}

pub const PARK_OFFSET: u64 = AREA_PARK;
pub const PARK_SIZE: u64 = PARK_LEN;
pub const AREA_SIZE: u64 = AREA_LEN;
