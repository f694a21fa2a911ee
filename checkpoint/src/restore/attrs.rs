//! Restoring [`TaskAttrs`]: what needs root comes before the credentials
//! drop (bounding set, subreaper, THP, membarrier, madvise flags, robust
//! lists, oom_score_adj, loginuid); what the kernel must check against the
//! job's own rights, or would reset at a credential change, after it
//! (scheduling, capabilities, parent-death signals, fd owners and signals,
//! pipe sizes). A user's image may only ask for what that user could have
//! given themselves ([`check_user_attrs`]).

use crate::error::{ChkptError, Result};
use crate::image::{
    Caps, TaskAttrs, TaskImage, ADVICE, ADV_LOCKED, ADV_LOCKONFAULT, F_SETOWN_EX, F_SETSIG,
};
use crate::ptrace::{self, Injector};

use super::ctx::TaskCtx;

/// The membarrier commands whose registration `MEMBARRIER_CMD_GET_REGISTRATIONS`
/// reports (global, private, sync-core, rseq expedited).
const MEMBARRIER_REGISTER: [u32; 4] = [1 << 2, 1 << 4, 1 << 6, 1 << 8];

/// A user-owned image asks for nothing its owner could not have had:
/// no capability, no lower oom_score_adj, no other login uid, no real-time
/// or raised priority (checkpoint makes the image root's when the job held
/// any of these, see `dump::freeze`).
pub fn check_user_attrs(uid: u32, t: &TaskImage) -> std::result::Result<(), String> {
    let a = &t.attrs;
    if !a.saved {
        return Ok(()); // an older image: none of it is restored
    }
    if let Some(c) = std::iter::once(&a.caps)
        .chain(a.threads.iter().map(|th| &th.caps))
        .find(|c| !c.none_held())
    {
        return Err(format!("records capabilities {c:x?}"));
    }
    if a.oom_score_adj < 0 {
        return Err(format!("lowers oom_score_adj to {}", a.oom_score_adj));
    }
    if a.loginuid != u32::MAX && a.loginuid != uid {
        return Err(format!("records login uid {}", a.loginuid));
    }
    if let Some(th) = a
        .threads
        .iter()
        .find(|th| th.nice < 0 || th.rt_priority != 0)
    {
        return Err(format!(
            "raises the priority of thread {} (nice {}, real-time {})",
            th.tid, th.nice, th.rt_priority
        ));
    }
    Ok(())
}

/// `--new-pids`: task `old` now runs as `new` (thread ids and fd owners).
pub fn remap(a: &mut TaskAttrs, old: i32, new: i32) {
    for th in a.threads.iter_mut().filter(|th| th.tid == old) {
        th.tid = new;
    }
    for th in a.seccomp.iter_mut().filter(|th| th.tid == old) {
        th.tid = new;
    }
    for f in a.fds.iter_mut().filter(|f| f.owner_id.abs() == old) {
        f.owner_id = new * f.owner_id.signum();
    }
}

