//! Signal state: handlers, alternate stack, itimers, pending signals.

use crate::error::Result;
use crate::image::SigAction;
use crate::restore::TaskCtx;

pub fn restore(c: &TaskCtx) -> Result<()> {
    let i = c.inj;
    let t = c.task;
    // Every handler the restarter had is replaced: recorded or default.
    for sig in 1..=64u32 {
        if sig == libc::SIGKILL as u32 || sig == libc::SIGSTOP as u32 {
            continue;
        }
        let a = t.sigactions.iter().find(|a| a.sig == sig).copied().unwrap_or(SigAction { sig, ..Default::default() });
        let mut b = Vec::new();
        for w in [a.handler, a.flags, a.restorer, a.mask] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let addr = c.put_bytes(&b)?;
        i.call("rt_sigaction", libc::SYS_rt_sigaction, [sig as u64, addr, 0, 8, 0, 0])?;
    }
    let (sp, flags, size) = t.altstack;
    let flags = if flags & libc::SS_DISABLE as u32 != 0 { libc::SS_DISABLE as u32 } else { flags & !(libc::SS_ONSTACK as u32) };
    let mut b = Vec::new();
    b.extend_from_slice(&sp.to_le_bytes());
    b.extend_from_slice(&(flags as u64).to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    let addr = c.put_bytes(&b)?;
    i.call("sigaltstack", libc::SYS_sigaltstack, [addr, 0, 0, 0, 0, 0])?;
    for which in 0..3u32 {
        let it = t.itimers.iter().find(|x| x.which == which);
        let (iv, val) = it.map_or((0, 0), |x| (x.interval_us, x.value_us));
        let mut b = Vec::new();
        for w in [iv / 1_000_000, iv % 1_000_000, val / 1_000_000, val % 1_000_000] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let addr = c.put_bytes(&b)?;
        i.call("setitimer", libc::SYS_setitimer, [which as u64, addr, 0, 0, 0, 0])?;
    }
    Ok(())
}

/// Queue the signals that were pending back onto the process (to itself,
/// which the kernel allows with any siginfo). All signals are blocked while
/// we do it, so none is delivered before the recorded mask is in place.
pub fn queue_pending(c: &TaskCtx) -> Result<()> {
    let i = c.inj;
    let pid = c.task.pid;
    let th = &c.task.threads[0];
    if th.pending.is_empty() && c.mm.shared_pending.is_empty() {
        return Ok(());
    }
    crate::ptrace::set_sigmask(pid, u64::MAX)?;
    for (shared, list) in [(true, &c.mm.shared_pending), (false, &th.pending)] {
        for si in list {
            let sig = u32::from_le_bytes([si[0], si[1], si[2], si[3]]) as u64;
            let addr = c.put_bytes(si)?;
            if shared {
                i.call("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo, [pid as u64, sig, addr, 0, 0, 0])?;
            } else {
                i.call("rt_tgsigqueueinfo", libc::SYS_rt_tgsigqueueinfo, [pid as u64, th.tid as u64, sig, addr, 0, 0])?;
            }
        }
    }
    Ok(())
}
