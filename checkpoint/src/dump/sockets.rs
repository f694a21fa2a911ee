//! Sockets, read through a duplicate taken with `pidfd_getfd` (the same
//! socket: its options, addresses, queues): unix sockets (pairs and
//! connections inside the tree, bound and listening ones), TCP (listening,
//! and established connections taken with TCP_REPAIR) and UDP. Data
//! queued on a socket is copied with MSG_PEEK, never taken, with the
//! files a datagram carries (SCM_RIGHTS: see `inflight`). A connection that
//! `--kill` closes is first locked ([`netlock`]): the peer's segments are
//! dropped until restart has made it again.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::error::{ChkptError, Result};
use crate::image::{FdImage, FdKind, Shutdown, SockOpts, SocketExtras, SocketImage, TcpRepair};
use crate::netlock::{self, Conn};
use crate::{diag, uffd};

use super::unixq::setopt;

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;
const TCP_FIN_WAIT1: u8 = 4;
const TCP_FIN_WAIT2: u8 = 5;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_LISTEN: u8 = 10;
const TCP_CLOSING: u8 = 11;

/// Which FINs a connection in TCP state `st` has exchanged (sent,
/// received); `None` for a state that is not a connection being closed.
fn fins(st: u8) -> Option<(bool, bool)> {
    match st {
        TCP_FIN_WAIT1 | TCP_FIN_WAIT2 => Some((true, false)),
        TCP_CLOSE_WAIT => Some((false, true)),
        TCP_CLOSING | TCP_LAST_ACK => Some((true, true)),
        _ => None,
    }
}

/// A socket of a task, and our duplicate of it.
pub struct Sock {
    pub image: SocketImage,
    /// Our duplicate of the socket (in repair mode for an established TCP
    /// connection, until dropped).
    pub dup: Repairing,
    /// The unix socket's state (1 connected, 7 not, 10 listening).
    pub unix_state: u8,
    /// Files in flight on it (SCM_RIGHTS): per queued message (its index),
    /// our duplicates of them.
    pub rights: Vec<(u32, Vec<OwnedFd>)>,
    /// What the image keeps of it beyond `image` (shutdown, options,
    /// filter, a removed name, a connect under way, datagram senders; its
    /// place in an accept queue is set by `accept`).
    pub extras: SocketExtras,
    /// A listening unix socket: the connections waiting to be accepted
    /// (their clients' inodes, first to be accepted first).
    pub waiting: Vec<u64>,
    /// A connected unix stream socket: bytes it sent that its peer has not
    /// read.
    pub unsent: u32,
}

fn getopt<T: Copy + Default>(fd: RawFd, level: i32, opt: i32) -> Option<T> {
    let mut v = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: v is a valid buffer of `len` bytes for the call.
    let r = unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut T).cast(), &mut len) };
    (r == 0).then_some(v)
}

/// getsockname / getpeername as bytes (empty when none).
fn name(fd: RawFd, peer: bool) -> Vec<u8> {
    // SAFETY: sockaddr_storage is plain data.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut ss as *mut libc::sockaddr_storage).cast();
    // SAFETY: ss holds `len` bytes.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if r != 0 {
        return Vec::new();
    }
    // SAFETY: the kernel wrote `len` bytes (at most the storage).
    let b = unsafe {
        std::slice::from_raw_parts(
            (&ss as *const libc::sockaddr_storage).cast::<u8>(),
            (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>()),
        )
    };
    // an unbound unix socket has just its family
    if b.len() <= 2 {
        return Vec::new();
    }
    b.to_vec()
}

/// How established TCP connections are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Only check that they could be taken (the tree runs).
    Check,
    /// Taken with TCP_REPAIR (the tree frozen); the job goes on after.
    Repair,
    /// Taken with TCP_REPAIR after locking them: the job ends with the
    /// checkpoint (`--kill`), and its sockets with it.
    RepairLocked,
}

