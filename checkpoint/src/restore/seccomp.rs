//! Seccomp filters (or strict mode) installed again in each thread, the
//! first installed first, while the task is still root (no
//! `no_new_privs` needed) and just before its credentials drop. Every
//! task restart makes is traced with its seccomp suspended
//! (`PTRACE_O_SUSPEND_SECCOMP`), so the calls injected after this still
//! run; the filters apply from the detach on. The filters every thread
//! has first are installed in the leader before the other threads are
//! made, so that those inherit the very same filters: a later
//! `SECCOMP_FILTER_FLAG_TSYNC` wants that. A filter shared by some threads
//! only, after others of their own, becomes a copy per thread.

use crate::error::{ChkptError, Result};
use crate::image::{SeccompFilter, ThreadSeccomp};
use crate::ptrace::Injector;

use super::ctx::TaskCtx;

const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_MODE_STRICT: u64 = 1;
/// The install flags a filter keeps (LOG, SPEC_ALLOW); the others
/// (TSYNC, NEW_LISTENER, …) are about the moment of installing.
const KEPT_FLAGS: u64 = 2 | 4;
const BPF_MAXINSNS: usize = 4096;

/// `struct sock_fprog` at `at` (length, then a pointer to the program,
/// which follows it) and the program (raw `struct sock_filter`s): for
/// seccomp, and for a socket's filter.
pub(super) fn sock_fprog(at: u64, insns: &[u64]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + insns.len() * 8);
    b.extend_from_slice(&(insns.len() as u16).to_le_bytes());
    b.extend_from_slice(&[0u8; 6]);
    b.extend_from_slice(&(at + 16).to_le_bytes());
    for w in insns {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b
}

/// The filters every thread of `t` has first, in the same order: the
/// leader installs them before the other threads are made, which then
/// inherit them — one filter shared by all, as a fork or TSYNC left it.
fn common_prefix(t: &crate::image::TaskImage) -> &[SeccompFilter] {
    let chains: Vec<&[SeccompFilter]> = t
        .threads
        .iter()
        .map(|th| {
            t.attrs
                .seccomp
                .iter()
                .find(|s| s.tid == th.tid && !s.strict)
                .map_or(&[][..], |s| s.filters.as_slice())
        })
        .collect();
    let Some(first) = chains.first() else {
        return &[];
    };
    let n = (0..first.len())
        .take_while(|&i| chains.iter().all(|c| c.get(i) == first.get(i)))
        .count();
    &first[..n]
}

impl TaskCtx<'_> {
    /// The filters all threads share, in the leader, before the other
    /// threads are made (see [`common_prefix`]).
    pub fn restore_shared_seccomp(&self) -> Result<()> {
        for f in common_prefix(self.task) {
            self.install_filter(self.inj, f)?;
        }
        Ok(())
    }

    /// Each thread's own filters (after the shared ones), or strict mode.
    pub fn restore_seccomp(&self) -> Result<()> {
        let shared = common_prefix(self.task).len();
        for th in &self.task.attrs.seccomp {
            if !self.task.threads.iter().any(|t| t.tid == th.tid) {
                return Err(ChkptError::Inconsistent(format!(
                    "seccomp of thread {}, which task {} does not have",
                    th.tid, self.task.pid
                )));
            }
            if th.tid == self.inj.tid {
                self.install(self.inj, th, shared)?;
            } else {
                let inj = Injector::new(th.tid, self.inj.syscall_at)?;
                let r = self.install(&inj, th, shared);
                inj.restore()?;
                r?;
            }
        }
        Ok(())
    }

    /// Strict mode, or the filters of `th` from the `skip`-th on.
    fn install(&self, inj: &Injector, th: &ThreadSeccomp, skip: usize) -> Result<()> {
        if th.strict {
            inj.call(
                "prctl(PR_SET_SECCOMP, strict)",
                libc::SYS_prctl,
                [libc::PR_SET_SECCOMP as u64, SECCOMP_MODE_STRICT, 0, 0, 0, 0],
            )?;
            return Ok(());
        }
        for f in th.filters.iter().skip(skip) {
            self.install_filter(inj, f)?;
        }
        Ok(())
    }

    fn install_filter(&self, inj: &Injector, f: &SeccompFilter) -> Result<()> {
        if f.insns.is_empty() || f.insns.len() > BPF_MAXINSNS {
            return Err(ChkptError::Inconsistent(format!(
                "a seccomp filter of {} instructions",
                f.insns.len()
            )));
        }
        let at = self.scratch();
        self.put_bytes(&sock_fprog(at, &f.insns))?;
        inj.call(
            "seccomp(SECCOMP_SET_MODE_FILTER)",
            libc::SYS_seccomp,
            [SECCOMP_SET_MODE_FILTER, f.flags & KEPT_FLAGS, at, 0, 0, 0],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_all_threads_share_first() {
        use crate::image::{task::sample_task, ThreadImage};
        let f = |n: u64| SeccompFilter {
            flags: 0,
            insns: vec![n],
        };
        let mut t = sample_task(0, 0, vec![]);
        let th = |tid| ThreadImage {
            tid,
            regs: Vec::new(),
            xstate: Vec::new(),
            sigmask: 0,
            pending: Vec::new(),
            rseq: Default::default(),
            clear_tid: 0,
            comm: String::new(),
        };
        t.threads = vec![th(10), th(11)];
        let sc = |tid, filters| ThreadSeccomp {
            tid,
            strict: false,
            filters,
        };
        t.attrs.seccomp = vec![sc(10, vec![f(1), f(2)]), sc(11, vec![f(1), f(2), f(3)])];
        assert_eq!(common_prefix(&t), &[f(1), f(2)][..]);
        t.attrs.seccomp[0].filters = vec![f(1), f(4)];
        assert_eq!(common_prefix(&t), &[f(1)][..]);
        // a thread with no filter: nothing is common
        t.attrs.seccomp.remove(0);
        assert!(common_prefix(&t).is_empty());
    }

    #[test]
    fn program_layout() {
        let f = SeccompFilter {
            flags: 0,
            insns: vec![0x0000_0000_0000_0006, 0x7fff_0000_0000_0006],
        };
        let b = sock_fprog(0x1000, &f.insns);
        assert_eq!(b.len(), 32);
        assert_eq!(&b[0..2], &2u16.to_le_bytes());
        assert_eq!(&b[8..16], &0x1010u64.to_le_bytes());
        assert_eq!(&b[24..32], &0x7fff_0000_0000_0006u64.to_le_bytes());
    }
}
