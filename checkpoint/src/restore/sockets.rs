//! Making the tree's sockets again, in the root task before any fork.
//!
//! Each socket is created inside the root task (so the tree inherits it)
//! while the task acts as the job's user (its effective ids: a socketpair
//! records them as each end's peer credentials; a bound unix socket's file
//! is the user's); binding a unix path and connecting to one are injected
//! there too, so the kernel checks the user's rights on the path. The rest
//! — options, inet binding, listening, TCP_REPAIR, queued data — is done
//! by restart on a duplicate (`pidfd_getfd`) of the very socket. What an
//! image may ask for here is checked at load ([`check`]): ports below
//! 1024 and established connections only for root's images.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::error::{ChkptError, Result};
use crate::image::{FdImage, FdKind, InFlight, Shutdown, SocketImage, TaskImage, TcpRepair};
use crate::netlock::{self, Conn};
use crate::ptrace::{self, Injector};
use crate::uffd;

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;

/// What an image owned by `uid` may not ask restart (running as root)
/// for: a privileged port, or an established TCP connection (TCP_REPAIR
/// needs CAP_NET_ADMIN, which lets one claim any address and sequence).
pub fn check(uid: u32, t: &TaskImage) -> std::result::Result<(), String> {
    if uid == 0 {
        return Ok(());
    }
    for f in &t.fds {
        let FdKind::Socket { sock, .. } = &f.kind else {
            continue;
        };
        if sock.tcp.is_some() {
            return Err(format!(
                "fd {} is an established TCP connection (restoring it needs CAP_NET_ADMIN)",
                f.fd
            ));
        }
        let port = sock
            .local
            .get(2..4)
            .map_or(0, |p| u16::from_be_bytes([p[0], p[1]]));
        if sock.family != libc::AF_UNIX && port != 0 && port < 1024 {
            return Err(format!("fd {} binds the privileged port {port}", f.fd));
        }
    }
    Ok(())
}

fn sys(pid: i32, op: &'static str) -> impl Fn(io::Error) -> ChkptError {
    move |err| ChkptError::Sys {
        op: op.to_string(),
        pid,
        err,
    }
}

