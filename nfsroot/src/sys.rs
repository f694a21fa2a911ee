//! The few system calls `serve` and `boot-test` make themselves, each in a
//! small function next to its `unsafe` block: entering a network namespace,
//! a private mount namespace with its own /run, signal masks, and what a
//! child process resets before it runs a daemon.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::error::{NfsrootError, Result};

fn last_os_error(what: impl Into<String>) -> NfsrootError {
    NfsrootError::io(what, std::io::Error::last_os_error())
}

/// Move the calling thread into the network namespace `/run/netns/NAME`
/// (made by `ip netns add`). Call it before any thread is started: later
/// threads and children inherit it.
pub fn enter_netns(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(NfsrootError::Image(format!(
            "{name:?} is not a network namespace name"
        )));
    }
    let path = Path::new("/run/netns").join(name);
    let f = std::fs::File::open(&path)
        .map_err(|e| NfsrootError::io(format!("opening {}", path.display()), e))?;
    // SAFETY: setns on a descriptor we own, for the network namespace type
    // only; it touches no memory of this process.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(last_os_error(format!("entering network namespace {name}")));
    }
    Ok(())
}

/// Give this process a mount namespace of its own, nothing propagating back,
/// with an empty tmpfs on /run: rpcbind's socket and the daemons' pid files
/// then belong to this server alone. Must run while single-threaded
/// (unshare(CLONE_NEWNS) refuses a multi-threaded caller).
pub fn private_run() -> Result<()> {
    // SAFETY: unshare only changes this process's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(last_os_error("unshare(CLONE_NEWNS)"));
    }
    let root = CString::new("/").map_err(|_| NfsrootError::Image("bad path".into()))?;
    let run = CString::new("/run").map_err(|_| NfsrootError::Image("bad path".into()))?;
    let tmpfs = CString::new("tmpfs").map_err(|_| NfsrootError::Image("bad path".into()))?;
    let opts = CString::new("mode=0755").map_err(|_| NfsrootError::Image("bad path".into()))?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call, or null where mount(2) allows it (no source, no data).
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(last_os_error("making / private in the new mount namespace"));
    }
    // SAFETY: as above; the data argument is a NUL-terminated option string.
    let rc = unsafe {
        libc::mount(
            tmpfs.as_ptr(),
            run.as_ptr(),
            tmpfs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(last_os_error("mounting a private tmpfs on /run"));
    }
    Ok(())
}

fn term_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the set we pass, which is a
    // plain value initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Block SIGINT, SIGTERM and SIGHUP in the calling thread (and the threads
/// it starts later), so that [`wait_term_signal`] receives them.
pub fn block_term_signals() {
    let set = term_set();
    // SAFETY: changes the signal mask of the calling thread only.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Wait until SIGINT, SIGTERM or SIGHUP arrives (they must be blocked).
pub fn wait_term_signal() -> i32 {
    let set = term_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: sigwait writes the received signal number into `sig`.
    unsafe {
        libc::sigwait(&set, &mut sig);
    }
    sig
}

/// Make `cmd`'s child start with every signal unblocked (a blocked mask is
/// inherited across exec) and die with SIGKILL when the thread that started
/// it ends, so a daemon never outlives the process that runs it.
pub fn daemon_child(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only async-signal-safe functions (sigemptyset, sigprocmask, prctl).
    unsafe {
        cmd.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        })
    }
}

/// Send `sig` to process `pid` (one we started). Errors (already gone) are
/// ignored: the caller waits for the process anyway.
pub fn kill(pid: u32, sig: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) on one positive PID, never a group or -1.
    unsafe {
        libc::kill(pid, sig);
    }
}
