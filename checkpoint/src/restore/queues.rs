//! What waits on the tree's unix sockets, put back once every socket and
//! file of the tree exists: queued messages (sent again by the peer) with
//! the files in flight they carry, then the shutdowns.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::error::{ChkptError, Result};
use crate::image::{FdImage, FdKind, InFlight, SocketExtras, SocketImage};
use crate::uffd;

use super::sockcall::shutdown;
use super::sockets::sys;

/// What the node file says of the tree's sockets beyond each one: the
/// files in flight on them and where the root holds what those name (pipe
/// ends, then, once made, open file descriptions); each socket's extras
/// (shutdown, options, a removed name).
pub struct TreeSockets<'a> {
    pub in_flight: &'a [InFlight],
    pub extras: &'a [SocketExtras],
    pub pipe_fds: &'a HashMap<u64, (i32, i32)>,
    pub file_fds: Option<&'a HashMap<u32, i32>>,
}

impl<'a> TreeSockets<'a> {
    pub fn with_files(&self, file_fds: &'a HashMap<u32, i32>) -> TreeSockets<'a> {
        TreeSockets {
            in_flight: self.in_flight,
            extras: self.extras,
            pipe_fds: self.pipe_fds,
            file_fds: Some(file_fds),
        }
    }

    /// What socket `ino` has beyond its image.
    pub fn extras_of(&self, ino: u64) -> Option<&'a SocketExtras> {
        self.extras.iter().find(|e| e.sock == ino)
    }

    /// The root's fds of the files message `msg` of socket `sock` carries.
    fn root_fds(&self, sock: u64, msg: usize) -> Result<Vec<(i32, &FdImage)>> {
        let Some(m) = self
            .in_flight
            .iter()
            .find(|m| m.sock == sock && m.msg as usize == msg)
        else {
            return Ok(Vec::new());
        };
        let missing = |what: String| {
            ChkptError::Inconsistent(format!(
                "{what} in flight on socket:[{sock}] is not in the image"
            ))
        };
        m.files
            .iter()
            .map(|f| {
                let fd = match &f.kind {
                    FdKind::Pipe { ino, write_end } => {
                        let &(r, w) = self
                            .pipe_fds
                            .get(ino)
                            .ok_or_else(|| missing(format!("pipe {ino}")))?;
                        if *write_end {
                            w
                        } else {
                            r
                        }
                    }
                    FdKind::Path { file, .. } | FdKind::Socket { file, .. } => *self
                        .file_fds
                        .and_then(|o| o.get(file))
                        .ok_or_else(|| missing(format!("open file #{file}")))?,
                    other => {
                        return Err(ChkptError::Inconsistent(format!(
                            "{other:?} in flight on socket:[{sock}]: only pipes, files and sockets travel"
                        )))
                    }
                };
                Ok((fd, f))
            })
            .collect()
    }
}

/// Put back what waited on each unix socket of the tree: its peer (whose
/// fd in the root `fd_of` gives) sends it again, each message with the
/// files it carried (SCM_RIGHTS, from the root's fds).
pub fn fill_queues(
    root_pid: i32,
    socks: &[&SocketImage],
    fd_of: &HashMap<u64, i32>,
    flight: &TreeSockets<'_>,
) -> Result<()> {
    for m in flight.in_flight {
        let sent = socks
            .iter()
            .any(|s| s.ino == m.sock && (m.msg as usize) < s.queued.len());
        if !sent {
            return Err(ChkptError::Inconsistent(format!(
                "files in flight on socket:[{}] (message {}): no such queued message with a sender in the image",
                m.sock, m.msg
            )));
        }
    }
    let pidfd = uffd::pidfd_open(root_pid).map_err(sys(root_pid, "pidfd_open of the root"))?;
    for s in socks.iter().filter(|s| !s.queued.is_empty()) {
        let senders = Senders::of(s, socks, fd_of, flight, &pidfd, root_pid)?;
        for (i, m) in s.queued.iter().enumerate() {
            let (via, to) = senders.for_message(i);
            let mut files = Vec::new();
            for (fd, f) in flight.root_fds(s.ino, i)? {
                let mine = uffd::pidfd_getfd(&pidfd, fd)
                    .map_err(sys(root_pid, "pidfd_getfd of a file in flight"))?;
                if let FdKind::Pipe { .. } = f.kind {
                    // status flags belong to the pipe end's open file description
                    // SAFETY: F_SETFL on our duplicate.
                    unsafe {
                        libc::fcntl(
                            mine.as_raw_fd(),
                            libc::F_SETFL,
                            (f.flags & SETFL_MASK) as i32,
                        )
                    };
                }
                files.push(mine);
            }
            send_message(via, m, &files, to).map_err(|err| ChkptError::Sys {
                op: format!(
                    "putting back {} queued byte(s) and {} file(s) on a socket",
                    m.len(),
                    files.len()
                ),
                pid: root_pid,
                err,
            })?;
        }
    }
    Ok(())
}

/// Who sends again what waited on a socket: its peer, or (a datagram
/// socket with none) each message's sender — the tree's socket bound at
/// its address, or a new unnamed socket of restart's — to its address.
enum Senders<'a> {
    Peer(OwnedFd),
    Each {
        to: &'a [u8],
        by: Vec<OwnedFd>,
        unnamed: OwnedFd,
        which: Vec<Option<usize>>,
    },
}

