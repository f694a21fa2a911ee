//! What `NETLINK_SOCK_DIAG` says of a unix socket: its name, its peer (by
//! inode: how the two ends of a pair are matched), its queue lengths and
//! its shutdown state.

use std::io;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_VFS: u32 = 2;
const UDIAG_SHOW_ICONS: u32 = 8;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_RQLEN: u32 = 0x10;

/// A unix socket as sock_diag describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixInfo {
    /// TCP_* state numbers: 1 connected, 7 not, 10 listening.
    pub state: u8,
    pub name: Vec<u8>,
    pub peer: Option<u64>,
    /// Listening: connections waiting to be accepted, and the backlog;
    /// otherwise bytes (or messages) queued to be read, and 0.
    pub rqlen: (u32, u32),
    /// `sk_shutdown`: 1 receives no more, 2 sends no more.
    pub shutdown: u8,
    /// A socket bound to a path: the inode of the socket file it made.
    pub vfs_ino: Option<u32>,
    /// A listening socket: the inodes of the clients whose connections
    /// wait to be accepted, first to be accepted first.
    pub icons: Vec<u64>,
}

/// Ask the kernel about unix socket `ino`.
pub fn unix(ino: u64) -> io::Result<UnixInfo> {
    // SAFETY: a new socket of ours.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            4, /* NETLINK_SOCK_DIAG */
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let r = ask(fd, ino);
    // SAFETY: closing our socket.
    unsafe { libc::close(fd) };
    r
}

fn ask(fd: i32, ino: u64) -> io::Result<UnixInfo> {
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_le_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_le_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_le_bytes());
    req.extend_from_slice(&1u32.to_le_bytes()); // seq
    req.extend_from_slice(&0u32.to_le_bytes()); // pid
    req.push(libc::AF_UNIX as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_le_bytes());
    req.extend_from_slice(&u32::MAX.to_le_bytes()); // every state
    req.extend_from_slice(&(ino as u32).to_le_bytes());
    req.extend_from_slice(
        &(UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN)
            .to_le_bytes(),
    );
    req.extend_from_slice(&u32::MAX.to_le_bytes()); // no cookie
    req.extend_from_slice(&u32::MAX.to_le_bytes());
    // SAFETY: sending our buffer on our socket (to the kernel: pid 0).
    if unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 8192];
    // SAFETY: receiving into our buffer.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse(&buf[..n as usize])
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

/// One answer: nlmsghdr, unix_diag_msg, attributes.
fn parse(b: &[u8]) -> io::Result<UnixInfo> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad sock_diag answer");
    let len = u32_at(b, 0).ok_or_else(bad)? as usize;
    let ty = u16_at(b, 4).ok_or_else(bad)?;
    if ty == NLMSG_ERROR {
        let e = u32_at(b, 16).ok_or_else(bad)? as i32;
        return Err(io::Error::from_raw_os_error(-e));
    }
    let msg = b.get(16..len.min(b.len())).ok_or_else(bad)?;
    let mut info = UnixInfo {
        state: *msg.get(2).ok_or_else(bad)?,
        ..Default::default()
    };
    let mut at = 16; // after unix_diag_msg
    while at + 4 <= msg.len() {
        let alen = u16_at(msg, at).ok_or_else(bad)? as usize;
        let aty = u16_at(msg, at + 2).ok_or_else(bad)?;
        if alen < 4 {
            break;
        }
        let data = msg.get(at + 4..at + alen).ok_or_else(bad)?;
        match aty {
            0 => info.name = data.to_vec(),
            1 => info.vfs_ino = u32_at(data, 0),
            3 => {
                info.icons = data
                    .chunks_exact(4)
                    .filter_map(|c| u32_at(c, 0).map(u64::from))
                    .collect()
            }
            2 => info.peer = u32_at(data, 0).map(u64::from),
            4 => info.rqlen = (u32_at(data, 0).unwrap_or(0), u32_at(data, 4).unwrap_or(0)),
            6 => info.shutdown = data.first().copied().unwrap_or(0),
            _ => {}
        }
        at += (alen + 3) & !3;
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_socketpair_names_its_peer() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let ino = |s: &std::os::unix::net::UnixStream| {
            std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd()))
                .unwrap()
                .ino()
        };
        use std::io::Write;
        (&b).write_all(b"12345").unwrap();
        let ia = unix(ino(&a)).unwrap();
        assert_eq!(ia.state, 1);
        assert_eq!(ia.peer, Some(ino(&b)));
        assert_eq!(ia.rqlen.0, 5);
        assert_eq!(ia.shutdown, 0);
        b.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(unix(ino(&b)).unwrap().shutdown, 2, "sends no more");
        assert_eq!(
            unix(ino(&a)).unwrap().shutdown,
            1,
            "its peer receives no more"
        );
        assert!(unix(1).is_err(), "no such socket");
    }
}
