//! Thin, commented wrappers around ptrace and syscall injection.
//!
//! Injection runs one system call inside a stopped tracee: save its
//! registers, point `rip` at a `syscall` instruction somewhere executable in
//! its address space, load the arguments, single-step, read `rax`, put the
//! registers back. No code of ours ever runs inside the tracee.

use std::io;

use crate::error::{ChkptError, Result};
pub use crate::image::Regs;
use crate::image::Rseq;

const NT_PRSTATUS: libc::c_int = 1;
const NT_X86_XSTATE: libc::c_int = 0x202;

fn check(r: libc::c_long, op: &str, pid: i32) -> Result<libc::c_long> {
    if r < 0 {
        Err(ChkptError::sys(op, pid))
    } else {
        Ok(r)
    }
}

/// `PTRACE_O_SUSPEND_SECCOMP` (not in the libc crate): the tracee's
/// seccomp filters (or strict mode) do not apply while it is traced, so
/// that calls injected into a filtered task run. Root only (CAP_SYS_ADMIN);
/// detaching ends it.
const PTRACE_O_SUSPEND_SECCOMP: libc::c_long = 1 << 21;

/// The options every tracee gets: seccomp suspended when we may.
fn trace_options() -> libc::c_long {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        PTRACE_O_SUSPEND_SECCOMP
    } else {
        0
    }
}

/// Suspend the seccomp filters of `tid`, a tracee of ours (one that made
/// itself traced with PTRACE_TRACEME has no options yet). Best effort: a
/// tracer that may not (itself under seccomp, in a container) goes on,
/// and only a task with filters would notice.
pub fn suspend_seccomp(tid: i32) {
    // SAFETY: plain ptrace request on a tid; no memory is passed.
    unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, tid, 0, trace_options()) };
}

/// Attach without stopping, then stop the thread with PTRACE_INTERRUPT and
/// wait for that stop. Returns the stop signal (SIGSTOP, SIGTSTP, …) when
/// the thread's group is stopped by job control (a SIGSTOP'ed process):
/// the kernel reports that group stop in place of the interrupt's SIGTRAP.
pub fn seize_and_interrupt(tid: i32) -> Result<Option<i32>> {
    // SAFETY: plain ptrace requests on a tid; no memory is passed.
    let mut r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, trace_options()) };
    if r < 0 && trace_options() != 0 {
        // not allowed to suspend seccomp (see suspend_seccomp): without
        // SAFETY: as above.
        r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) };
    }
    check(r, "PTRACE_SEIZE", tid)?;
    check(
        // SAFETY: as above.
        unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) },
        "PTRACE_INTERRUPT",
        tid,
    )?;
    loop {
        let (sig, event) = wait_status(tid)?;
        if event == libc::PTRACE_EVENT_STOP {
            return Ok((sig != libc::SIGTRAP).then_some(sig));
        }
        // A signal arrived before our interrupt: let the process have it
        // (not lose it) and wait for the interrupt stop that follows.
        check(
            // SAFETY: no memory passed.
            unsafe { libc::ptrace(libc::PTRACE_CONT, tid, 0, sig as libc::c_long) },
            "PTRACE_CONT",
            tid,
        )?;
    }
}

/// Wait until `tid` is in a ptrace stop; returns the stop signal.
pub fn wait_stop(tid: i32) -> Result<i32> {
    wait_status(tid).map(|(sig, _)| sig)
}

/// Wait for a ptrace stop; returns (signal, PTRACE_EVENT_* or 0).
fn wait_status(tid: i32) -> Result<(i32, i32)> {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out pointer.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(ChkptError::sys("waitpid", tid));
        }
        if libc::WIFSTOPPED(status) {
            return Ok((libc::WSTOPSIG(status), (status >> 16) & 0xff));
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return Err(ChkptError::Tracee {
                pid: tid,
                what: "exited while being checkpointed or restored".into(),
            });
        }
    }
}

pub fn detach(tid: i32) -> Result<()> {
    detach_with(tid, 0)
}

/// Detach and deliver `sig` (0: none); with SIGSTOP the task goes into a
/// group stop before running any instruction of its own (a job stopped
/// when it was checkpointed, or one migration is about to move).
pub fn detach_with(tid: i32, sig: i32) -> Result<()> {
    check(
        // SAFETY: no memory passed.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, sig as libc::c_long) },
        "PTRACE_DETACH",
        tid,
    )
    .map(|_| ())
}

pub fn get_regs(tid: i32) -> Result<Regs> {
    // SAFETY: user_regs_struct is plain data; zero is a valid value.
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: &mut regs as *mut Regs as *mut libc::c_void,
        iov_len: std::mem::size_of::<Regs>(),
    };
    check(
        // SAFETY: iov points at a buffer of iov_len bytes that lives across the call.
        unsafe { libc::ptrace(libc::PTRACE_GETREGSET, tid, NT_PRSTATUS, &mut iov) },
        "PTRACE_GETREGSET",
        tid,
    )?;
    Ok(regs)
}

