//! Reading one stopped task's state (everything but memory pages) by
//! /proc and by system calls injected into it.

use crate::error::{ChkptError, Result};
use crate::image::{
    self, AltStack, FdImage, ITimer, MmImage, Rlimit, SigAction, TaskImage, ThreadImage,
};
use crate::procfs;
use crate::ptrace::{self, Injector};

use super::attrs::AttrCtx;
use super::memory;

/// A scratch page mapped inside the tracee for injected syscalls' buffers.
struct Scratch<'a> {
    pub inj: &'a Injector,
    pub addr: u64,
}

const SCRATCH_LEN: u64 = 4096;

impl<'a> Scratch<'a> {
    pub fn map(inj: &'a Injector) -> Result<Self> {
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let addr = inj.call(
            "mmap",
            libc::SYS_mmap,
            [0, SCRATCH_LEN, prot, flags, u64::MAX, 0],
        )?;
        Ok(Self { inj, addr })
    }
    pub fn unmap(self) -> Result<()> {
        self.inj
            .call(
                "munmap",
                libc::SYS_munmap,
                [self.addr, SCRATCH_LEN, 0, 0, 0, 0],
            )
            .map(|_| ())
    }
}

/// Signals whose action may be other than the default: caught or ignored
/// (/proc/PID/status), and SIGCHLD, whose SA_NOCLDWAIT/SA_NOCLDSTOP flags
/// matter even with the default action. Each costs an injected call, made
/// while the tree is frozen: asking for all 62 would cost ten times more.
fn non_default(status: &str) -> Vec<u32> {
    let mask = |k: &str| {
        procfs::status_field(status, k)
            .and_then(|m| u64::from_str_radix(m, 16).ok())
            .unwrap_or(u64::MAX)
    };
    let set = mask("SigCgt") | mask("SigIgn") | 1 << (libc::SIGCHLD - 1);
    (1..=64u32).filter(|s| set & (1 << (s - 1)) != 0).collect()
}

fn sigactions(s: &Scratch, status: &str) -> Result<Vec<SigAction>> {
    let mut out = Vec::new();
    for sig in non_default(status) {
        if sig == libc::SIGKILL as u32 || sig == libc::SIGSTOP as u32 {
            continue;
        }
        s.inj.call(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            [sig as u64, 0, s.addr, 8, 0, 0],
        )?;
        let b = ptrace::read_mem(s.inj.tid, s.addr, 32)?;
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let act = SigAction {
            sig,
            handler: w(0),
            flags: w(1),
            restorer: w(2),
            mask: w(3),
        };
        if act.handler != 0 || act.flags != 0 || act.mask != 0 {
            out.push(act);
        }
    }
    Ok(out)
}

fn itimers(s: &Scratch) -> Result<Vec<ITimer>> {
    let mut out = Vec::new();
    for which in 0..3u32 {
        s.inj.call(
            "getitimer",
            libc::SYS_getitimer,
            [which as u64, s.addr, 0, 0, 0, 0],
        )?;
        let b = ptrace::read_mem(s.inj.tid, s.addr, 32)?;
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let t = ITimer {
            which,
            interval_us: w(0) * 1_000_000 + w(1),
            value_us: w(2) * 1_000_000 + w(3),
        };
        if t.interval_us != 0 || t.value_us != 0 {
            out.push(t);
        }
    }
    Ok(out)
}

fn altstack(s: &Scratch) -> Result<AltStack> {
    s.inj.call(
        "sigaltstack",
        libc::SYS_sigaltstack,
        [0, s.addr, 0, 0, 0, 0],
    )?;
    let b = ptrace::read_mem(s.inj.tid, s.addr, 24)?;
    let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    Ok(AltStack {
        sp: w(0),
        flags: w(1) as u32,
        size: w(2),
    })
}

/// Resource limits, from /proc/PID/limits: prlimit() on a process of
/// another user needs CAP_SYS_RESOURCE, which root may lack.
fn rlimits(pid: i32) -> Result<Vec<Rlimit>> {
    let text = procfs::read_to_string(format!("/proc/{pid}/limits"))?;
    let limits = procfs::parse_limits(&text);
    if limits.len() != 16 {
        return Err(ChkptError::Parse {
            what: format!("/proc/{pid}/limits"),
            detail: format!("{} limits where 16 were expected", limits.len()),
        });
    }
    Ok(limits)
}

/// Registers, extended state, signal mask and pending signals of one thread.
fn thread(tid: i32, regs: &image::Regs, sigmask: u64, clear_tid: u64) -> Result<ThreadImage> {
    Ok(ThreadImage {
        tid,
        regs: image::regs_to_bytes(regs),
        xstate: ptrace::get_xstate(tid)?,
        sigmask,
        pending: ptrace::peek_pending(tid, false)?,
        rseq: ptrace::rseq_config(tid)?,
        clear_tid,
        comm: std::fs::read_to_string(format!("/proc/{tid}/task/{tid}/comm"))
            .or_else(|_| std::fs::read_to_string(format!("/proc/{tid}/comm")))
            .map(|c| c.trim_end_matches('\n').to_string())
            .unwrap_or_default(),
    })
}