impl<'a> Senders<'a> {
    fn of(
        s: &'a SocketImage,
        socks: &[&SocketImage],
        fd_of: &HashMap<u64, i32>,
        flight: &TreeSockets<'_>,
        pidfd: &OwnedFd,
        root_pid: i32,
    ) -> Result<Senders<'a>> {
        let dup = |fd: i32| {
            uffd::pidfd_getfd(pidfd, fd).map_err(sys(root_pid, "pidfd_getfd of a socket"))
        };
        if let Some(&pfd) = s.peer.and_then(|p| fd_of.get(&p)) {
            return Ok(Senders::Peer(dup(pfd)?));
        }
        if s.local.is_empty() || s.stype != libc::SOCK_DGRAM {
            return Err(ChkptError::Inconsistent(format!(
                "socket:[{}] has messages queued but neither a peer nor a name to send them to",
                s.ino
            )));
        }
        let from = flight.extras_of(s.ino).map_or(&[][..], |e| &e.senders[..]);
        let mut by = Vec::new();
        let mut which = Vec::new();
        for i in 0..s.queued.len() {
            let addr = from.get(i).filter(|a| !a.is_empty());
            let Some(addr) = addr else {
                which.push(None);
                continue;
            };
            let sender = socks.iter().find(|o| &o.local == addr);
            let Some(&fd) = sender.and_then(|o| fd_of.get(&o.ino)) else {
                return Err(ChkptError::Inconsistent(format!(
                    "a message queued on socket:[{}] came from {}, not a socket of the image",
                    s.ino,
                    crate::image::addr_text(addr)
                )));
            };
            which.push(Some(by.len()));
            by.push(dup(fd)?);
        }
        // SAFETY: a new socket of restart's own, owned below.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(sys(root_pid, "socket (an unnamed sender)")(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: just made, ours alone.
        let unnamed = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Senders::Each {
            to: &s.local,
            by,
            unnamed,
            which,
        })
    }

    /// The socket that sends message `i`, and where to (none: its peer).
    fn for_message(&self, i: usize) -> (RawFd, Option<&[u8]>) {
        match self {
            Senders::Peer(p) => (p.as_raw_fd(), None),
            Senders::Each {
                to,
                by,
                unnamed,
                which,
            } => {
                let via = which
                    .get(i)
                    .copied()
                    .flatten()
                    .and_then(|k| by.get(k))
                    .unwrap_or(unnamed);
                (via.as_raw_fd(), Some(to))
            }
        }
    }
}

/// Shut the tree's unix sockets down again as they were, once their
/// queues are back (a peer that sends no more could not put them back).
pub fn shut_unix(
    root_pid: i32,
    socks: &[&SocketImage],
    fd_of: &HashMap<u64, i32>,
    extras: &[SocketExtras],
) -> Result<()> {
    let pidfd = uffd::pidfd_open(root_pid).map_err(sys(root_pid, "pidfd_open of the root"))?;
    for e in extras.iter().filter(|e| e.shutdown.any()) {
        let sh = e.shutdown;
        let Some(s) = socks.iter().find(|s| s.ino == e.sock) else {
            continue; // checked when the sockets were made
        };
        if s.family != libc::AF_UNIX {
            continue; // TCP: made so in repair mode
        }
        let Some(&fd) = fd_of.get(&s.ino) else {
            continue;
        };
        let how = match (sh.send, sh.receive) {
            (true, true) => libc::SHUT_RDWR,
            (true, false) => libc::SHUT_WR,
            (false, true) => libc::SHUT_RD,
            (false, false) => continue,
        };
        let dup =
            uffd::pidfd_getfd(&pidfd, fd).map_err(sys(root_pid, "pidfd_getfd of a socket"))?;
        shutdown(dup.as_raw_fd(), how).map_err(sys(root_pid, "shutdown of a unix socket"))?;
    }
    Ok(())
}

/// Status flags F_SETFL can change.
const SETFL_MASK: u32 =
    (libc::O_APPEND | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME) as u32;

/// Send one message on `via` (to address `to`, or its peer), with `files`
/// as its SCM_RIGHTS.
fn send_message(via: RawFd, data: &[u8], files: &[OwnedFd], to: Option<&[u8]>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((files.len() * 4) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; every pointer set below covers its length.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(to) = to {
        msg.msg_name = to.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = to.len() as libc::socklen_t;
    }
    if !files.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer holds one header with room for the
        // fds (CMSG_SPACE of them); the macros stay inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((files.len() * 4) as u32) as usize;
            let p = libc::CMSG_DATA(c) as *mut i32;
            for (k, f) in files.iter().enumerate() {
                p.add(k).write_unaligned(f.as_raw_fd());
            }
        }
    }
    // SAFETY: msg describes our buffers; MSG_DONTWAIT: a full queue is an error, not a hang.
    let n = unsafe { libc::sendmsg(via, &msg, libc::MSG_DONTWAIT) };
    if n != data.len() as isize {
        return Err(if n < 0 {
            io::Error::last_os_error()
        } else {
            io::Error::other(format!("sent {n} of {} byte(s)", data.len()))
        });
    }
    Ok(())
}
