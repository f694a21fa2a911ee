//! The zygote: one `krg-init` per krgd, started once, that forks the init
//! of every job instead of krgd executing `krg-init` afresh for each.
//!
//! Why: on this kind of machine most of a job's start is the init's exec —
//! the ELF load, the dynamic linker, and glibc's and libgcc's CPU probing
//! (`cpuid`, which a virtual machine traps: a quarter of all CPU time when
//! 1000 jobs start at once). A fork of a small process that has done all
//! that already costs a fraction of it.
//!
//! How: krgd's spawner thread starts the zygote (as it starts an init, but
//! in krgd's own PID namespace) with one end of a `SOCK_SEQPACKET` pair as
//! its descriptor 0. The zygote moves it to [`ZYGOTE_FD`], says [`READY`],
//! then serves requests one at a time:
//!
//! * request: one byte (how many descriptors) with the job's descriptors
//!   attached (`SCM_RIGHTS`), at most [`MAX_FDS`](super::spawn::MAX_FDS);
//! * the zygote clones with `CLONE_NEWPID | CLONE_PARENT`: the child is PID
//!   1 of a new namespace and a child of krgd (the spawner thread), exactly
//!   as an init krgd started itself — krgd waits for it, its parent-death
//!   signal follows krgd;
//! * the child places the descriptors at 0, 1, 2, ... (closing everything
//!   else, the zygote's socket too) and goes on as a freshly started
//!   `krg-init` would: it reads its spec from `SPEC_FD`;
//! * reply: 8 bytes, the child's PID (krgd's namespace) and an errno, one
//!   of them 0. krgd opens a pidfd for the PID: the child is its own and
//!   unreaped, so the PID cannot have been reused.
//!
//! The zygote runs as root with every signal blocked and an empty
//! environment, as an init does, and holds nothing of any job. It ends
//! when krgd closes its end (or with krgd, by its parent-death signal).
//! krgd starts a new one if it dies, and executes `krg-init` per job as
//! before if no zygote can be started (an older `krg-init`, say).

pub mod client;
pub mod serve;

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use super::spawn::MAX_FDS;

/// The zygote's end of its socket, after it moved it there from 0 (above
/// every descriptor a job's init is given, so the child's clean-up closes it).
pub const ZYGOTE_FD: RawFd = 100;
/// What the zygote sends once it is ready to serve.
pub const READY: u8 = b'Z';

/// Send `data` with `fds` attached, in one message.
pub fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fds = &fds[..fds.len().min(MAX_FDS)];
    let iov = [IoSlice::new(data)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receive one message into `buf`, with at most [`MAX_FDS`] descriptors
/// (close-on-exec). Its length (0: the other end closed) and the
/// descriptors, which the caller owns.
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = loop {
        match recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(Errno::EINTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: descriptors the kernel just installed for us.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    Ok((msg.bytes, fds))
}

/// The zygote's answer to a request: the new init's PID, or an errno.
pub fn encode_reply(pid: i32, errno: i32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&pid.to_le_bytes());
    out[4..].copy_from_slice(&errno.to_le_bytes());
    out
}

/// Read back [`encode_reply`]: the PID, or the errno as an error.
pub fn decode_reply(b: &[u8]) -> io::Result<i32> {
    let (Some(pid), Some(errno)) = (b.get(..4), b.get(4..8)) else {
        return Err(io::Error::other("short answer from the zygote"));
    };
    let pid = i32::from_le_bytes([pid[0], pid[1], pid[2], pid[3]]);
    let errno = i32::from_le_bytes([errno[0], errno[1], errno[2], errno[3]]);
    match (pid, errno) {
        (p, 0) if p > 0 => Ok(p),
        (_, e) if e > 0 => Err(io::Error::from_raw_os_error(e)),
        _ => Err(io::Error::other("malformed answer from the zygote")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_and_garbage_is_an_error() {
        assert_eq!(decode_reply(&encode_reply(42, 0)).unwrap(), 42);
        let e = decode_reply(&encode_reply(0, libc::ENOMEM)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOMEM));
        assert!(decode_reply(&[1, 2, 3]).is_err());
        assert!(decode_reply(&encode_reply(-5, 0)).is_err());
        assert!(decode_reply(&encode_reply(0, 0)).is_err());
    }

    #[test]
    fn descriptors_cross_a_seqpacket_pair() {
        let mut sv = [0; 2];
        // SAFETY: sv has room for the two descriptors.
        let rc =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, sv.as_mut_ptr()) };
        assert_eq!(rc, 0);
        let file = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsRawFd;
        send_with_fds(sv[0], &[3], &[file.as_raw_fd(), file.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(sv[1], &mut buf).unwrap();
        assert_eq!((n, buf[0], fds.len()), (1, 3, 2));
        for fd in sv {
            // SAFETY: descriptors this test owns.
            unsafe { libc::close(fd) };
        }
    }
}
