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

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use crate::error::{ChkptError, Result};
use crate::image::{FdKind, SocketExtras, SocketImage, TaskImage};
use crate::ptrace::{self, Injector};
use crate::uffd;

use super::sockcall::int;

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

pub(super) fn sys(pid: i32, op: &'static str) -> impl Fn(io::Error) -> ChkptError {
    move |err| ChkptError::Sys {
        op: op.to_string(),
        pid,
        err,
    }
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
/// a pair, the other end's fd (for the peer's inode). `extras`: its bound
/// path was removed since the bind; it waits to be accepted (connected
/// later, [`connect_waiting`]).
pub fn create(
    root: &Injector,
    scratch: u64,
    s: &SocketImage,
    extras: Option<&SocketExtras>,
) -> Result<(u64, Option<(u64, u64)>)> {
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
        let unlinked = extras.is_some_and(|e| e.unlinked);
        let waits = extras.is_some_and(|e| e.accept_order.is_some());
        unix_names(root, scratch, fd, s, unlinked, waits)?;
    }
    Ok((fd, None))
}

/// Bind (and connect) a unix socket by its path, inside the root task: the
/// kernel checks the user's rights. A stale socket file left at the path
/// by the process that had it is removed first. A socket whose path was
/// removed after its bind (`unlinked`) is bound there again, then the path
/// removed again: it keeps its name and leaves no file (whatever stands
/// at the path now is not its own, and is left alone: the bind fails).
fn unix_names(
    root: &Injector,
    scratch: u64,
    fd: u64,
    s: &SocketImage,
    unlinked: bool,
    waits: bool,
) -> Result<()> {
    if !s.local.is_empty() {
        if let Some(path) = crate::dump::unix_path(&s.local).filter(|_| !unlinked) {
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
            if unlinked {
                root.call(
                    "unlink (a removed socket path)",
                    libc::SYS_unlinkat,
                    [libc::AT_FDCWD as u64, scratch, 0, 0, 0, 0],
                )?;
            } else {
                root.raw(
                    libc::SYS_fchmodat,
                    [libc::AT_FDCWD as u64, scratch, s.mode as u64, 0, 0, 0],
                )?;
            }
        }
    }
    if let Some(backlog) = s.listen {
        // now: connections that waited to be accepted come in before
        // `configure`
        root.call(
            "listen(unix)",
            libc::SYS_listen,
            [fd, backlog as u64, 0, 0, 0, 0],
        )?;
    }
    if !s.remote.is_empty() && !waits {
        connect_unix(root, scratch, fd, s)?;
    }
    Ok(())
}

fn connect_unix(root: &Injector, scratch: u64, fd: u64, s: &SocketImage) -> Result<()> {
    ptrace::write_mem(root.tid, scratch, &s.remote)?;
    root.call(
        "connect(unix)",
        libc::SYS_connect,
        [fd, scratch, s.remote.len() as u64, 0, 0, 0],
    )?;
    Ok(())
}

/// Connect again, in their order, the unix sockets whose connections
/// waited in a listening socket's accept queue: (socket, place, its fd in
/// the root). The listeners listen already.
pub fn connect_waiting(
    root: &Injector,
    scratch: u64,
    waiting: &[(&SocketImage, u32, i32)],
) -> Result<()> {
    let mut order: Vec<&(&SocketImage, u32, i32)> = waiting.iter().collect();
    order.sort_by_key(|w| w.1);
    for (s, _, fd) in order {
        connect_unix(root, scratch, *fd as u64, s)?;
    }
    Ok(())
}

/// Everything done from restart on a duplicate: options, inet address,
/// listening, a TCP connection's state (`extras`: its FINs, a connect
/// under way).
pub fn configure(
    root_pid: i32,
    fd: u64,
    s: &SocketImage,
    extras: Option<&SocketExtras>,
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
        let shutdown = extras.map(|e| e.shutdown).unwrap_or_default();
        return super::tcp::repair(d, s, t, shutdown)
            .map_err(sys(root_pid, "TCP_REPAIR (the connection)"));
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
    } else if !s.remote.is_empty() && extras.is_some_and(|e| e.connecting) {
        start_connect(d, &s.remote).map_err(sys(root_pid, "connect (under way)"))?;
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

/// Start a TCP connect again without waiting for it (O_NONBLOCK for the
/// call, whatever the socket's own flags): its SYN goes, the socket is
/// SYN_SENT as it was, and the process's own connect or poll goes on.
fn start_connect(d: RawFd, remote: &[u8]) -> io::Result<()> {
    // SAFETY: fcntl on our duplicate.
    let flags = unsafe { libc::fcntl(d, libc::F_GETFL) };
    // SAFETY: as above.
    unsafe { libc::fcntl(d, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    // SAFETY: the recorded sockaddr bytes, their length.
    let r = unsafe { libc::connect(d, remote.as_ptr().cast(), remote.len() as libc::socklen_t) };
    let err = io::Error::last_os_error();
    // SAFETY: as above.
    unsafe { libc::fcntl(d, libc::F_SETFL, flags) };
    if r != 0 && err.raw_os_error() != Some(libc::EINPROGRESS) {
        return Err(err);
    }
    Ok(())
}