/// Every thread, the leader first. The clear_child_tid pointer is read by an
/// injected prctl(PR_GET_TID_ADDRESS) in each thread.
fn threads(pid: i32, leader: &Injector, scratch: &Scratch) -> Result<Vec<ThreadImage>> {
    let mut out = Vec::new();
    for tid in procfs::threads(pid)? {
        let own;
        let inj = if tid == pid {
            leader
        } else {
            own = Injector::new(tid, leader.syscall_at)?;
            &own
        };
        let r = inj.call(
            "prctl(PR_GET_TID_ADDRESS)",
            libc::SYS_prctl,
            [40 /* PR_GET_TID_ADDRESS */, scratch.addr, 0, 0, 0, 0],
        );
        // Other threads get their state back now; the leader's stays under
        // injection (all signals blocked) until the whole task is read.
        let restored = if tid == pid { Ok(()) } else { inj.restore() };
        r?;
        restored?;
        let b = ptrace::read_mem(pid, scratch.addr, 8)?;
        let clear_tid = u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
        let th = thread(tid, inj.saved_regs(), inj.saved_mask(), clear_tid)?;
        if tid == pid {
            out.insert(0, th);
        } else {
            out.push(th);
        }
    }
    Ok(out)
}

/// Everything of the task image that /proc and injection give.
fn task_image(
    pid: i32,
    ppid: i32,
    inj: &Injector,
    scratch: &Scratch,
    fds: Vec<FdImage>,
    ctx: &AttrCtx<'_>,
) -> Result<TaskImage> {
    let attrs = super::attrs::read(pid, ctx, inj, scratch.addr, &fds)?;
    let status = procfs::read_to_string(format!("/proc/{pid}/status"))?;
    let stat = procfs::parse_stat(&procfs::read_to_string(format!("/proc/{pid}/stat"))?)?;
    let ids = |k: &str| -> Result<[u32; 4]> {
        let v = procfs::status_ids(&status, k)?;
        v.try_into().map_err(|_| ChkptError::Parse {
            what: "status".into(),
            detail: k.into(),
        })
    };
    let umask = procfs::status_field(&status, "Umask")
        .and_then(|u| u32::from_str_radix(u, 8).ok())
        .unwrap_or(0o022);
    let groups = procfs::status_field(&status, "Groups")
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    Ok(TaskImage {
        pid,
        ppid,
        comm: stat.comm.clone(),
        exe: procfs::readlink(format!("/proc/{pid}/exe"))?,
        uids: ids("Uid")?,
        gids: ids("Gid")?,
        groups,
        cwd: procfs::readlink(format!("/proc/{pid}/cwd"))?,
        umask,
        personality: procfs::read_to_string(format!("/proc/{pid}/personality"))
            .ok()
            .and_then(|p| u32::from_str_radix(p.trim(), 16).ok())
            .unwrap_or(0),
        no_new_privs: procfs::status_field(&status, "NoNewPrivs") == Some("1"),
        pgid: stat.field(5) as i32,
        sid: stat.field(6) as i32,
        rlimits: rlimits(pid)?,
        sigactions: sigactions(scratch, &status)?,
        itimers: itimers(scratch)?,
        altstack: altstack(scratch)?,
        fds,
        threads: threads(pid, inj, scratch)?,
        locks: Vec::new(), // filled by dump::mod from the fd tables
        attrs,
    })
}

/// One task's state; its memory image still without page runs (filled
/// by the frozen round of [`precopy`](super::precopy)).
pub struct TaskDump {
    pub task: TaskImage,
    pub mm: MmImage,
}

/// The start time of a process (field 22 of /proc/PID/stat).
pub fn start_time(pid: i32) -> Result<u64> {
    let stat = procfs::parse_stat(&procfs::read_to_string(format!("/proc/{pid}/stat"))?)?;
    Ok(stat.field(22))
}

pub fn dump_task(pid: i32, ppid: i32, fds: Vec<FdImage>, ctx: &AttrCtx<'_>) -> Result<TaskDump> {
    let maps = procfs::parse_maps(&procfs::read_to_string(format!("/proc/{pid}/maps"))?)?;
    let vmas = memory::vmas(pid, &maps)?;
    let inj = Injector::new(pid, ptrace::find_syscall_insn(pid, &maps)?)?;
    let result = (|| {
        let scratch = Scratch::map(&inj)?;
        let task = task_image(pid, ppid, &inj, &scratch, fds, ctx)?;
        let brk = inj.call("brk", libc::SYS_brk, [0; 6])?;
        scratch.unmap()?;
        let mm = MmImage {
            vmas,
            params: memory::params(pid, brk)?,
            shared_pending: ptrace::peek_pending(pid, true)?,
            parent: None,
            tracker: None,
            start_time: start_time(pid)?,
            frozen_us: 0,
        };
        Ok(TaskDump { task, mm })
    })();
    // Registers go back whatever happened, so the job resumes untouched.
    inj.restore()?;
    result
}