pub fn set_regs(tid: i32, regs: &Regs) -> Result<()> {
    let mut iov = libc::iovec {
        iov_base: regs as *const Regs as *mut libc::c_void,
        iov_len: std::mem::size_of::<Regs>(),
    };
    check(
        // SAFETY: the kernel only reads iov_len bytes from iov_base.
        unsafe { libc::ptrace(libc::PTRACE_SETREGSET, tid, NT_PRSTATUS, &mut iov) },
        "PTRACE_SETREGSET",
        tid,
    )?;
    Ok(())
}

pub fn get_xstate(tid: i32) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    check(
        // SAFETY: iov covers buf; the kernel shrinks iov_len to what it wrote.
        unsafe { libc::ptrace(libc::PTRACE_GETREGSET, tid, NT_X86_XSTATE, &mut iov) },
        "GETREGSET xstate",
        tid,
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

pub fn set_xstate(tid: i32, xs: &[u8]) -> Result<()> {
    let mut iov = libc::iovec {
        iov_base: xs.as_ptr() as *mut libc::c_void,
        iov_len: xs.len(),
    };
    check(
        // SAFETY: the kernel only reads from the buffer.
        unsafe { libc::ptrace(libc::PTRACE_SETREGSET, tid, NT_X86_XSTATE, &mut iov) },
        "SETREGSET xstate",
        tid,
    )?;
    Ok(())
}

pub fn get_sigmask(tid: i32) -> Result<u64> {
    let mut m: u64 = 0;
    check(
        // SAFETY: 8-byte out buffer, size passed as addr.
        unsafe { libc::ptrace(libc::PTRACE_GETSIGMASK, tid, 8usize, &mut m) },
        "PTRACE_GETSIGMASK",
        tid,
    )?;
    Ok(m)
}

pub fn set_sigmask(tid: i32, m: u64) -> Result<()> {
    check(
        // SAFETY: 8-byte in buffer.
        unsafe { libc::ptrace(libc::PTRACE_SETSIGMASK, tid, 8usize, &m) },
        "PTRACE_SETSIGMASK",
        tid,
    )?;
    Ok(())
}

/// Pending signals (`shared` = the process-wide queue) as raw 128-byte siginfos.
pub fn peek_pending(tid: i32, shared: bool) -> Result<Vec<Vec<u8>>> {
    #[repr(C)]
    struct PeekArgs {
        off: u64,
        flags: u32,
        nr: i32,
    }
    let mut out = Vec::new();
    loop {
        let args = PeekArgs {
            off: out.len() as u64,
            flags: if shared { 1 } else { 0 },
            nr: 1,
        };
        let mut si = [0u8; 128];
        // SAFETY: args and si are valid for the call; nr = 1 siginfo of 128 bytes.
        let r = unsafe {
            libc::ptrace(
                0x4209, /* PTRACE_PEEKSIGINFO */
                tid,
                &args,
                si.as_mut_ptr(),
            )
        };
        if r < 0 {
            return Err(ChkptError::sys("PTRACE_PEEKSIGINFO", tid));
        }
        if r == 0 {
            return Ok(out);
        }
        out.push(si.to_vec());
    }
}

/// Write bytes into the tracee's memory through /proc/PID/mem (works on
/// read-only pages too, as a debugger does).
pub fn write_mem(pid: i32, addr: u64, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let path = format!("/proc/{pid}/mem");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| ChkptError::io(&path, e))?;
    f.write_all_at(data, addr)
        .map_err(|e| ChkptError::io(&path, e))
}

pub fn read_mem(pid: i32, addr: u64, len: usize) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let path = format!("/proc/{pid}/mem");
    let f = std::fs::File::open(&path).map_err(|e| ChkptError::io(&path, e))?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, addr)
        .map_err(|e| ChkptError::io(&path, e))?;
    Ok(buf)
}

/// The signal mask while calls are injected: everything but SIGTRAP. The
/// single-step trap is a forced SIGTRAP, and the kernel resets the handler
/// of a forced signal that is blocked to SIG_DFL — a program that catches
/// SIGTRAP (breakpoints on itself) would die at its next one. Unblocked, the
/// trap only stops the thread for us and is discarded.
pub const INJECT_MASK: u64 = !(1u64 << (libc::SIGTRAP - 1));

/// Runs system calls inside a ptrace-stopped thread.
pub struct Injector {
    pub tid: i32,
    /// Address of a `syscall` instruction (0f 05) in the tracee.
    pub syscall_at: u64,
    saved: Regs,
    saved_mask: u64,
}

