//! An established TCP connection made again, or one being closed, with
//! TCP_REPAIR on restart's duplicate of the new socket (see
//! [`sockets::configure`](super::sockets::configure)).

use std::io;
use std::os::fd::RawFd;

use crate::image::{Shutdown, SocketImage, TcpRepair};
use crate::netlock::{self, Conn};

use super::sockcall::{int, setopt, shutdown};

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;

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
pub(super) fn repair(d: RawFd, s: &SocketImage, t: &TcpRepair, shut: Shutdown) -> io::Result<()> {
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
    if shut.receive {
        shutdown(d, libc::SHUT_RD).map_err(at("the peer's FIN (shutdown SHUT_RD)"))?;
    }
    if shut.send {
        int(d, tcp, TCP_REPAIR_QUEUE, 2).map_err(at("send queue"))?;
        shutdown(d, libc::SHUT_WR).map_err(at("this side's FIN (shutdown SHUT_WR)"))?;
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
