//! The zygote's side, run by `krg-init` (see the module above for the
//! protocol).

use std::os::fd::{IntoRawFd, OwnedFd, RawFd};

use super::{encode_reply, recv_with_fds, send_with_fds, READY, ZYGOTE_FD};
use crate::service::proc::initspec::SPEC_FD;
use crate::service::proc::spawn::{place_fds, MAX_FDS};

/// Whether this `krg-init` was started as the zygote: descriptor 0 is a
/// `SOCK_SEQPACKET` socket and there is no spec pipe (a job's init always
/// has one at `SPEC_FD`; its stdin is never a seqpacket socket).
pub fn is_zygote() -> bool {
    // SAFETY: fcntl and getsockopt on descriptor numbers; `ty` and `len`
    // are locals of the sizes given.
    unsafe {
        if libc::fcntl(SPEC_FD, libc::F_GETFD) >= 0 {
            return false;
        }
        let mut ty: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::getsockopt(
            0,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        ) == 0
            && ty == libc::SOCK_SEQPACKET
    }
}

/// Serve krgd's requests. Returns only in the init of a new job, with its
/// descriptors in place; the zygote itself exits when krgd closes its end.
pub fn serve() {
    if !take_socket() {
        std::process::exit(1);
    }
    if send_with_fds(ZYGOTE_FD, &[READY], &[]).is_err() {
        std::process::exit(1);
    }
    loop {
        let mut count = [0u8; 1];
        let fds = match recv_with_fds(ZYGOTE_FD, &mut count) {
            Ok((0, _)) | Err(_) => std::process::exit(0),
            Ok((_, fds)) => fds,
        };
        let reply = if fds.is_empty() || fds.len() > MAX_FDS || fds.len() != count[0] as usize {
            encode_reply(0, libc::EINVAL)
        } else {
            match fork_init() {
                Ok(0) => return become_init(fds),
                Ok(pid) => encode_reply(pid, 0),
                Err(errno) => encode_reply(0, errno),
            }
        };
        drop(fds);
        if send_with_fds(ZYGOTE_FD, &reply, &[]).is_err() {
            std::process::exit(0);
        }
    }
}

/// Move the socket from 0 to [`ZYGOTE_FD`] and put /dev/null on 0-2.
fn take_socket() -> bool {
    // SAFETY: descriptor calls on numbers and a constant path.
    unsafe {
        if libc::dup3(0, ZYGOTE_FD, libc::O_CLOEXEC) < 0 {
            return false;
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0 {
            return false;
        }
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        libc::close(null);
    }
    true
}

/// Clone the next job's init: PID 1 of a new PID namespace, a child of
/// krgd (`CLONE_PARENT`). 0 in the child, the child's PID in the zygote.
fn fork_init() -> Result<i32, i32> {
    let flags = (libc::CLONE_NEWPID | libc::CLONE_PARENT) as libc::c_ulong;
    // SAFETY: a fork-like clone (no CLONE_VM, no new stack): the child goes
    // on with a copy of this single-threaded process's memory, as after
    // fork(2). glibc does not know of the child, so its thread descriptor
    // keeps the zygote's TID; the init only needs it for raise(3), which
    // it does not use (a panic aborts either way).
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(pid as i32)
}

/// In the new init: follow krgd's death as an init krgd started does, and
/// take the job's descriptors as 0, 1, 2, ... (closing the zygote's socket
/// and everything else).
fn become_init(fds: Vec<OwnedFd>) {
    // SAFETY: prctl and poll on a local pollfd.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            libc::_exit(127);
        }
        // krgd may have died before the line above: then its end of the
        // socket is closed, and this init must not run unowned.
        let mut pfd = libc::pollfd {
            fd: ZYGOTE_FD,
            events: 0,
            revents: 0,
        };
        if libc::poll(&mut pfd, 1, 0) > 0 && pfd.revents & libc::POLLHUP != 0 {
            libc::_exit(127);
        }
    }
    let raw: Vec<RawFd> = fds.into_iter().map(IntoRawFd::into_raw_fd).collect();
    if !place_fds(&raw) {
        // SAFETY: leaving without running the zygote's exit handlers.
        unsafe { libc::_exit(127) };
    }
}
