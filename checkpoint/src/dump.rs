//! `checkpoint PID`: freeze the tree, read its state, write one SN, let it run.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use crate::error::{ChkptError, Result};
use crate::image::{
    self, FdImage, FdKind, FileKind, GlobalImage, MmImage, Names, NodeImage, PipeImage, TaskEntry,
    TaskImage,
};
use crate::inspect_task::{self, PipeRef, Scratch};
use crate::ptrace::{self, Injector};
use crate::{mmdump, procfs, store};

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
        for c in procfs::children(p)? {
            out.push((c, p));
        }
        i += 1;
    }
    Ok(out)
}

/// Detaches (or kills) every seized task when dropped, so that an error
/// anywhere leaves the job running.
struct Frozen {
    tids: Vec<i32>,
    kill: bool,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &t in self.tids.iter().rev() {
            if self.kill {
                // SAFETY: plain kill of a task we froze.
                unsafe { libc::kill(t, libc::SIGKILL) };
            }
            let _ = ptrace::detach(t);
        }
    }
}

/// Who a process belongs to, for the image: its user when its real,
/// effective, saved and file-system ids all agree, else root — a process
/// that holds another identity (a setuid or setgid program) is root's
/// business, and its image must not be a file its real user may edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    uid: u32,
    gid: u32,
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
    Ok(if one_uid && one_gid {
        Owner {
            uid: uids[0],
            gid: gids[0],
        }
    } else {
        Owner { uid: 0, gid: 0 }
    })
}

fn check_task(pid: i32, caller: u32) -> Result<Owner> {
    let status = procfs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| ChkptError::NoSuchProcess(pid))?;
    let owner = owner_of(pid, &status, caller)?;
    if procfs::status_field(&status, "State").is_some_and(|st| st.starts_with('Z')) {
        return Err(ChkptError::unsupported(
            pid,
            "a zombie process",
            "its parent has not reaped it yet; retry",
        ));
    }
    refuse_unsaved_state(pid, &status)?;
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
fn refuse_unsaved_state(pid: i32, status: &str) -> Result<()> {
    if procfs::status_field(status, "Seccomp").is_some_and(|s| s != "0") {
        return Err(ChkptError::unsupported(
            pid,
            "seccomp filters",
            "a process under seccomp cannot be checkpointed",
        ));
    }
    let timers = std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap_or_default();
    if !timers.trim().is_empty() {
        return Err(ChkptError::unsupported(
            pid,
            "POSIX timers (timer_create)",
            "not saved by this version",
        ));
    }
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let me = pid.to_string();
    if locks
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(me.as_str()))
    {
        return Err(ChkptError::unsupported(
            pid,
            "file locks (flock, fcntl)",
            "not saved by this version",
        ));
    }
    for ns in ["pid", "mnt", "net", "ipc", "uts", "user", "cgroup", "time"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).ok();
        if theirs.is_some() && ours.is_some() && theirs != ours {
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
fn tree_owner(tree: &[(i32, i32)], caller: u32) -> Result<Owner> {
    let mut owners = tree.iter().map(|&(p, _)| {
        let status = procfs::read_to_string(format!("/proc/{p}/status"))
            .map_err(|_| ChkptError::NoSuchProcess(p))?;
        owner_of(p, &status, caller)
    });
    let first = owners.next().unwrap_or(Err(ChkptError::NoSuchProcess(0)))?;
    for o in owners {
        if o? != first {
            return Ok(Owner { uid: 0, gid: 0 });
        }
    }
    Ok(first)
}

/// Freeze the tree, re-reading children until no new one appears.
fn freeze(pid: i32, caller: u32, frozen: &mut Frozen) -> Result<Vec<(i32, i32)>> {
    loop {
        let t = tree(pid)?;
        let mut new = false;
        for &(p, _) in &t {
            if !frozen.tids.contains(&p) {
                check_task(p, caller)?;
            }
            for tid in procfs::threads(p)? {
                if !frozen.tids.contains(&tid) {
                    ptrace::seize_and_interrupt(tid)?;
                    frozen.tids.push(tid);
                    new = true;
                }
            }
        }
        if !new {
            return Ok(t);
        }
    }
}

/// Split pipe fds into stdio that leads outside the tree (inherited at
/// restart) and pipes with both ends inside the tree (recreated).
fn classify_pipes(
    all: &[PipeRef],
    fds: &mut HashMap<i32, Vec<FdImage>>,
    flags: &HashMap<(i32, i32), u32>,
) -> Result<Vec<u64>> {
    let mut internal = Vec::new();
    for p in all {
        let has_r = all.iter().any(|q| q.ino == p.ino && !q.write_end);
        let has_w = all.iter().any(|q| q.ino == p.ino && q.write_end);
        let kind = if has_r && has_w {
            if !internal.contains(&p.ino) {
                internal.push(p.ino);
            }
            FdKind::Pipe {
                ino: p.ino,
                write_end: p.write_end,
            }
        } else if p.fd <= 2 {
            FdKind::InheritedStdio {
                what: format!("pipe:[{}]", p.ino),
            }
        } else {
            return Err(ChkptError::unsupported(
                p.pid,
                format!("fd {} (pipe:[{}])", p.fd, p.ino),
                "a pipe leading outside the checkpointed tree",
            ));
        };
        let flags = flags.get(&(p.pid, p.fd)).copied().unwrap_or(0);
        let v = fds.entry(p.pid).or_default();
        v.push(FdImage {
            fd: p.fd,
            flags,
            kind,
        });
        v.sort_by_key(|f| f.fd);
    }
    Ok(internal)
}

/// Same open file description? (kcmp KCMP_FILE; CONFIG_CHECKPOINT_RESTORE)
fn same_file(a: (i32, i32), b: (i32, i32)) -> bool {
    // SAFETY: kcmp only compares kernel objects.
    unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            a.0,
            b.0,
            0, /* KCMP_FILE */
            a.1 as u64,
            b.1 as u64,
        ) == 0
    }
}

