//! Seccomp filters (or strict mode) installed again in each thread, the
//! first installed first, while the task is still root (no
//! `no_new_privs` needed) and just before its credentials drop. Every
//! task restart makes is traced with its seccomp suspended
//! (`PTRACE_O_SUSPEND_SECCOMP`), so the calls injected after this still
//! run; the filters apply from the detach on. Each thread gets its own
//! copy of a filter it shared with others: the same rules, but a later
//! `SECCOMP_FILTER_FLAG_TSYNC` may fail (the kernel wants the very same
//! filters in every thread).

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
/// which follows it) and the program.
fn sock_fprog(at: u64, f: &SeccompFilter) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + f.insns.len() * 8);
    b.extend_from_slice(&(f.insns.len() as u16).to_le_bytes());
    b.extend_from_slice(&[0u8; 6]);
    b.extend_from_slice(&(at + 16).to_le_bytes());
    for w in &f.insns {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b
}

impl TaskCtx<'_> {
    pub fn restore_seccomp(&self) -> Result<()> {
        for th in &self.task.attrs.seccomp {
            if !self.task.threads.iter().any(|t| t.tid == th.tid) {
                return Err(ChkptError::Inconsistent(format!(
                    "seccomp of thread {}, which task {} does not have",
                    th.tid, self.task.pid
                )));
            }
            if th.tid == self.inj.tid {
                self.install(self.inj, th)?;
            } else {
                let inj = Injector::new(th.tid, self.inj.syscall_at)?;
                let r = self.install(&inj, th);
                inj.restore()?;
                r?;
            }
        }
        Ok(())
    }

    fn install(&self, inj: &Injector, th: &ThreadSeccomp) -> Result<()> {
        if th.strict {
            inj.call(
                "prctl(PR_SET_SECCOMP, strict)",
                libc::SYS_prctl,
                [libc::PR_SET_SECCOMP as u64, SECCOMP_MODE_STRICT, 0, 0, 0, 0],
            )?;
            return Ok(());
        }
        for f in &th.filters {
            if f.insns.is_empty() || f.insns.len() > BPF_MAXINSNS {
                return Err(ChkptError::Inconsistent(format!(
                    "a seccomp filter of {} instructions",
                    f.insns.len()
                )));
            }
            let at = self.scratch();
            self.put_bytes(&sock_fprog(at, f))?;
            inj.call(
                "seccomp(SECCOMP_SET_MODE_FILTER)",
                libc::SYS_seccomp,
                [SECCOMP_SET_MODE_FILTER, f.flags & KEPT_FLAGS, at, 0, 0, 0],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_layout() {
        let f = SeccompFilter {
            flags: 0,
            insns: vec![0x0000_0000_0000_0006, 0x7fff_0000_0000_0006],
        };
        let b = sock_fprog(0x1000, &f);
        assert_eq!(b.len(), 32);
        assert_eq!(&b[0..2], &2u16.to_le_bytes());
        assert_eq!(&b[8..16], &0x1010u64.to_le_bytes());
        assert_eq!(&b[24..32], &0x7fff_0000_0000_0006u64.to_le_bytes());
    }
}
