//! One task's restore, in order: file-system credentials, memory (then
//! its children are forked), lazy pages' userfaultfd, threads,
//! fds, cwd, signals, limits, credentials; and at the very end the removal
//! of the injection area and the registers.

use crate::error::{ChkptError, Result};
use crate::image::{regs_from_bytes, TaskImage};
use crate::ptrace::{self, Injector};

use super::ctx::{clone_args, set_fs_creds, TaskCtx, AREA_LEN, AREA_SCRATCH};
use super::{fds, mm, sig};

impl TaskCtx<'_> {
    /// The task's memory, first: a child that shares pages with it is
    /// forked after this (it inherits them), the others before.
    pub fn restore_memory(&self) -> Result<()> {
        self.restore_loginuid()?;
        // File access as the job's user from here on: every file the image
        // names is opened with that user's rights, never root's.
        set_fs_creds(self.inj, self.scratch(), self.task)?;
        crate::timings::mark("task_start");
        mm::restore(self)?;
        crate::timings::mark("task_memory");
        Ok(())
    }

    /// The rest of the task, once the whole tree is forked; returns the
    /// userfaultfd its lazy pages will come through (`restart --lazy`).
    /// Registered only now: its fork events would stop a fork injected
    /// in the task until the page server, not yet started, read them.
    pub fn restore(&self) -> Result<Option<std::os::fd::OwnedFd>> {
        let t = self.task;
        let i = self.inj;
        let uffd = if self.lazy.is_empty() {
            None
        } else {
            Some(super::lazy::register(self, self.lazy)?)
        };
        // Threads need CAP_CHECKPOINT_RESTORE for their TIDs: before the
        // credentials drop, after the memory they share is in place.
        self.restore_shared_seccomp()?;
        create_threads(i, self.area, t)?;
        crate::timings::mark("task_threads");
        // a table shared with the parent was filled by the parent's restore
        if !t.attrs.parents_fd_table {
            fds::restore(self)?;
        }
        crate::timings::mark("task_fds");
        let cwd = self.put_str(&t.cwd, 0)?;
        i.call("chdir", libc::SYS_chdir, [cwd, 0, 0, 0, 0, 0])?;
        i.call("umask", libc::SYS_umask, [t.umask as u64, 0, 0, 0, 0, 0])?;
        sig::restore(self)?;
        set_rlimits(t)?;
        sig::queue_pending(self)?;
        self.attrs_before_creds()?;
        self.restore_seccomp()?;
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
        self.threads_creds()?;
        // No longer tied to restart's life (set while it was restored).
        i.call(
            "prctl(PR_SET_PDEATHSIG)",
            libc::SYS_prctl,
            [libc::PR_SET_PDEATHSIG as u64, 0, 0, 0, 0, 0],
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
        self.attrs_after_creds()?;
        if t.no_new_privs {
            i.call(
                "prctl(PR_SET_NO_NEW_PRIVS)",
                libc::SYS_prctl,
                [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
            )?;
        }
        self.restore_timers()?;
        Ok(uffd)
    }

    /// Last injected call: remove the injection area itself. The single-step
    /// trap comes right after the `syscall` instruction, before the next
    /// fetch, so the vanished page is never executed again.
    pub fn drop_area(&self) -> Result<()> {
        self.inj.call(
            "munmap",
            libc::SYS_munmap,
            [self.area, AREA_LEN, 0, 0, 0, 0],
        )?;
        set_registers(self.task)
    }
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
        let r = th.rseq;
        if r.addr != 0 {
            inj.call(
                "rseq(register)",
                libc::SYS_rseq,
                [r.addr, r.len as u64, 0, r.sig as u64, 0, 0],
            )?;
        }
    }
    Ok(())
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
        let mut r = regs_from_bytes(&th.regs).ok_or_else(|| {
            ChkptError::Inconsistent(format!("thread {} has no usable registers", th.tid))
        })?;
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