/// Read a socket of `pid` (its fd `fd`), established TCP connections as
/// `take` says.
pub fn read(pid: i32, fd: i32, ino: u64, caller: u32, take: Take) -> Result<Sock> {
    let refuse =
        |why: String| ChkptError::unsupported(pid, format!("fd {fd} (socket:[{ino}])"), why);
    let sys = |op: &str| {
        let op = op.to_string();
        move |err| ChkptError::Sys { op, pid, err }
    };
    let mut dup = Repairing {
        fd: uffd::pidfd_open(pid)
            .and_then(|p| uffd::pidfd_getfd(&p, fd))
            .map_err(sys("pidfd_getfd of a socket"))?,
        repair: false,
        keep: false,
        lock: None,
    };
    let s = dup.fd.as_raw_fd();
    let family: i32 = getopt(s, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(-1);
    let stype: i32 = getopt(s, libc::SOL_SOCKET, libc::SO_TYPE).unwrap_or(-1);
    let protocol: i32 = getopt(s, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0);
    let flag = |level, opt| getopt::<i32>(s, level, opt).unwrap_or(0) != 0;
    let opts = SockOpts {
        reuseaddr: flag(libc::SOL_SOCKET, libc::SO_REUSEADDR),
        reuseport: flag(libc::SOL_SOCKET, libc::SO_REUSEPORT),
        keepalive: flag(libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        broadcast: flag(libc::SOL_SOCKET, libc::SO_BROADCAST),
        nodelay: protocol == libc::IPPROTO_TCP && flag(libc::IPPROTO_TCP, libc::TCP_NODELAY),
        v6only: family == libc::AF_INET6 && flag(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
        passcred: family == libc::AF_UNIX && flag(libc::SOL_SOCKET, libc::SO_PASSCRED),
    };
    let mut image = SocketImage {
        ino,
        family,
        stype,
        protocol,
        local: name(s, false),
        remote: name(s, true),
        listen: None,
        peer: None,
        queued: Vec::new(),
        mode: 0,
        opts,
        tcp: None,
    };
    let mut unix_state = 0;
    let mut rights = Vec::new();
    let mut closing = None;
    let mut unlinked = false;
    let mut waiting = Vec::new();
    let mut unsent = 0;
    let mut senders = Vec::new();
    let mut connecting = false;
    match (family, stype) {
        (libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET) => {
            let d = diag::unix(ino).map_err(sys("sock_diag of a unix socket"))?;
            unix_state = d.state;
            image.peer = d.peer.filter(|&p| p != 0);
            if d.state == TCP_LISTEN {
                // connections waiting: kept if their clients are in the
                // tree (super::accept)
                waiting = d.icons.clone();
                if waiting.len() != d.rqlen.0 as usize {
                    return Err(refuse(format!(
                        "{} connection(s) wait to be accepted on it",
                        d.rqlen.0
                    )));
                }
                image.listen = Some(d.rqlen.1 as i32);
            } else if stype != libc::SOCK_DGRAM {
                unsent = outq(s);
            }
            if let Some(path) = unix_path(&image.local) {
                use std::os::unix::fs::{MetadataExt, PermissionsExt};
                let file = std::fs::symlink_metadata(&path).ok();
                image.mode = file
                    .as_ref()
                    .map_or(0o777, |m| m.permissions().mode() & 0o7777);
                // the socket file it made is gone, or the path names another
                unlinked =
                    d.vfs_ino.is_some() && file.is_none_or(|m| Some(m.ino() as u32) != d.vfs_ino);
            }
            if d.shutdown != 0 {
                closing = Some((d.shutdown & 2 != 0, d.shutdown & 1 != 0));
            }
            let q = super::unixq::peek(s, stype, d.rqlen.0).map_err(&refuse)?;
            image.queued = q.messages;
            rights = q.rights;
            senders = q.senders;
        }
        (libc::AF_INET | libc::AF_INET6, libc::SOCK_STREAM) if protocol == libc::IPPROTO_TCP => {
            let info: [u8; 104] = tcp_info(s);
            match info[0] {
                TCP_LISTEN => {
                    let waiting = u32::from_le_bytes([info[24], info[25], info[26], info[27]]);
                    if waiting > 0 {
                        return Err(refuse(format!("{waiting} connection(s) wait to be accepted on it")));
                    }
                    image.listen = Some(u32::from_le_bytes([info[28], info[29], info[30], info[31]]) as i32);
                }
                st @ (TCP_ESTABLISHED | TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSE_WAIT | TCP_CLOSING | TCP_LAST_ACK) => {
                    if caller != 0 {
                        return Err(refuse(
                            "an established TCP connection is taken with TCP_REPAIR, which needs root".into(),
                        ));
                    }
                    closing = fins(st);
                    if take == Take::RepairLocked {
                        // before anything is read: a segment that got in
                        // after the queues were read would be lost
                        let conn = Conn::from_sockaddrs(&image.local, &image.remote)
                            .ok_or_else(|| refuse("its addresses are not inet ones".into()))?;
                        netlock::lock(s, &conn)
                            .map_err(sys("locking the connection (nftables)"))?;
                        dup.lock = Some(conn);
                    }
                    if take != Take::Check {
                        dup.repair = true;
                        let f = closing.unwrap_or((false, false));
                        image.tcp = Some(take_tcp(s, &info, f).map_err(sys("TCP_REPAIR"))?);
                    }
                }
                TCP_SYN_SENT => {
                    // a connect under way: made again from its start
                    image.remote = peer_name(s, family);
                    connecting = true;
                }
                // a closed socket that still names a peer was connected:
                // made again as a merely bound one, its reads would fail
                // with ENOTCONN where they returned end of file
                7 if !peer_name(s, family).is_empty() => {
                    return Err(refuse(
                        "a TCP connection closed on both sides (state CLOSE, still naming its peer) is not saved by this version".into(),
                    ))
                }
                7 if image.local.is_empty() || port(&image.local) == 0 => {} // a new socket
                7 => {} // bound, not listening yet
                st => {
                    return Err(refuse(format!(
                        "a TCP connection in state {st} (only listening, connecting, established and closing ones are saved, not SYN_RECV or TIME_WAIT)"
                    )))
                }
            }
        }
        (libc::AF_INET | libc::AF_INET6, libc::SOCK_DGRAM) if protocol == libc::IPPROTO_UDP => {
            // datagrams waiting are dropped, as a network may drop them
        }
        _ => {
            return Err(refuse(format!(
            "socket family {family} type {stype} protocol {protocol} is not saved by this version"
        )))
        }
    }
    Ok(Sock {
        extras: SocketExtras {
            sock: image.ino,
            shutdown: closing.map_or(Shutdown::default(), |(send, receive)| Shutdown {
                send,
                receive,
            }),
            options: super::sockopts::changed(s, family, stype, protocol),
            unlinked,
            accept_order: None,
            // the senders matter only where no peer of the tree sends again
            senders: if image.peer.is_none() && senders.iter().any(|a| !a.is_empty()) {
                senders
            } else {
                Vec::new()
            },
            filter: super::sockopts::filter(s),
            connecting,
        },
        image,
        dup,
        unix_state,
        rights,
        waiting,
        unsent,
    })
}

/// `SO_PEERNAME`: the peer a socket was connected or is connecting to,
/// even where `getpeername` says it has none (SYN_SENT, CLOSE); empty
/// when there is none.
fn peer_name(s: RawFd, family: i32) -> Vec<u8> {
    // SAFETY: sockaddr_storage is plain data.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // SO_PEERNAME wants no more room than the address takes
    let mut len = if family == libc::AF_INET6 {
        std::mem::size_of::<libc::sockaddr_in6>()
    } else {
        std::mem::size_of::<libc::sockaddr_in>()
    } as libc::socklen_t;
    // SAFETY: ss holds `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_PEERNAME,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r != 0 || len <= 2 {
        return Vec::new();
    }
    // SAFETY: the kernel wrote `len` bytes of the storage.
    unsafe {
        std::slice::from_raw_parts(
            (&ss as *const libc::sockaddr_storage).cast::<u8>(),
            len as usize,
        )
    }
    .to_vec()
}

/// Bytes a unix stream socket sent that its peer has not read (SIOCOUTQ).
fn outq(s: RawFd) -> u32 {
    let mut n: i32 = 0;
    // SAFETY: SIOCOUTQ writes one int.
    unsafe { libc::ioctl(s, libc::TIOCOUTQ, &mut n) };
    n.max(0) as u32
}

/// The path a unix address names (none for abstract or unnamed ones).
pub fn unix_path(addr: &[u8]) -> Option<String> {
    let p = addr.get(2..)?;
    if p.first().is_none_or(|&c| c == 0) {
        return None;
    }
    let p = p.split(|&c| c == 0).next()?;
    Some(String::from_utf8_lossy(p).into_owned())
}

fn port(addr: &[u8]) -> u16 {
    addr.get(2..4)
        .map_or(0, |p| u16::from_be_bytes([p[0], p[1]]))
}

/// struct tcp_info, raw (state at 0, options at 5, wscales at 6,
/// unacked at 24 and sacked at 28 — for a listener, its accept queue and
/// backlog — snd_mss at 16).
fn tcp_info(s: RawFd) -> [u8; 104] {
    let mut v = [0u8; 104];
    let mut len = v.len() as libc::socklen_t;
    // SAFETY: v is a buffer of `len` bytes.
    unsafe {
        libc::getsockopt(
            s,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            v.as_mut_ptr().cast(),
            &mut len,
        )
    };
    v
}

/// Everything TCP_REPAIR gives of an established connection, or of one
/// being closed (`fins`: sent, received — each FIN takes a sequence
/// number, left out of the queues' starts). The socket is left in repair
/// mode: the caller turns it off (the job goes on) or leaves it on while
/// the job is killed (no FIN, no RST to the peer).
fn take_tcp(s: RawFd, info: &[u8; 104], fins: (bool, bool)) -> std::io::Result<TcpRepair> {
    if !setopt(s, libc::IPPROTO_TCP, TCP_REPAIR, 1) {
        return Err(std::io::Error::last_os_error());
    }
    let queue = |which: i32| -> std::io::Result<(u32, Vec<u8>)> {
        setopt(s, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, which);
        let seq: u32 = getopt(s, libc::IPPROTO_TCP, TCP_QUEUE_SEQ)
            .ok_or_else(std::io::Error::last_os_error)?;
        let mut n: i32 = 0;
        let req = if which == TCP_SEND_QUEUE {
            libc::TIOCOUTQ
        } else {
            libc::FIONREAD
        };
        // SAFETY: SIOCOUTQ/SIOCINQ write one int.
        unsafe { libc::ioctl(s, req, &mut n) };
        let mut data = vec![0u8; n.max(0) as usize];
        if n > 0 {
            // SAFETY: data has n bytes.
            let got = unsafe {
                libc::recv(
                    s,
                    data.as_mut_ptr().cast(),
                    data.len(),
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            data.truncate(got.max(0) as usize);
        }
        Ok((seq, data))
    };
    let (recv_seq, recv_queue) = queue(TCP_RECV_QUEUE)?;
    let (send_seq, send_queue) = queue(TCP_SEND_QUEUE)?;
    let mut window: [u32; 5] = getopt(s, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW).unwrap_or([0; 5]);
    let timestamp: u32 = getopt(s, libc::IPPROTO_TCP, TCP_TIMESTAMP).unwrap_or(0);
    let (sent, received) = (u32::from(fins.0), u32::from(fins.1));
    if received == 1 && window[4] == recv_seq {
        // rcv_wup may not be past what restart makes rcv_nxt (the FIN out)
        window[4] = recv_seq.wrapping_sub(1);
    }
    Ok(TcpRepair {
        // where each queue starts: the sequence numbers are of its end,
        // past a FIN
        send_seq: send_seq.wrapping_sub(send_queue.len() as u32 + sent),
        recv_seq: recv_seq.wrapping_sub(recv_queue.len() as u32 + received),
        send_queue,
        recv_queue,
        mss: u32::from_le_bytes([info[16], info[17], info[18], info[19]]),
        snd_wscale: info[6] & 0x0f,
        rcv_wscale: info[6] >> 4,
        options: info[5],
        timestamp,
        window,
    })
}

/// Our duplicate of a socket; for an established TCP socket, left in
/// repair mode while it is saved: back to normal (and unlocked) when
/// dropped (also on any error), unless `keep` (the job is being killed: in
/// repair mode its close sends the peer nothing, neither FIN nor RST, and
/// the lock stays until restart makes the connection again).
pub struct Repairing {
    pub fd: OwnedFd,
    pub repair: bool,
    pub keep: bool,
    /// The connection's network lock, if taken.
    pub lock: Option<Conn>,
}

impl Drop for Repairing {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Some(c) = &self.lock {
            if let Err(e) = netlock::unlock(self.fd.as_raw_fd(), c) {
                tracing::warn!(
                    "could not remove the network lock of {} -> {} (nft delete table inet {}): {e}",
                    c.local,
                    c.remote,
                    c.table()
                );
            }
        }
        if self.repair {
            setopt(self.fd.as_raw_fd(), libc::IPPROTO_TCP, TCP_REPAIR, 0);
        }
    }
}

/// The socket fds of each task (pid, fd), and the TCP sockets in repair.
pub type Classified = (Vec<(i32, FdImage)>, Vec<Repairing>);

/// A socket fd of a task.
pub struct SockRef {
    pub pid: i32,
    pub fd: i32,
    pub flags: u32,
    pub sock: Sock,
}

/// Classify the sockets with the whole tree in view: a unix socket whose
/// peer is in the tree keeps it; one connected to a socket outside is
/// stdio inherited from restart (fds 0-2), a datagram socket connected to
/// a named one (connected again), or refused. Returns the fds to add to
/// each task and the established TCP sockets left in repair mode.
pub fn classify(refs: Vec<SockRef>) -> Result<Classified> {
    let inos: Vec<u64> = refs.iter().map(|r| r.sock.image.ino).collect();
    let mut out = Vec::new();
    let mut repaired = Vec::new();
    for r in refs {
        let img = &r.sock.image;
        let outside_peer = r.sock.unix_state == TCP_ESTABLISHED
            && r.sock.extras.accept_order.is_none()
            && img.peer.is_none_or(|p| !inos.contains(&p));
        let kind = if outside_peer && r.fd <= 2 {
            FdKind::InheritedStdio {
                what: format!("socket:[{}]", img.ino),
            }
        } else if outside_peer && (img.stype == libc::SOCK_DGRAM && !img.remote.is_empty()) {
            let mut image = r.sock.image.clone();
            image.peer = None;
            if !image.queued.is_empty() {
                return Err(ChkptError::unsupported(
                    r.pid,
                    format!("fd {} (socket:[{}])", r.fd, img.ino),
                    "messages from outside the tree are queued on it",
                ));
            }
            FdKind::Socket {
                file: 0,
                sock: image,
            }
        } else if outside_peer {
            return Err(ChkptError::unsupported(
                r.pid,
                format!("fd {} (socket:[{}])", r.fd, img.ino),
                format!(
                    "a unix socket connected to {} outside the checkpointed tree",
                    if img.remote.is_empty() {
                        "a socket".to_string()
                    } else {
                        crate::image::addr_text(&img.remote)
                    }
                ),
            ));
        } else if r.fd <= 2
            && (img.tcp.is_some() || !img.remote.is_empty())
            && img.family != libc::AF_UNIX
        {
            // a connection given as stdio (inetd style): restart's own
            FdKind::InheritedStdio {
                what: format!("socket:[{}]", img.ino),
            }
        } else {
            FdKind::Socket {
                file: 0,
                sock: r.sock.image.clone(),
            }
        };
        if r.sock.dup.repair || r.sock.dup.lock.is_some() {
            repaired.push(r.sock.dup);
        }
        out.push((
            r.pid,
            FdImage {
                fd: r.fd,
                flags: r.flags,
                kind,
            },
        ));
    }
    Ok((out, repaired))
}

/// Datagrams queued on a socket with no peer in the tree came from
/// whoever sent them: restart sends each again from its sender, a socket
/// of the tree bound to that address, or from a new unnamed socket when
/// the sender was unnamed. A message from a named socket outside the tree
/// is refused (its address could not be its sender's again).
pub fn check_senders(socks: &[SockRef]) -> Result<()> {
    for r in socks.iter().filter(|r| r.sock.image.peer.is_none()) {
        for from in r.sock.extras.senders.iter().filter(|a| !a.is_empty()) {
            if !socks.iter().any(|o| &o.sock.image.local == from) {
                return Err(ChkptError::unsupported(
                    r.pid,
                    format!("fd {} (socket:[{}])", r.fd, r.sock.image.ino),
                    format!(
                        "a message from {}, a socket outside the tree, waits on it",
                        crate::image::addr_text(from)
                    ),
                ));
            }
        }
    }
    Ok(())
}
