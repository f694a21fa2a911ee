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