fn setopt(fd: RawFd, level: i32, opt: i32, v: &[u8]) -> io::Result<()> {
    // SAFETY: v is the option's bytes, its length passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            v.as_ptr().cast(),
            v.len() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn int(fd: RawFd, level: i32, opt: i32, v: i32) -> io::Result<()> {
    setopt(fd, level, opt, &v.to_ne_bytes())
}

/// The root task acting as `t`'s user (effective ids; root's come back
/// with [`as_root`]: the saved uid stays 0).
pub fn as_user(root: &Injector, t: &TaskImage) -> Result<()> {
    let m = u64::MAX;
    root.call(
        "setresgid",
        libc::SYS_setresgid,
        [m, t.gids[1] as u64, m, 0, 0, 0],
    )?;
    root.call(
        "setresuid",
        libc::SYS_setresuid,
        [m, t.uids[1] as u64, m, 0, 0, 0],
    )?;
    Ok(())
}

pub fn as_root(root: &Injector) -> Result<()> {
    let m = u64::MAX;
    root.call("setresuid", libc::SYS_setresuid, [m, 0, m, 0, 0, 0])?;
    root.call("setresgid", libc::SYS_setresgid, [m, 0, m, 0, 0, 0])?;
    Ok(())
}

/// Make socket `s` in the root; returns its fd there and, for one end of
/// a pair, the other end's fd (for the peer's inode).
pub fn create(root: &Injector, scratch: u64, s: &SocketImage) -> Result<(u64, Option<(u64, u64)>)> {
    if let Some(peer) = s.peer {
        root.call(
            "socketpair",
            libc::SYS_socketpair,
            [libc::AF_UNIX as u64, s.stype as u64, 0, scratch, 0, 0],
        )?;
        let b = ptrace::read_mem(root.tid, scratch, 8)?;
        let a = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64;
        let other = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as u64;
        return Ok((a, Some((peer, other))));
    }
    let fd = root.call(
        "socket",
        libc::SYS_socket,
        [s.family as u64, s.stype as u64, s.protocol as u64, 0, 0, 0],
    )?;
    if s.family == libc::AF_UNIX {
        unix_names(root, scratch, fd, s)?;
    }
    Ok((fd, None))
}

/// Bind (and connect) a unix socket by its path, inside the root task: the
/// kernel checks the user's rights. A stale socket file left at the path
/// by the process that had it is removed first.
fn unix_names(root: &Injector, scratch: u64, fd: u64, s: &SocketImage) -> Result<()> {
    if !s.local.is_empty() {
        if let Some(path) = crate::dump::unix_path(&s.local) {
            use std::os::unix::fs::FileTypeExt;
            let stale = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket());
            if stale {
                let mut p = path.clone().into_bytes();
                p.push(0);
                ptrace::write_mem(root.tid, scratch, &p)?;
                root.raw(
                    libc::SYS_unlinkat,
                    [libc::AT_FDCWD as u64, scratch, 0, 0, 0, 0],
                )?;
            }
        }
        ptrace::write_mem(root.tid, scratch, &s.local)?;
        root.call(
            "bind(unix)",
            libc::SYS_bind,
            [fd, scratch, s.local.len() as u64, 0, 0, 0],
        )?;
        if let Some(path) = crate::dump::unix_path(&s.local) {
            let mut p = path.into_bytes();
            p.push(0);
            ptrace::write_mem(root.tid, scratch, &p)?;
            root.raw(
                libc::SYS_fchmodat,
                [libc::AT_FDCWD as u64, scratch, s.mode as u64, 0, 0, 0],
            )?;
        }
    }
    if !s.remote.is_empty() {
        ptrace::write_mem(root.tid, scratch, &s.remote)?;
        root.call(
            "connect(unix)",
            libc::SYS_connect,
            [fd, scratch, s.remote.len() as u64, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// Everything done from restart on a duplicate: options, inet address,
/// listening, a TCP connection's state (`closing`: its FINs).
pub fn configure(
    root_pid: i32,
    fd: u64,
    s: &SocketImage,
    closing: Option<&Shutdown>,
) -> Result<()> {
    let dup = uffd::pidfd_open(root_pid)
        .and_then(|p| uffd::pidfd_getfd(&p, fd as i32))
        .map_err(sys(root_pid, "pidfd_getfd of a new socket"))?;
    let d = dup.as_raw_fd();
    let o = s.opts;
    let e = sys(root_pid, "setsockopt");
    let sol = libc::SOL_SOCKET;
    for (on, level, opt) in [
        (o.reuseaddr, sol, libc::SO_REUSEADDR),
        (o.reuseport, sol, libc::SO_REUSEPORT),
        (o.keepalive, sol, libc::SO_KEEPALIVE),
        (o.broadcast, sol, libc::SO_BROADCAST),
        (o.passcred, sol, libc::SO_PASSCRED),
        (o.nodelay, libc::IPPROTO_TCP, libc::TCP_NODELAY),
    ] {
        if on {
            int(d, level, opt, 1).map_err(&e)?;
        }
    }
    if s.family == libc::AF_INET6 {
        int(d, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, o.v6only as i32).map_err(&e)?;
    }
    if s.family == libc::AF_UNIX {
        if let Some(b) = s.listen {
            // SAFETY: listen on our duplicate of the new socket.
            if unsafe { libc::listen(d, b) } != 0 {
                return Err(sys(root_pid, "listen")(io::Error::last_os_error()));
            }
        }
        return Ok(());
    }
    if let Some(t) = &s.tcp {
        return repair(d, s, t, closing).map_err(sys(root_pid, "TCP_REPAIR (the connection)"));
    }
    if !s.local.is_empty() {
        // SAFETY: the recorded sockaddr bytes, their length.
        if unsafe { libc::bind(d, s.local.as_ptr().cast(), s.local.len() as libc::socklen_t) } != 0
        {
            let err = io::Error::last_os_error();
            return Err(ChkptError::Sys {
                op: format!("binding {}", crate::image::addr_text(&s.local)),
                pid: root_pid,
                err,
            });
        }
    }
    if let Some(b) = s.listen {
        // SAFETY: listen on our duplicate.
        if unsafe { libc::listen(d, b) } != 0 {
            return Err(sys(root_pid, "listen")(io::Error::last_os_error()));
        }
    } else if !s.remote.is_empty() {
        // a connected UDP socket
        // SAFETY: the recorded sockaddr bytes, their length.
        if unsafe {
            libc::connect(
                d,
                s.remote.as_ptr().cast(),
                s.remote.len() as libc::socklen_t,
            )
        } != 0
        {
            return Err(sys(root_pid, "connect")(io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// An established connection made again: sequence numbers, addresses,
/// options, window and both queues, in repair mode (no handshake, nothing
/// sent); then the network lock `checkpoint --kill` left on it is removed
/// and the socket leaves repair mode (its window probe gets the peer going:
/// an ACK it sent meanwhile was dropped, data it sent comes again).
///
/// A connection being closed is made established, then closed as far as
/// it was: the peer's FIN taken as read (`SHUT_RD`: reads end after the
/// queue; the sequence stops before that FIN, so the peer's ACKs stay
/// valid and a FIN it sends again is taken), and this side's FIN queued
/// as already sent (`SHUT_WR` with the send queue selected: it goes again
/// with the unacknowledged data when repair mode ends).
fn repair(d: RawFd, s: &SocketImage, t: &TcpRepair, closing: Option<&Shutdown>) -> io::Result<()> {
    let tcp = libc::IPPROTO_TCP;
    int(d, tcp, TCP_REPAIR, 1).map_err(at("repair mode"))?;
    int(d, tcp, TCP_REPAIR_QUEUE, 2).map_err(at("send queue"))?;
    setopt(d, tcp, TCP_QUEUE_SEQ, &t.send_seq.to_ne_bytes()).map_err(at("send sequence"))?;
    int(d, tcp, TCP_REPAIR_QUEUE, 1).map_err(at("receive queue"))?;
    setopt(d, tcp, TCP_QUEUE_SEQ, &t.recv_seq.to_ne_bytes()).map_err(at("receive sequence"))?;
    // SAFETY: the recorded sockaddr bytes, their length.
    if unsafe { libc::bind(d, s.local.as_ptr().cast(), s.local.len() as libc::socklen_t) } != 0 {
        return Err(at("bind")(io::Error::last_os_error()));
    }
    // SAFETY: as above; in repair mode connect sends nothing.
    if unsafe {
        libc::connect(
            d,
            s.remote.as_ptr().cast(),
            s.remote.len() as libc::socklen_t,
        )
    } != 0
    {
        return Err(at("connect")(io::Error::last_os_error()));
    }
    let mut opts: Vec<u8> = Vec::new();
    let mut opt = |code: u32, val: u32| {
        opts.extend_from_slice(&code.to_ne_bytes());
        opts.extend_from_slice(&val.to_ne_bytes());
    };
    opt(2, t.mss); // TCPOPT_MSS
    if t.options & 4 != 0 {
        opt(3, t.snd_wscale as u32 | (t.rcv_wscale as u32) << 16); // TCPOPT_WINDOW
    }
    if t.options & 2 != 0 {
        opt(4, 0); // TCPOPT_SACK_PERM
    }
    if t.options & 1 != 0 {
        opt(8, 0); // TCPOPT_TIMESTAMP
    }
    setopt(d, tcp, TCP_REPAIR_OPTIONS, &opts).map_err(at("options"))?;
    if t.options & 1 != 0 {
        setopt(d, tcp, TCP_TIMESTAMP, &t.timestamp.to_ne_bytes()).map_err(at("timestamp"))?;
    }
    for (queue, data) in [(2, &t.send_queue), (1, &t.recv_queue)] {
        int(d, tcp, TCP_REPAIR_QUEUE, queue).map_err(at("queue"))?;
        make_room(d, queue == 2, data.len()).map_err(at("buffer size"))?;
        let mut done = 0;
        while done < data.len() {
            // SAFETY: sending from the recorded queue bytes.
            let n = unsafe { libc::send(d, data[done..].as_ptr().cast(), data.len() - done, 0) };
            if n <= 0 {
                return Err(at("queued data")(io::Error::last_os_error()));
            }
            done += n as usize;
        }
    }
    // after the queues: the kernel checks the window against rcv_nxt,
    // which the received data moves
    let w: Vec<u8> = t.window.iter().flat_map(|v| v.to_ne_bytes()).collect();
    setopt(d, tcp, TCP_REPAIR_WINDOW, &w).map_err(at("window"))?;
    if let Some(c) = closing {
        if c.receive {
            shutdown(d, libc::SHUT_RD).map_err(at("the peer's FIN (shutdown SHUT_RD)"))?;
        }
        if c.send {
            int(d, tcp, TCP_REPAIR_QUEUE, 2).map_err(at("send queue"))?;
            shutdown(d, libc::SHUT_WR).map_err(at("this side's FIN (shutdown SHUT_WR)"))?;
        }
    }
    if let Some(c) = Conn::from_sockaddrs(&s.local, &s.remote) {
        netlock::unlock(d, &c).map_err(at("network lock"))?;
    }
    int(d, tcp, TCP_REPAIR, 0).map_err(at("leaving repair mode"))
}

/// A new socket's buffer holds the default (16 KiB to send, 128 KiB to
/// receive) while the saved queue grew with the original's autotuned one:
/// make it large enough for `len` bytes (restart is root: the FORCE
/// options pass `net.core.wmem_max`). Autotuning stays on when the queue
/// fits already.
fn make_room(d: RawFd, send: bool, len: usize) -> io::Result<()> {
    let (get, force) = if send {
        (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE)
    } else {
        (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE)
    };
    let mut now: i32 = 0;
    let mut l = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: an int option into an int.
    unsafe {
        libc::getsockopt(
            d,
            libc::SOL_SOCKET,
            get,
            (&mut now as *mut i32).cast(),
            &mut l,
        )
    };
    // the kernel charges each byte with its buffer overhead: twice the data
    let need = len.saturating_mul(2);
    if (now.max(0) as usize) >= need {
        return Ok(());
    }
    // the kernel doubles what it is given
    int(
        d,
        libc::SOL_SOCKET,
        force,
        i32::try_from(len).unwrap_or(i32::MAX),
    )
}

/// Name the step of [`repair`] an error comes from.
fn at(step: &'static str) -> impl Fn(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{step}: {e}"))
}

fn shutdown(d: RawFd, how: i32) -> io::Result<()> {
    // SAFETY: shutdown on our duplicate of the socket.
    if unsafe { libc::shutdown(d, how) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What the node file says of the tree's sockets beyond each one: the
/// files in flight on them and where the root holds what those name (pipe
/// ends, then, once made, open file descriptions); the TCP connections
/// being closed.
pub struct TreeSockets<'a> {
    pub in_flight: &'a [InFlight],
    pub shutdowns: &'a [Shutdown],
    pub pipe_fds: &'a HashMap<u64, (i32, i32)>,
    pub file_fds: Option<&'a HashMap<u32, i32>>,
}

impl<'a> TreeSockets<'a> {
    pub fn with_files(&self, file_fds: &'a HashMap<u32, i32>) -> TreeSockets<'a> {
        TreeSockets {
            in_flight: self.in_flight,
            shutdowns: self.shutdowns,
            pipe_fds: self.pipe_fds,
            file_fds: Some(file_fds),
        }
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
        let sent = socks.iter().any(|s| {
            s.ino == m.sock
                && s.peer.is_some_and(|p| fd_of.contains_key(&p))
                && (m.msg as usize) < s.queued.len()
        });
        if !sent {
            return Err(ChkptError::Inconsistent(format!(
                "files in flight on socket:[{}] (message {}): no such queued message with a sender in the image",
                m.sock, m.msg
            )));
        }
    }
    let pidfd = uffd::pidfd_open(root_pid).map_err(sys(root_pid, "pidfd_open of the root"))?;
    for s in socks.iter().filter(|s| !s.queued.is_empty()) {
        let Some(&pfd) = s.peer.and_then(|p| fd_of.get(&p)) else {
            continue;
        };
        let dup: OwnedFd =
            uffd::pidfd_getfd(&pidfd, pfd).map_err(sys(root_pid, "pidfd_getfd of a socket"))?;
        for (i, m) in s.queued.iter().enumerate() {
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
            send_message(dup.as_raw_fd(), m, &files).map_err(|err| ChkptError::Sys {
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

/// Shut the tree's unix sockets down again as they were, once their
/// queues are back (a peer that sends no more could not put them back).
/// Every socket the image names as shut down must be one of the tree's.
pub fn shut_unix(
    root_pid: i32,
    socks: &[&SocketImage],
    fd_of: &HashMap<u64, i32>,
    shutdowns: &[Shutdown],
) -> Result<()> {
    let pidfd = uffd::pidfd_open(root_pid).map_err(sys(root_pid, "pidfd_open of the root"))?;
    for sh in shutdowns {
        let Some(s) = socks.iter().find(|s| s.ino == sh.sock) else {
            return Err(ChkptError::Inconsistent(format!(
                "socket:[{}] is shut down in the image but is not one of its sockets",
                sh.sock
            )));
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

/// Send one message on `via`, with `files` as its SCM_RIGHTS.
fn send_message(via: RawFd, data: &[u8], files: &[OwnedFd]) -> io::Result<()> {
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
