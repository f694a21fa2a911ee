//! Starting a process in a new PID namespace, krgd its parent, and the
//! pidfd calls on it: the primitives under the [spawner](super::spawner)
//! thread and the [zygote](super::zygote).
//!
//! The clone is `CLONE_VM | CLONE_VFORK` (as posix_spawn does: no page
//! tables copied, the calling thread waits until the child has executed the
//! init) with `CLONE_NEWPID` and `CLONE_PIDFD`. Between clone and execve the
//! child shares krgd's memory, so it only makes raw system calls on data
//! prepared beforehand. Its parent-death signal (SIGKILL, so a krgd killed
//! with -9 takes its jobs with it) follows the thread that cloned it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Size of the stack the child runs on until it executes the init.
const CHILD_STACK: usize = 64 * 1024;
/// At most this many descriptors are handed to the init (0..N).
pub const MAX_FDS: usize = 8;

/// A started init: its PID (in krgd's namespace) and a pidfd for it.
#[derive(Debug)]
pub struct InitProcess {
    /// PID in krgd's namespace.
    pub pid: i32,
    /// A pidfd: signals and waits that cannot hit a recycled PID.
    pub pidfd: OwnedFd,
}

/// What the child reads, prepared by the parent before the clone.
#[repr(C)]
struct ChildArgs {
    path: *const libc::c_char,
    argv: [*const libc::c_char; 2],
    envp: [*const libc::c_char; 1],
    fds: [RawFd; MAX_FDS],
    nfds: usize,
    /// errno of a failed step, written by the child before it exits.
    errno: i32,
}

/// Execute `init` in a child of this thread, in a new PID namespace if
/// `new_pid_ns` (a job's init; the zygote shares krgd's namespace).
pub fn clone_init(init: &CString, fds: &[OwnedFd], new_pid_ns: bool) -> io::Result<InitProcess> {
    let mut args = ChildArgs {
        path: init.as_ptr(),
        argv: [c"krg-init".as_ptr(), std::ptr::null()],
        envp: [std::ptr::null()],
        fds: [-1; MAX_FDS],
        nfds: fds.len(),
        errno: 0,
    };
    for (slot, fd) in args.fds.iter_mut().zip(fds) {
        *slot = fd.as_raw_fd();
    }
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down: hand over its (16-byte aligned) top.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    let mut pidfd: libc::c_int = -1;
    let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
    if new_pid_ns {
        flags |= libc::CLONE_NEWPID;
    }
    // SAFETY: `top` is the top of a live, writable stack the child uses
    // until it executes or exits (CLONE_VFORK keeps this thread, and so
    // `stack` and `args`, waiting until then); `child` only makes system
    // calls with the prepared data. With CLONE_PIDFD the pidfd is stored
    // through the parent_tid argument.
    let pid = unsafe {
        libc::clone(
            child,
            top as *mut libc::c_void,
            flags,
            (&mut args as *mut ChildArgs).cast(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel stored a new pidfd for the child; we own it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: the child has executed or exited: nothing writes `args` any more.
    let errno = unsafe { std::ptr::read_volatile(&args.errno) };
    drop(stack);
    if errno != 0 {
        reap(&pidfd);
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok(InitProcess { pid, pidfd })
}

/// Wait for a child of krgd to end (one that has exited or been killed).
pub fn reap(pidfd: &OwnedFd) {
    // SAFETY: siginfo is a local the kernel fills; the pidfd is ours.
    unsafe {
        let mut info = std::mem::zeroed::<libc::siginfo_t>();
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED,
        );
    }
}

/// The child, on the borrowed stack, sharing krgd's memory: only system
/// calls on prepared data until execve.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildArgs the parent prepared and keeps alive
    // (it waits, CLONE_VFORK); every call below is a plain system call.
    unsafe {
        let a = &mut *arg.cast::<ChildArgs>();
        let fail = |a: &mut ChildArgs| -> libc::c_int {
            a.errno = *libc::__errno_location();
            if a.errno == 0 {
                a.errno = libc::EIO;
            }
            libc::_exit(127)
        };
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return fail(a);
        }
        if !place_fds(&a.fds[..a.nfds.min(MAX_FDS)]) {
            return fail(a);
        }
        libc::execve(a.path, a.argv.as_ptr(), a.envp.as_ptr());
        fail(a)
    }
}

/// Make `fds` this process's descriptors 0, 1, 2, ... and close every
/// other one. Only system calls on stack data, no allocation: callable in
/// a child that shares its parent's memory. False (errno set) on failure.
pub fn place_fds(fds: &[RawFd]) -> bool {
    let n = fds.len().min(MAX_FDS);
    // Move every descriptor above the targets first, so that placing one
    // never overwrites another not yet placed.
    let mut high = [-1; MAX_FDS];
    for (h, fd) in high.iter_mut().zip(fds).take(n) {
        // SAFETY: fcntl on a descriptor number; no memory is passed.
        *h = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 64) };
        if *h < 0 {
            return false;
        }
    }
    for (i, fd) in high.iter().enumerate().take(n) {
        // SAFETY: dup2 on descriptor numbers.
        if unsafe { libc::dup2(*fd, i as libc::c_int) } < 0 {
            return false;
        }
    }
    // SAFETY: close_range on a range of descriptor numbers.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            n as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    true
}

/// Send `signal` to the process behind `pidfd`.
pub fn pidfd_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: a pidfd we own and a signal number; no info struct.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Open a pidfd for `pid`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Reap the exited process behind `pidfd`; its wait(2)-style status, or
/// None if it has not exited yet.
pub fn try_reap(pidfd: &OwnedFd) -> io::Result<Option<i32>> {
    // SAFETY: siginfo is a local the kernel fills; the pidfd is ours.
    let info = unsafe {
        let mut info = std::mem::zeroed::<libc::siginfo_t>();
        let rc = libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        );
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        info
    };
    // SAFETY: waitid filled `info`; si_pid is 0 when nothing has exited.
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match code {
        libc::CLD_EXITED => (status & 0xff) << 8,
        libc::CLD_DUMPED => (status & 0x7f) | 0x80,
        _ => status & 0x7f,
    }))
}

/// Wait for `pid` to end, then reap it once it is krgd's child: a process
/// restored by `restart` (or its page server) comes to krgd, a child
/// subreaper, only when restart exits, and a moved process's child comes
/// to krgd when its parent ends without having waited for it; so an end
/// seen while another process is the parent is waited for again, until
/// the process is reaped (by krgd here, or by its parent). Its wait
/// status; None when its parent reaped it, or krgd cannot watch it.
pub async fn reap_adopted(pid: i32) -> Option<i32> {
    let fd = pidfd_open(pid).ok()?;
    let afd = super::fdio::register(fd).ok()?;
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        // readable once it has ended; not before: a live process that is
        // not krgd's child must not be taken for one it cannot wait for
        let mut ready = afd.readable().await.ok()?;
        ready.clear_ready();
        match try_reap(afd.get_ref()) {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            // ended as another process's child: that parent may reap it,
            // or end first and leave it to krgd (a zombie holds its PID,
            // which a process moved back here needs)
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                // a zombie still takes a signal; a reaped process does not
                if pidfd_signal(afd.get_ref(), 0).is_err() {
                    return None;
                }
            }
            Err(_) => return None,
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(100));
    }
}
