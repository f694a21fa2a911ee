//! Files in flight on the tree's unix sockets: sent with SCM_RIGHTS and
//! not received yet. Peeking a socket's queue ([`sockets`](super::sockets))
//! gave this process a duplicate of each; here each is described as if
//! this process were one more task of the tree, holding them:
//!
//! - a pipe end in flight counts as inside the tree, so a pipe whose ends
//!   are held by tasks or in flight (even both in flight) is made again;
//! - a file also held by a task is numbered as the same open file
//!   description (restart makes it once; its offset stays shared).
//!
//! Pipes, files reopened by path and sockets a task holds too travel;
//! anything else in flight (a socket only in flight, an epoll…) is
//! refused with the socket that carries it.

use std::os::fd::{AsRawFd, OwnedFd};

use super::fdkind::PipeRef;
use super::sockets::SockRef;
use crate::error::{ChkptError, Result};
use crate::image::{FdImage, FdKind, InFlight};
use crate::procfs;

/// One queued message's files, and the socket fd that carries them.
struct Message {
    /// The socket's holder (pid, fd) and inode.
    pid: i32,
    fd: i32,
    sock: u64,
    msg: u32,
    files: Vec<OwnedFd>,
}

/// The files in flight on the tree's sockets, held (duplicated) here
/// until the images are made.
pub struct Flight {
    messages: Vec<Message>,
}

/// The holder's fds, described: files and sockets (numbered later with
/// the tree's), and pipe ends with their status flags (classified with
/// the tree's pipes).
pub type Described = (Vec<FdImage>, Vec<(PipeRef, u32)>);

/// The pseudo-task that holds the files in flight: this process.
pub fn holder() -> i32 {
    std::process::id() as i32
}

/// Take the files in flight out of the sockets read (once per socket,
/// however many fds of the tree name it).
pub fn gather(socks: &mut [SockRef]) -> Flight {
    let mut messages: Vec<Message> = Vec::new();
    for s in socks.iter_mut() {
        let ino = s.sock.image.ino;
        let rights = std::mem::take(&mut s.sock.rights);
        if messages.iter().any(|m| m.sock == ino) {
            continue;
        }
        for (msg, files) in rights {
            messages.push(Message {
                pid: s.pid,
                fd: s.fd,
                sock: ino,
                msg,
                files,
            });
        }
    }
    Flight { messages }
}

impl Flight {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Describe the files as fds of the [`holder`]: files reopened by path,
    /// sockets a task holds too, pipe ends.
    pub fn describe(&self, socks: &[SockRef]) -> Result<Described> {
        let me = holder();
        let mut files = Vec::new();
        let mut pipes = Vec::new();
        for m in &self.messages {
            let refuse = |why: String| {
                ChkptError::unsupported(m.pid, format!("fd {} (socket:[{}])", m.fd, m.sock), why)
            };
            for f in &m.files {
                let fd = f.as_raw_fd();
                let target = procfs::readlink(format!("/proc/self/fd/{fd}"))?;
                let info = procfs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
                let (pos, flags) = procfs::parse_fdinfo(&info)?;
                if let Some(ino) = target
                    .strip_prefix("pipe:[")
                    .and_then(|r| r.strip_suffix(']'))
                    .and_then(|n| n.parse().ok())
                {
                    let write_end = flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
                    let r = PipeRef {
                        pid: me,
                        fd,
                        ino,
                        write_end,
                    };
                    pipes.push((r, flags));
                    continue;
                }
                let sock_ino: Option<u64> = target
                    .strip_prefix("socket:[")
                    .and_then(|r| r.strip_suffix(']'))
                    .and_then(|n| n.parse().ok());
                if let Some(held) =
                    sock_ino.and_then(|i| socks.iter().find(|s| s.sock.image.ino == i))
                {
                    let kind = FdKind::Socket {
                        file: 0,
                        sock: held.sock.image.clone(),
                    };
                    files.push(FdImage { fd, flags, kind });
                    continue;
                }
                if target.starts_with('/') && !target.ends_with(" (deleted)") {
                    if let Some(kind) = super::fdkind::classify_path(me, fd, &target, pos)
                        .map_err(|e| refuse(format!("a file in flight on it (SCM_RIGHTS): {e}")))?
                    {
                        files.push(FdImage { fd, flags, kind });
                        continue;
                    }
                }
                return Err(refuse(format!(
                    "{target} is in flight on it (SCM_RIGHTS): only pipes, files opened by path and sockets a process of the tree holds are saved in flight"
                )));
            }
        }
        Ok((files, pipes))
    }

    /// The image's list, from the holder's fds once classified and
    /// numbered. Checks that every pipe end in flight stayed a pipe of
    /// the tree (its other end not outside).
    pub fn finish(self, described: Vec<FdImage>) -> Result<Vec<InFlight>> {
        let mut out = Vec::new();
        for m in &self.messages {
            let mut files = Vec::new();
            for (n, f) in m.files.iter().enumerate() {
                let fd = f.as_raw_fd();
                let Some(d) = described.iter().find(|d| d.fd == fd) else {
                    return Err(ChkptError::Inconsistent(format!(
                        "a file in flight on socket:[{}] was not described",
                        m.sock
                    )));
                };
                if !matches!(
                    d.kind,
                    FdKind::Pipe { .. } | FdKind::Path { .. } | FdKind::Socket { .. }
                ) {
                    return Err(ChkptError::unsupported(
                        m.pid,
                        format!("fd {} (socket:[{}])", m.fd, m.sock),
                        "a pipe end whose other end is outside the tree is in flight on it (SCM_RIGHTS)",
                    ));
                }
                files.push(FdImage {
                    fd: n as i32,
                    flags: d.flags,
                    kind: d.kind.clone(),
                });
            }
            out.push(InFlight {
                sock: m.sock,
                msg: m.msg,
                files,
            });
        }
        Ok(out)
    }
}