/// Find a `syscall` instruction (0f 05) in the task's vDSO: injection jumps there.
pub fn find_syscall_insn(pid: i32, maps: &[crate::procfs::MapLine]) -> Result<u64> {
    let vdso = maps.iter().find(|m| m.path == "[vdso]").ok_or_else(|| {
        ChkptError::unsupported(
            pid,
            "a process without [vdso]",
            "no place to inject system calls",
        )
    })?;
    let bytes = read_mem(pid, vdso.start, (vdso.end - vdso.start) as usize)?;
    bytes
        .windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|i| vdso.start + i as u64)
        .ok_or_else(|| {
            ChkptError::unsupported(pid, "a vDSO without a syscall instruction", "cannot inject")
        })
}

impl Injector {
    /// Saves the thread's registers and signal mask and blocks every signal
    /// but SIGTRAP ([`INJECT_MASK`]), so that no signal (an itimer's, say)
    /// is delivered in the middle of an injected call; they stay pending
    /// and are delivered after [`restore`].
    pub fn new(tid: i32, syscall_at: u64) -> Result<Self> {
        let saved_mask = get_sigmask(tid)?;
        set_sigmask(tid, INJECT_MASK)?;
        Ok(Self {
            tid,
            syscall_at,
            saved: get_regs(tid)?,
            saved_mask,
        })
    }

    /// The signal mask the thread had before injection.
    pub fn saved_mask(&self) -> u64 {
        self.saved_mask
    }

    pub fn saved_regs(&self) -> &Regs {
        &self.saved
    }

    /// Run `nr(args)`; returns the raw result (negative errno on failure).
    pub fn raw(&self, nr: libc::c_long, args: [u64; 6]) -> Result<i64> {
        self.raw_with_event(nr, args).map(|(r, _)| r)
    }

    /// Run `execve(args)`, with PTRACE_O_TRACEEXEC set on the tracee: Ok
    /// once the new program is in place (stopped at its exec event, none
    /// of it run yet), else the call's error.
    pub fn exec(&self, args: [u64; 6]) -> Result<()> {
        let (r, event) = self.raw_with_event(libc::SYS_execve, args)?;
        if event == libc::PTRACE_EVENT_EXEC {
            return Ok(());
        }
        Err(ChkptError::Injected {
            name: "execve",
            pid: self.tid,
            errno: io::Error::from_raw_os_error(-r as i32),
        })
    }

    /// [`raw`](Self::raw), and the PTRACE_EVENT_* of the stop it ended at.
    fn raw_with_event(&self, nr: libc::c_long, args: [u64; 6]) -> Result<(i64, i32)> {
        let mut r = self.saved;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX; // not in a syscall: no restart logic on resume
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        r.rip = self.syscall_at;
        set_regs(self.tid, &r)?;
        // A task seized while stopped by job control (SIGSTOP) traps once
        // more for that group stop (PTRACE_EVENT_STOP) before it runs the
        // step: step again, nothing was executed.
        let mut tries = 0;
        let (sig, event) = loop {
            check(
                // SAFETY: no memory passed.
                unsafe { libc::ptrace(libc::PTRACE_SINGLESTEP, self.tid, 0, 0) },
                "PTRACE_SINGLESTEP",
                self.tid,
            )?;
            let (sig, event) = wait_status(self.tid)?;
            if event != libc::PTRACE_EVENT_STOP || tries == 3 {
                break (sig, event);
            }
            tries += 1;
        };
        if sig != libc::SIGTRAP {
            let at = get_regs(self.tid).map(|r| r.rip).unwrap_or(0);
            return Err(ChkptError::Tracee {
                pid: self.tid,
                what: format!(
                    "signal {sig} at {at:#x} during injected syscall {nr} at {:#x}",
                    self.syscall_at
                ),
            });
        }
        Ok((get_regs(self.tid)?.rax as i64, event))
    }

    /// Like [`raw`](Self::raw) but turns a negative result into an error.
    pub fn call(&self, name: &'static str, nr: libc::c_long, args: [u64; 6]) -> Result<u64> {
        let r = self.raw(nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(ChkptError::Injected {
                name,
                pid: self.tid,
                errno: io::Error::from_raw_os_error(-r as i32),
            });
        }
        Ok(r as u64)
    }

    /// Put the registers saved at creation back.
    pub fn restore(&self) -> Result<()> {
        set_regs(self.tid, &self.saved)?;
        set_sigmask(self.tid, self.saved_mask)
    }
}

/// The thread's registered rseq area (PTRACE_GET_RSEQ_CONFIGURATION):
/// address 0 when none.
pub fn rseq_config(tid: i32) -> Result<Rseq> {
    let mut conf = [0u64; 3];
    // SAFETY: conf is 24 bytes, the size passed.
    let r = unsafe {
        libc::ptrace(
            0x420f, /* PTRACE_GET_RSEQ_CONFIGURATION */
            tid,
            24usize,
            conf.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(ChkptError::sys("PTRACE_GET_RSEQ_CONFIGURATION", tid));
    }
    Ok(Rseq {
        addr: conf[0],
        len: conf[1] as u32,
        sig: (conf[1] >> 32) as u32,
    })
}
