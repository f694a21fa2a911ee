//! Zombies: processes of the tree that had exited and were not reaped.
//! Each is forked again with its PID inside its parent, joins its process
//! group and session, and exits as it had — by `exit_group(code)`, or by
//! the signal that killed it (its default action, no core file) — so the
//! parent finds the same status when it reaps it. The SIGCHLD that exit
//! sends the (not yet restored) parent is taken back at once: the parent's
//! pending signals are the recorded ones.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::error::{ChkptError, Result};
use crate::ptrace::{self, Injector};

use super::ctx::{take_creds, AREA_CODE, AREA_SCRATCH};
use super::fork::{fork_child, join_ids, CreatedTasks, PidPolicy};
use super::load::Loaded;

pub fn restore(
    l: &mut Loaded,
    injectors: &HashMap<i32, Injector>,
    area: u64,
    pids: PidPolicy,
    created: &mut CreatedTasks,
) -> Result<()> {
    for z in &l.zombies {
        let Some(info) = z.zombie else { continue };
        let parent = injectors.get(&z.ppid).ok_or_else(|| {
            ChkptError::Inconsistent(format!(
                "zombie {} has no parent {} in the image",
                z.pid, z.ppid
            ))
        })?;
        let pid = fork_child(parent, area, z.pid, pids)?;
        created.pids.push(pid);
        let inj = Injector::new(pid, area + AREA_CODE)?;
        join_ids(&inj, pid, info.pgid, info.sid, &created.pids)?;
        // a zombie belongs to whom its parent belongs (not to restart)
        if let Some(p) = l.tasks.iter().find(|t| t.task.pid == z.ppid) {
            take_creds(&inj, area + AREA_SCRATCH, &p.task)?;
        }
        exit_as(&inj, pid, info.status)?;
        wait_zombie(pid)?;
        take_sigchld(parent, area + AREA_SCRATCH)?;
    }
    Ok(())
}

/// Let `pid` go with registers set to make the exit system call (or the
/// kill of itself) its recorded status asks for.
fn exit_as(inj: &Injector, pid: i32, status: i32) -> Result<()> {
    let sig = status & 0x7f;
    let mut r = *inj.saved_regs();
    r.orig_rax = u64::MAX;
    r.rip = inj.syscall_at;
    if sig != 0 && sig != 0x7f {
        // killed by a signal: its default action, and no core file
        inj.call(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            [sig as u64, 0, 0, 8, 0, 0],
        )?;
        let none = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 of our own traced child, values only.
        unsafe { libc::prlimit64(pid, libc::RLIMIT_CORE, &none, std::ptr::null_mut()) };
        r.rax = libc::SYS_kill as u64;
        r.rdi = pid as u64;
        r.rsi = sig as u64;
    } else {
        r.rax = libc::SYS_exit_group as u64;
        r.rdi = ((status >> 8) & 0xff) as u64;
    }
    ptrace::set_regs(pid, &r)?;
    ptrace::set_sigmask(pid, 0)?;
    ptrace::detach(pid)
}

fn wait_zombie(pid: i32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if st
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ChkptError::Tracee {
                pid,
                what: "did not exit to become a zombie again".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Take the SIGCHLD the zombie's exit just queued on its parent (all its
/// signals are blocked while it is restored): `rt_sigtimedwait` with a
/// zero timeout.
fn take_sigchld(parent: &Injector, scratch: u64) -> Result<()> {
    let mut b = Vec::new();
    b.extend_from_slice(&(1u64 << (libc::SIGCHLD - 1)).to_le_bytes());
    b.extend_from_slice(&[0u8; 16]); // struct timespec {0, 0}
    ptrace::write_mem(parent.tid, scratch, &b)?;
    parent.raw(
        libc::SYS_rt_sigtimedwait,
        [scratch, 0, scratch + 8, 8, 0, 0],
    )?;
    Ok(())
}