impl TaskCtx<'_> {
    /// The attributes root must set (before the credentials drop).
    pub fn attrs_before_creds(&self) -> Result<()> {
        let a = &self.task.attrs;
        if !a.saved {
            return Ok(());
        }
        let i = self.inj;
        if a.child_subreaper {
            prctl(i, libc::PR_SET_CHILD_SUBREAPER, 1)?;
        }
        for cmd in MEMBARRIER_REGISTER
            .into_iter()
            .filter(|c| a.membarrier & c != 0)
        {
            i.call(
                "membarrier(register)",
                libc::SYS_membarrier,
                [cmd as u64, 0, 0, 0, 0, 0],
            )?;
        }
        for v in &a.advice {
            for &(_, _, advice) in ADVICE.iter().filter(|(b, _, _)| v.flags & b != 0) {
                i.call(
                    "madvise",
                    libc::SYS_madvise,
                    [v.start, v.end - v.start, advice as u64, 0, 0, 0],
                )?;
            }
        }
        // after the advice (which it must not affect)
        if a.thp_disable {
            prctl(i, libc::PR_SET_THP_DISABLE, 1)?;
        }
        // the bounding set and keepcaps are per thread, like capabilities
        self.on_threads(|inj, th| {
            drop_bounding(inj, &th.caps)?;
            if th.caps.permitted != 0 {
                prctl(inj, libc::PR_SET_KEEPCAPS, 1)?;
            }
            if th.robust_head != 0 {
                inj.call(
                    "set_robust_list",
                    libc::SYS_set_robust_list,
                    [th.robust_head, th.robust_len, 0, 0, 0, 0],
                )?;
            }
            Ok(())
        })?;
        let pid = self.task.pid;
        write_proc(pid, "oom_score_adj", &a.oom_score_adj.to_string())
    }

    /// The audit login uid, if not the one inherited from restart: only a
    /// process itself may write its `/proc/self/loginuid` (with
    /// CAP_AUDIT_CONTROL), so it is written by calls injected first thing,
    /// while the task is still root's (fs uid included).
    pub fn restore_loginuid(&self) -> Result<()> {
        let a = &self.task.attrs;
        let pid = self.task.pid;
        let now = std::fs::read_to_string(format!("/proc/{pid}/loginuid")).unwrap_or_default();
        if !a.saved || now.trim() == a.loginuid.to_string() {
            return Ok(());
        }
        let i = self.inj;
        let path = self.put_str("/proc/self/loginuid", 0)?;
        let value = a.loginuid.to_string();
        let text = self.put_str(&value, 1)?;
        let fd = i.call(
            "open(/proc/self/loginuid)",
            libc::SYS_openat,
            [libc::AT_FDCWD as u64, path, libc::O_WRONLY as u64, 0, 0, 0],
        )?;
        let w = i.call(
            "write(loginuid)",
            libc::SYS_write,
            [fd, text, value.len() as u64, 0, 0, 0],
        );
        i.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        w.map(|_| ())
    }

    /// The attributes set with the job's own credentials (after they drop).
    pub fn attrs_after_creds(&self) -> Result<()> {
        let a = &self.task.attrs;
        if !a.saved {
            return Ok(());
        }
        let i = self.inj;
        self.sched()?;
        // Locked memory: after the credential change (a user's job is
        // held to its RLIMIT_MEMLOCK), before capabilities are lowered (a
        // root job that dropped CAP_IPC_LOCK after locking keeps its locks).
        for v in a.advice.iter().filter(|v| v.flags & ADV_LOCKED != 0) {
            let onfault = if v.flags & ADV_LOCKONFAULT != 0 {
                1 // MLOCK_ONFAULT
            } else {
                0
            };
            i.call(
                "mlock2",
                libc::SYS_mlock2,
                [v.start, v.end - v.start, onfault, 0, 0, 0],
            )?;
        }
        // capabilities and the death signal are per thread
        let scratch = self.scratch();
        self.on_threads(|inj, th| {
            set_caps(inj, scratch, &th.caps)?;
            prctl(inj, libc::PR_SET_PDEATHSIG, th.pdeath_sig as u64).map(|_| ())
        })?;
        for f in &a.fds {
            if f.owner_id != 0 {
                let mut b = f.owner_type.to_le_bytes().to_vec();
                b.extend_from_slice(&f.owner_id.to_le_bytes());
                let at = self.put_bytes(&b)?;
                fcntl(i, f.fd, F_SETOWN_EX, at)?;
            }
            if f.sig != 0 {
                fcntl(i, f.fd, F_SETSIG, f.sig as u64)?;
            }
            if f.pipe_size != 0 {
                fcntl(i, f.fd, libc::F_SETPIPE_SZ, f.pipe_size as u64)?;
            }
        }
        Ok(())
    }

    /// Credentials are per thread: the leader's injected setres[ug]id
    /// changed its own only. Every other thread (created while the task
    /// was root's) gets the job's groups, gids and uids too — and
    /// no_new_privs, also per thread.
    pub fn threads_creds(&self) -> Result<()> {
        let t = self.task;
        let groups: Vec<u8> = t.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        let at = self.put_bytes(&groups)?;
        for th in t.threads.iter().filter(|th| th.tid != t.pid) {
            let inj = Injector::new(th.tid, self.inj.syscall_at)?;
            let r = (|| -> Result<()> {
                let ids = |v: [u32; 4]| [v[0] as u64, v[1] as u64, v[2] as u64, 0, 0, 0];
                inj.call(
                    "setgroups",
                    libc::SYS_setgroups,
                    [t.groups.len() as u64, at, 0, 0, 0, 0],
                )?;
                inj.call("setresgid", libc::SYS_setresgid, ids(t.gids))?;
                inj.call("setresuid", libc::SYS_setresuid, ids(t.uids))?;
                if t.no_new_privs {
                    prctl(&inj, libc::PR_SET_NO_NEW_PRIVS, 1)?;
                }
                Ok(())
            })();
            inj.restore()?;
            r?;
        }
        Ok(())
    }

    /// Policy, real-time priority and nice of every thread, set from the
    /// leader (the kernel checks the job's own rights: RLIMIT_RTPRIO,
    /// RLIMIT_NICE, or its capabilities, not restored yet).
    fn sched(&self) -> Result<()> {
        let i = self.inj;
        for th in &self.task.attrs.threads {
            if th.policy != libc::SCHED_OTHER || th.rt_priority != 0 {
                let at = self.put_bytes(&th.rt_priority.to_le_bytes())?;
                i.call(
                    "sched_setscheduler",
                    libc::SYS_sched_setscheduler,
                    [th.tid as u64, th.policy as u64, at, 0, 0, 0],
                )?;
            }
            i.call(
                "setpriority",
                libc::SYS_setpriority,
                [
                    libc::PRIO_PROCESS as u64,
                    th.tid as u64,
                    th.nice as i64 as u64,
                    0,
                    0,
                    0,
                ],
            )?;
        }
        Ok(())
    }

    /// Run `f` in every thread (its own injector; the leader's for it).
    fn on_threads(
        &self,
        mut f: impl FnMut(&Injector, &crate::image::ThreadAttrs) -> Result<()>,
    ) -> Result<()> {
        for th in &self.task.attrs.threads {
            if th.tid == self.task.pid {
                f(self.inj, th)?;
            } else {
                let inj = Injector::new(th.tid, self.inj.syscall_at)?;
                let r = f(&inj, th);
                inj.restore()?;
                r?;
            }
        }
        Ok(())
    }
}

