//! Plain calls on krgd's duplicate of a socket being restored (options,
//! shutdown), shared by the socket, TCP-repair and queue code.

use std::io;
use std::os::fd::RawFd;

pub(super) use crate::sockopts::set as setopt;

/// Set an integer socket option.
pub(super) fn int(fd: RawFd, level: i32, opt: i32, v: i32) -> io::Result<()> {
    setopt(fd, level, opt, &v.to_ne_bytes())
}

/// shutdown(2) on the duplicate.
pub(super) fn shutdown(d: RawFd, how: i32) -> io::Result<()> {
    // SAFETY: shutdown on our duplicate of the socket.
    if unsafe { libc::shutdown(d, how) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