/// Number the open file descriptions of the tree: fds that share one (dup,
/// inheritance over fork) get the same number, so restart opens the file
/// once and every fd shares its offset again.
fn share_files(tree: &[(i32, i32)], fds: &mut HashMap<i32, Vec<FdImage>>) {
    let mut reps: Vec<(i32, i32, String)> = Vec::new();
    for &(pid, _) in tree {
        let Some(list) = fds.get_mut(&pid) else {
            continue;
        };
        for f in list.iter_mut() {
            if let FdKind::Path { path, file, .. } = &mut f.kind {
                let found = reps
                    .iter()
                    .position(|(p, n, rp)| rp == path && same_file((*p, *n), (pid, f.fd)));
                *file = match found {
                    Some(i) => i as u32,
                    None => {
                        reps.push((pid, f.fd, path.clone()));
                        (reps.len() - 1) as u32
                    }
                };
            }
        }
    }
}

/// Bytes buffered in a pipe, copied without consuming them (tee).
fn pipe_data(pid: i32, fd: i32) -> Result<Vec<u8>> {
    let path = format!("/proc/{pid}/fd/{fd}");
    let c =
        std::ffi::CString::new(path.clone()).map_err(|_| ChkptError::Other("bad path".into()))?;
    // SAFETY: c is a valid C string.
    let src = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if src < 0 {
        return Err(ChkptError::io(&path, std::io::Error::last_os_error()));
    }
    let mut p = [0i32; 2];
    // SAFETY: p is a 2-int array.
    unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    // SAFETY: fcntl/tee/read on fds we own; buf is valid for its length.
    let data = unsafe {
        libc::fcntl(p[1], libc::F_SETPIPE_SZ, 1 << 20);
        let n = libc::tee(src, p[1], 1 << 20, libc::SPLICE_F_NONBLOCK);
        let mut buf = vec![0u8; n.max(0) as usize];
        let mut got = 0usize;
        while got < buf.len() {
            let r = libc::read(
                p[0],
                buf[got..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - got,
            );
            if r <= 0 {
                break;
            }
            got += r as usize;
        }
        buf.truncate(got);
        libc::close(src);
        libc::close(p[0]);
        libc::close(p[1]);
        buf
    };
    Ok(data)
}

struct TaskDump {
    task: TaskImage,
    mm: MmImage,
    pages: u64,
}

fn dump_task(
    pid: i32,
    ppid: i32,
    fds: Vec<FdImage>,
    shared: &mut mmdump::SharedSeen,
) -> Result<TaskDump> {
    let maps = procfs::parse_maps(&procfs::read_to_string(format!("/proc/{pid}/maps"))?)?;
    let mut vmas = mmdump::vmas(pid, &maps)?;
    let inj = Injector::new(pid, inspect_task::find_syscall_insn(pid, &maps)?)?;
    let result = (|| {
        let scratch = Scratch::map(&inj)?;
        let task = inspect_task::task_image(pid, ppid, &inj, &scratch, fds)?;
        let brk = inj.call("brk", libc::SYS_brk, [0; 6])?;
        scratch.unmap()?;
        let pages = mmdump::plan_pages(pid, &mut vmas, shared)?;
        let mm = MmImage {
            vmas,
            params: mmdump::params(pid, brk)?,
            shared_pending: ptrace::peek_pending(pid, true)?,
        };
        Ok(TaskDump { task, mm, pages })
    })();
    // Registers go back whatever happened, so the job resumes untouched.
    inj.restore()?;
    result
}

pub fn checkpoint(pid: i32, opts: &DumpOptions, progress: Progress) -> Result<DumpReport> {
    // SAFETY: getuid has no preconditions.
    let caller = unsafe { libc::getuid() };
    let owner = tree_owner(&tree(pid)?, caller)?;
    let dir = store::prepare_dir(&opts.root, pid, owner.uid, owner.gid)?;
    let _lock = store::lock(&dir)?;
    store::cleanup(&dir);
    let sn = store::committed_sns(&dir).last().map_or(1, |s| s + 1);

    let mut frozen = Frozen {
        tids: Vec::new(),
        kill: false,
    };
    let tree = freeze(pid, caller, &mut frozen)?;
    if tree_owner(&tree, caller)? != owner {
        return Err(ChkptError::Other(format!(
            "the credentials of process {pid}'s tree changed while it was being frozen; retry"
        )));
    }

    // fd tables first: pipes are classified with the whole tree in view.
    let mut fds: HashMap<i32, Vec<FdImage>> = HashMap::new();
    let mut pipes = Vec::new();
    let mut flags = HashMap::new();
    for &(p, _) in &tree {
        let (f, pr) = inspect_task::fds(p)?;
        for r in &pr {
            let (_, fl) = procfs::parse_fdinfo(&procfs::read_to_string(format!(
                "/proc/{p}/fdinfo/{}",
                r.fd
            ))?)?;
            flags.insert((p, r.fd), fl);
        }
        fds.insert(p, f);
        pipes.extend(pr);
    }
    let internal = classify_pipes(&pipes, &mut fds, &flags)?;
    share_files(&tree, &mut fds);
    let mut pipe_images = Vec::new();
    for ino in internal {
        let r = pipes
            .iter()
            .find(|p| p.ino == ino)
            .ok_or_else(|| ChkptError::Other("pipe vanished".into()))?;
        pipe_images.push(PipeImage {
            ino,
            data: pipe_data(r.pid, r.fd)?,
        });
    }

    let mut dumps = Vec::new();
    let mut shared = mmdump::SharedSeen::new();
    for &(p, pp) in &tree {
        dumps.push(dump_task(
            p,
            pp,
            fds.remove(&p).unwrap_or_default(),
            &mut shared,
        )?);
    }
    // While still frozen: a removed segment vanishes with its last user.
    let sysv_shm = sysv_segments(&dumps)?;
    let sysv_sem = opts
        .sysv_sem
        .iter()
        .map(|&id| crate::sysvipc::dump_sem(id, caller))
        .collect::<Result<Vec<_>>>()?;
    let sysv_msg = opts
        .sysv_msg
        .iter()
        .map(|&id| crate::sysvipc::dump_msg(id, caller))
        .collect::<Result<Vec<_>>>()?;

    let names = Names { sn };
    let staging = store::stage(&dir, sn)?;
    let total: u64 = dumps.iter().map(|d| d.pages * image::PAGE).sum();
    let done = std::cell::Cell::new(0u64);
    for d in &dumps {
        let p = d.task.pid;
        let mut f = staging.dir.create_file(&names.task_mm(p))?;
        mmdump::write_mm(p, &d.mm, d.pages, &mut f, &|n| {
            done.set(done.get() + n);
            progress(done.get(), total);
        })?;
        image::write_small(&staging.dir, &names.task(p), FileKind::Task, &d.task)?;
    }
    frozen.kill = opts.kill;
    drop(frozen); // the job runs again (or is gone with --kill)

    let node = NodeImage {
        node: opts.node,
        tasks: dumps
            .iter()
            .map(|d| TaskEntry {
                pid: d.task.pid,
                ppid: d.task.ppid,
                threads: d.task.threads.iter().map(|t| t.tid).collect(),
            })
            .collect(),
        pipes: pipe_images,
        shared_mem: mmdump::shared_sizes(&shared),
        sysv_shm,
        sysv_sem,
        sysv_msg,
    };
    image::write_small(&staging.dir, &names.node(opts.node), FileKind::Node, &node)?;
    let global = GlobalImage {
        app_id: pid,
        sn,
        node_mask: 1u64.checked_shl(opts.node).unwrap_or(0),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        uid: owner.uid,
        kernel: procfs::read_to_string("/proc/sys/kernel/osrelease")?
            .trim()
            .to_string(),
    };
    image::write_small(&staging.dir, &names.global(), FileKind::Global, &global)?;
    let desc = crate::describe::description(
        &global,
        &node,
        &dumps.iter().map(|d| (&d.task, &d.mm)).collect::<Vec<_>>(),
    );
    let dname = names.description();
    staging
        .dir
        .create_file(&dname)?
        .write_all(desc.as_bytes())
        .map_err(|e| ChkptError::io(staging.dir.join(&dname), e))?;
    let image_bytes = staging.chown_all(owner.uid, owner.gid)?;
    staging.commit(&dir, &names.global())?;
    Ok(DumpReport {
        sn,
        dir: dir.path().to_path_buf(),
        tasks: tree.iter().map(|t| t.0).collect(),
        image_bytes,
    })
}

/// Every SysV segment some task attached, described once.
fn sysv_segments(dumps: &[TaskDump]) -> Result<Vec<crate::sysvshm::SysvShmImage>> {
    let mut ids: Vec<i32> = dumps
        .iter()
        .flat_map(|d| d.mm.vmas.iter())
        .filter_map(|v| match v.kind {
            crate::image::VmaKind::SysvShm { shmid } => Some(shmid),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter().map(crate::sysvshm::describe).collect()
}