fn prctl(i: &Injector, op: i32, arg: u64) -> Result<u64> {
    i.call("prctl", libc::SYS_prctl, [op as u64, arg, 0, 0, 0, 0])
}

fn fcntl(i: &Injector, fd: i32, cmd: i32, arg: u64) -> Result<u64> {
    i.call(
        "fcntl",
        libc::SYS_fcntl,
        [fd as u64, cmd as u64, arg, 0, 0, 0],
    )
}

/// Drop from the bounding set what the job did not have (never adds: the
/// kernel cannot).
fn drop_bounding(i: &Injector, caps: &Caps) -> Result<()> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for cap in 0..=last.min(63) {
        if caps.bounding & (1 << cap) == 0 {
            prctl(i, libc::PR_CAPBSET_DROP, cap as u64)?;
        }
    }
    Ok(())
}

/// Effective, permitted and inheritable sets (capset can only lower them
/// from what the task has), then the ambient ones.
fn set_caps(i: &Injector, scratch: u64, c: &Caps) -> Result<()> {
    const V3: u32 = 0x2008_0522;
    let mut b = Vec::new();
    for w in [V3, 0] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    for half in [0, 32] {
        for set in [c.effective, c.permitted, c.inheritable] {
            b.extend_from_slice(&((set >> half) as u32).to_le_bytes());
        }
    }
    ptrace::write_mem(i.tid, scratch, &b)?;
    // pid 0: the calling thread
    i.call(
        "capset",
        libc::SYS_capset,
        [scratch, scratch + 8, 0, 0, 0, 0],
    )?;
    if c.permitted != 0 {
        prctl(i, libc::PR_SET_KEEPCAPS, 0)?;
    }
    for cap in (0..64).filter(|b| c.ambient & (1 << b) != 0) {
        i.call(
            "prctl(PR_CAP_AMBIENT_RAISE)",
            libc::SYS_prctl,
            [
                libc::PR_CAP_AMBIENT as u64,
                libc::PR_CAP_AMBIENT_RAISE as u64,
                cap,
                0,
                0,
                0,
            ],
        )?;
    }
    Ok(())
}

/// Write a /proc/PID file of a restored task (as root: restart).
fn write_proc(pid: i32, name: &str, value: &str) -> Result<()> {
    let path = format!("/proc/{pid}/{name}");
    std::fs::write(&path, value).map_err(|e| ChkptError::io(&path, e))
}
