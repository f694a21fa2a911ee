//! Signal state: handlers, alternate stack, itimers, pending signals.

use super::ctx::TaskCtx;
use crate::error::Result;
use crate::image::SigAction;

pub fn restore(c: &TaskCtx) -> Result<()> {
    let i = c.inj;
    let t = c.task;
    // Every handler the restarter had is replaced: recorded or default.
    for sig in 1..=64u32 {
        if sig == libc::SIGKILL as u32 || sig == libc::SIGSTOP as u32 {
            continue;
        }
        let a = t
            .sigactions
            .iter()
            .find(|a| a.sig == sig)
            .copied()
            .unwrap_or(SigAction {
                sig,
                ..Default::default()
            });
        let mut b = Vec::new();
        for w in [a.handler, a.flags, a.restorer, a.mask] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let addr = c.put_bytes(&b)?;
        i.call(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            [sig as u64, addr, 0, 8, 0, 0],
        )?;
    }
    let crate::image::AltStack { sp, flags, size } = t.altstack;
    let flags = if flags & libc::SS_DISABLE as u32 != 0 {
        libc::SS_DISABLE as u32
    } else {
        flags & !(libc::SS_ONSTACK as u32)
    };
    let mut b = Vec::new();
    b.extend_from_slice(&sp.to_le_bytes());
    b.extend_from_slice(&(flags as u64).to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    let addr = c.put_bytes(&b)?;
    i.call("sigaltstack", libc::SYS_sigaltstack, [addr, 0, 0, 0, 0, 0])?;
    for which in 0..3u32 {
        let it = t.itimers.iter().find(|x| x.which == which);
        let (iv, mut val) = it.map_or((0, 0), |x| (x.interval_us, x.value_us));
        // An expired periodic timer whose signal is still pending reads as 0
        // (the kernel re-arms it when the signal is taken); 0 would disarm it.
        if val == 0 && iv != 0 {
            val = iv;
        }
        let mut b = Vec::new();
        for w in [
            iv / 1_000_000,
            iv % 1_000_000,
            val / 1_000_000,
            val % 1_000_000,
        ] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let addr = c.put_bytes(&b)?;
        i.call(
            "setitimer",
            libc::SYS_setitimer,
            [which as u64, addr, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// Queue the signals that were pending back onto the process (to itself,
/// which the kernel allows with any siginfo). All signals but SIGTRAP (see
/// [`INJECT_MASK`](crate::ptrace::INJECT_MASK)) are blocked while
/// we do it, so none is delivered before the recorded mask is in place.
pub fn queue_pending(c: &TaskCtx) -> Result<()> {
    let i = c.inj;
    let pid = c.task.pid;
    if c.task.threads.iter().all(|t| t.pending.is_empty()) && c.mm.shared_pending.is_empty() {
        return Ok(());
    }
    crate::ptrace::set_sigmask(pid, crate::ptrace::INJECT_MASK)?;
    let sig_of = |si: &[u8]| {
        si.get(..4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])) as u64
    };
    for si in &c.mm.shared_pending {
        let addr = c.put_bytes(si)?;
        i.call(
            "rt_sigqueueinfo",
            libc::SYS_rt_sigqueueinfo,
            [pid as u64, sig_of(si), addr, 0, 0, 0],
        )?;
    }
    for th in &c.task.threads {
        for si in &th.pending {
            let addr = c.put_bytes(si)?;
            i.call(
                "rt_tgsigqueueinfo",
                libc::SYS_rt_tgsigqueueinfo,
                [pid as u64, th.tid as u64, sig_of(si), addr, 0, 0],
            )?;
        }
    }
    Ok(())
}
