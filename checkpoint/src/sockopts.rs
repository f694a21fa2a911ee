//! The socket options carried over beyond the few `SockOpts` names (ints,
//! and the bound device, linger and timeouts): the one table both sides
//! use. `checkpoint` reads each option of
//! the table that applies to a socket and keeps those whose value differs
//! from a new socket's of the same kind; `restart` sets only options of
//! this table (a forged image cannot ask root for anything else), and sets
//! them from inside the restored tree acting as the job's user, so the
//! kernel refuses what the user could not set (SO_MARK, IP_TRANSPARENT…
//! without CAP_NET_ADMIN).

/// Which sockets an option applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// Every socket.
    Any,
    /// TCP sockets (of either inet family).
    Tcp,
    /// AF_INET sockets.
    Inet4,
    /// AF_INET6 sockets.
    Inet6,
    /// AF_INET datagram sockets (multicast: the kernel refuses it on TCP).
    Dgram4,
    /// AF_INET6 datagram sockets.
    Dgram6,
}

/// (level, option, its name, which sockets).
pub type Entry = (i32, i32, &'static str, Applies);

const SOL: i32 = libc::SOL_SOCKET;
const TCP: i32 = libc::IPPROTO_TCP;
const IP: i32 = libc::IPPROTO_IP;
const IP6: i32 = libc::IPPROTO_IPV6;

/// Options settable by `setsockopt` with what `getsockopt` gives (an int
/// unless [`size`] says otherwise); set again in this order (IP_TOS first:
/// setting it also sets the priority, which may have been changed since).
pub const TABLE: &[Entry] = &[
    (IP, libc::IP_TOS, "IP_TOS", Applies::Inet4),
    (SOL, libc::SO_BINDTODEVICE, "SO_BINDTODEVICE", Applies::Any),
    (SOL, libc::SO_LINGER, "SO_LINGER", Applies::Any),
    (SOL, libc::SO_RCVTIMEO, "SO_RCVTIMEO", Applies::Any),
    (SOL, libc::SO_SNDTIMEO, "SO_SNDTIMEO", Applies::Any),
    (SOL, libc::SO_DONTROUTE, "SO_DONTROUTE", Applies::Any),
    (SOL, libc::SO_OOBINLINE, "SO_OOBINLINE", Applies::Any),
    (SOL, libc::SO_NO_CHECK, "SO_NO_CHECK", Applies::Any),
    (SOL, libc::SO_PRIORITY, "SO_PRIORITY", Applies::Any),
    (SOL, libc::SO_RCVLOWAT, "SO_RCVLOWAT", Applies::Any),
    (SOL, libc::SO_PASSSEC, "SO_PASSSEC", Applies::Any),
    (SOL, libc::SO_MARK, "SO_MARK", Applies::Any),
    (SOL, libc::SO_TIMESTAMP, "SO_TIMESTAMP", Applies::Any),
    (SOL, libc::SO_TIMESTAMPNS, "SO_TIMESTAMPNS", Applies::Any),
    (SOL, libc::SO_RXQ_OVFL, "SO_RXQ_OVFL", Applies::Any),
    (TCP, libc::TCP_CORK, "TCP_CORK", Applies::Tcp),
    (TCP, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE", Applies::Tcp),
    (TCP, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL", Applies::Tcp),
    (TCP, libc::TCP_KEEPCNT, "TCP_KEEPCNT", Applies::Tcp),
    (TCP, libc::TCP_SYNCNT, "TCP_SYNCNT", Applies::Tcp),
    (TCP, libc::TCP_LINGER2, "TCP_LINGER2", Applies::Tcp),
    (
        TCP,
        libc::TCP_DEFER_ACCEPT,
        "TCP_DEFER_ACCEPT",
        Applies::Tcp,
    ),
    (
        TCP,
        libc::TCP_USER_TIMEOUT,
        "TCP_USER_TIMEOUT",
        Applies::Tcp,
    ),
    (
        TCP,
        libc::TCP_NOTSENT_LOWAT,
        "TCP_NOTSENT_LOWAT",
        Applies::Tcp,
    ),
    (IP, libc::IP_TTL, "IP_TTL", Applies::Inet4),
    (IP, libc::IP_PKTINFO, "IP_PKTINFO", Applies::Inet4),
    (IP, libc::IP_MTU_DISCOVER, "IP_MTU_DISCOVER", Applies::Inet4),
    (IP, libc::IP_RECVERR, "IP_RECVERR", Applies::Inet4),
    (IP, libc::IP_RECVTTL, "IP_RECVTTL", Applies::Inet4),
    (IP, libc::IP_RECVTOS, "IP_RECVTOS", Applies::Inet4),
    (IP, libc::IP_FREEBIND, "IP_FREEBIND", Applies::Inet4),
    (IP, libc::IP_TRANSPARENT, "IP_TRANSPARENT", Applies::Inet4),
    (
        IP,
        libc::IP_RECVORIGDSTADDR,
        "IP_RECVORIGDSTADDR",
        Applies::Inet4,
    ),
    (IP, libc::IP_NODEFRAG, "IP_NODEFRAG", Applies::Inet4),
    (
        IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        "IP_BIND_ADDRESS_NO_PORT",
        Applies::Inet4,
    ),
    (
        IP,
        libc::IP_MULTICAST_TTL,
        "IP_MULTICAST_TTL",
        Applies::Dgram4,
    ),
    (
        IP,
        libc::IP_MULTICAST_LOOP,
        "IP_MULTICAST_LOOP",
        Applies::Dgram4,
    ),
    (
        IP6,
        libc::IPV6_UNICAST_HOPS,
        "IPV6_UNICAST_HOPS",
        Applies::Inet6,
    ),
    (
        IP6,
        libc::IPV6_MULTICAST_HOPS,
        "IPV6_MULTICAST_HOPS",
        Applies::Dgram6,
    ),
    (
        IP6,
        libc::IPV6_MULTICAST_LOOP,
        "IPV6_MULTICAST_LOOP",
        Applies::Dgram6,
    ),
    (
        IP6,
        libc::IPV6_MTU_DISCOVER,
        "IPV6_MTU_DISCOVER",
        Applies::Inet6,
    ),
    (IP6, libc::IPV6_RECVERR, "IPV6_RECVERR", Applies::Inet6),
    (
        IP6,
        libc::IPV6_RECVPKTINFO,
        "IPV6_RECVPKTINFO",
        Applies::Inet6,
    ),
    (
        IP6,
        libc::IPV6_RECVHOPLIMIT,
        "IPV6_RECVHOPLIMIT",
        Applies::Inet6,
    ),
    (IP6, libc::IPV6_TCLASS, "IPV6_TCLASS", Applies::Inet6),
    (
        IP6,
        libc::IPV6_RECVTCLASS,
        "IPV6_RECVTCLASS",
        Applies::Inet6,
    ),
    (IP6, libc::IPV6_FREEBIND, "IPV6_FREEBIND", Applies::Inet6),
    (
        IP6,
        libc::IPV6_TRANSPARENT,
        "IPV6_TRANSPARENT",
        Applies::Inet6,
    ),
    // last: it locks the filter, attached before the options
    (SOL, libc::SO_LOCK_FILTER, "SO_LOCK_FILTER", Applies::Any),
];

/// Does option (`level`, `name`) of the table apply to a socket of this
/// family, type and protocol?
pub fn applies(a: Applies, family: i32, stype: i32, protocol: i32) -> bool {
    let inet = family == libc::AF_INET || family == libc::AF_INET6;
    match a {
        Applies::Any => true,
        Applies::Tcp => inet && stype == libc::SOCK_STREAM && protocol == libc::IPPROTO_TCP,
        Applies::Inet4 => family == libc::AF_INET,
        Applies::Inet6 => family == libc::AF_INET6,
        Applies::Dgram4 => family == libc::AF_INET && stype == libc::SOCK_DGRAM,
        Applies::Dgram6 => family == libc::AF_INET6 && stype == libc::SOCK_DGRAM,
    }
}

/// The largest value of option (`level`, `name`), in bytes: a device name
/// (IFNAMSIZ), `struct linger`, `struct timeval`, or an int.
pub fn size(level: i32, name: i32) -> usize {
    match (level, name) {
        (libc::SOL_SOCKET, libc::SO_BINDTODEVICE) => libc::IFNAMSIZ,
        (libc::SOL_SOCKET, libc::SO_LINGER) => std::mem::size_of::<libc::linger>(),
        (libc::SOL_SOCKET, libc::SO_RCVTIMEO | libc::SO_SNDTIMEO) => {
            std::mem::size_of::<libc::timeval>()
        }
        _ => std::mem::size_of::<i32>(),
    }
}

/// `setsockopt(fd, level, name, value)` on a socket of ours.
pub fn set(fd: std::os::fd::RawFd, level: i32, name: i32, value: &[u8]) -> std::io::Result<()> {
    // SAFETY: value is the option's bytes, its length passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The table's entry for (`level`, `name`), if it has one.
pub fn entry(level: i32, name: i32) -> Option<&'static Entry> {
    TABLE.iter().find(|e| e.0 == level && e.1 == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_option_once() {
        for (i, a) in TABLE.iter().enumerate() {
            assert!(
                TABLE[i + 1..].iter().all(|b| (b.0, b.1) != (a.0, a.1)),
                "{} twice",
                a.2
            );
        }
    }

    #[test]
    fn tcp_options_only_on_tcp() {
        let (_, _, _, a) = *entry(libc::IPPROTO_TCP, libc::TCP_CORK).unwrap();
        assert!(applies(
            a,
            libc::AF_INET6,
            libc::SOCK_STREAM,
            libc::IPPROTO_TCP
        ));
        assert!(!applies(
            a,
            libc::AF_INET,
            libc::SOCK_DGRAM,
            libc::IPPROTO_UDP
        ));
        assert!(!applies(a, libc::AF_UNIX, libc::SOCK_STREAM, 0));
        assert!(entry(libc::SOL_SOCKET, libc::SO_DEBUG).is_none());
        assert_eq!(size(libc::SOL_SOCKET, libc::SO_LINGER), 8);
        assert_eq!(size(libc::IPPROTO_IP, libc::IP_TTL), 4);
    }
}
