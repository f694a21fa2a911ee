//! POSIX timers made again with their ids — `PR_TIMER_CREATE_RESTORE_IDS`
//! (Linux 6.16) makes `timer_create` take the id it is given — and armed
//! with what they had left. Last of a task's restore, as the job's user:
//! the time restore takes does not count against them, and a clock the
//! user may not use (an alarm clock without CAP_WAKE_ALARM) is refused
//! as it would be to the user.

use crate::error::{ChkptError, Result};
use crate::image::PosixTimer;
use crate::ptrace;

use super::ctx::TaskCtx;

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const SIGEV_THREAD_ID: i32 = 4;

/// The `struct sigevent` (64 bytes on x86_64) of `t`, then the id wanted.
fn sigevent(t: &PosixTimer, tid: i32) -> Vec<u8> {
    let mut b = vec![0u8; 72];
    b[0..8].copy_from_slice(&t.value.to_le_bytes());
    b[8..12].copy_from_slice(&t.signo.to_le_bytes());
    b[12..16].copy_from_slice(&t.notify.to_le_bytes());
    b[16..20].copy_from_slice(&tid.to_le_bytes());
    b[64..68].copy_from_slice(&t.id.to_le_bytes());
    b
}

/// `struct itimerspec`: the period, then the time to the next expiry.
fn itimerspec(t: &PosixTimer) -> Vec<u8> {
    let mut b = Vec::with_capacity(32);
    for ns in [t.interval_ns, t.next_ns] {
        b.extend_from_slice(&((ns / 1_000_000_000) as i64).to_le_bytes());
        b.extend_from_slice(&((ns % 1_000_000_000) as i64).to_le_bytes());
    }
    b
}

impl TaskCtx<'_> {
    pub fn restore_timers(&self) -> Result<()> {
        let timers = &self.task.attrs.posix_timers;
        if timers.is_empty() {
            return Ok(());
        }
        let i = self.inj;
        i.call(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
            libc::SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0],
        )
        .map_err(|e| match e {
            ChkptError::Injected { errno, .. } if errno.raw_os_error() == Some(libc::EINVAL) => {
                ChkptError::Kernel(
                    "POSIX timers are restored with their ids on Linux 6.16 or later".into(),
                )
            }
            e => e,
        })?;
        for t in timers {
            self.make_timer(t)?;
        }
        i.call(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
            libc::SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0],
        )?;
        Ok(())
    }

    fn make_timer(&self, t: &PosixTimer) -> Result<()> {
        let tid = match t.notify {
            SIGEV_THREAD_ID => self
                .task
                .threads
                .get(t.thread as usize)
                .map(|th| th.tid)
                .ok_or_else(|| {
                    ChkptError::Inconsistent(format!(
                        "POSIX timer {} signals thread #{}, which task {} does not have",
                        t.id, t.thread, self.task.pid
                    ))
                })?,
            _ => 0,
        };
        let at = self.put_bytes(&sigevent(t, tid))?;
        self.inj.call(
            "timer_create",
            libc::SYS_timer_create,
            [t.clock as u64, at, at + 64, 0, 0, 0],
        )?;
        let got = ptrace::read_mem(self.inj.tid, at + 64, 4)?;
        let got = i32::from_le_bytes([got[0], got[1], got[2], got[3]]);
        if got != t.id {
            return Err(ChkptError::Inconsistent(format!(
                "POSIX timer {} came back as timer {got}",
                t.id
            )));
        }
        if t.next_ns == 0 {
            return Ok(());
        }
        let spec = self.put_bytes(&itimerspec(t))?;
        self.inj.call(
            "timer_settime",
            libc::SYS_timer_settime,
            [t.id as u64, 0, spec, 0, 0, 0],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_structures() {
        let t = PosixTimer {
            id: 3,
            clock: 1,
            notify: SIGEV_THREAD_ID,
            signo: 10,
            value: 0x1122,
            thread: 1,
            next_ns: 2_500_000_000,
            interval_ns: 50_000_000,
        };
        let e = sigevent(&t, 4244);
        assert_eq!(e.len(), 72);
        assert_eq!(&e[0..8], &0x1122u64.to_le_bytes());
        assert_eq!(&e[8..12], &10i32.to_le_bytes());
        assert_eq!(&e[12..16], &4i32.to_le_bytes());
        assert_eq!(&e[16..20], &4244i32.to_le_bytes());
        assert_eq!(&e[64..68], &3i32.to_le_bytes());
        let s = itimerspec(&t);
        let w: Vec<i64> = s
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(w, vec![0, 50_000_000, 2, 500_000_000]);
    }
}
