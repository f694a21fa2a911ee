//! Descriptor helpers of the process service: close-on-exec pipes,
//! /dev/null, and handing an owned descriptor to tokio's reactor.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// A pipe, both ends close-on-exec: (read end, write end).
pub fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two new descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Give the pipe of `fd` room for `bytes` (rounded up by the kernel to a
/// power of two of pages). Best effort: a pipe left at the default 64 KiB
/// works, with more wake-ups of its reader and writer.
pub fn widen_pipe(fd: &impl std::os::fd::AsRawFd, bytes: usize) {
    let size = bytes.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: F_SETPIPE_SZ takes an int and changes only the pipe's capacity.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
}

/// /dev/null, open for reading and writing.
pub fn dev_null() -> io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}

/// Watch `fd` for readiness with tokio.
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns `fd`, so the descriptor stays open (and is
    // the same file) for as long as it is registered.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// TCP keepalive on a session connection, so that a peer that vanished
/// without a word (a partition, a powered-off node) breaks the connection
/// within about `idle + count × interval` (whole seconds, at least 1)
/// even when no data flows.
pub fn keepalive(
    sock: &impl std::os::fd::AsRawFd,
    idle: std::time::Duration,
    interval: std::time::Duration,
    count: u32,
) {
    let secs = |d: std::time::Duration| d.as_secs().clamp(1, 3600) as libc::c_int;
    let set = |level: libc::c_int, opt: libc::c_int, value: libc::c_int| {
        // SAFETY: setsockopt reads one c_int from the pointer we pass.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                level,
                opt,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(idle));
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs(interval));
    set(
        libc::IPPROTO_TCP,
        libc::TCP_KEEPCNT,
        count.clamp(1, 100) as libc::c_int,
    );
    // Unacknowledged data (a job's output towards a vanished peer) gives up as soon.
    let user_timeout = (idle + interval * count).as_millis().clamp(1000, 3_600_000) as libc::c_int;
    set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, user_timeout);
}

/// What `fd` (a non-blocking pipe) holds now, without waiting: read(2)
/// on it directly, since tokio's own `try_read` answers WouldBlock until
/// its poller saw the pipe readable, which a flush must not wait for.
pub fn read_now(fd: &impl std::os::fd::AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: read(2) of at most `buf.len()` bytes into `buf`, on a
    // descriptor the caller keeps open.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The inode of the pipe `fd` is an end of.
pub fn pipe_inode(fd: &impl std::os::fd::AsFd) -> Option<u64> {
    nix::sys::stat::fstat(fd.as_fd()).ok().map(|st| st.st_ino)
}
