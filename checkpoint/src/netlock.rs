//! The network lock of an established TCP connection that `checkpoint
//! --kill` closes silently: nftables rules that drop its segments, both
//! ways, from before its queues are read until `restart` has made it
//! again. Without them a segment the peer sends meanwhile — the delayed
//! ACK of the last answer, data, a keepalive — finds no socket, the host
//! answers it with a RST, and the connection is lost at restart.
//!
//! One table per connection, named after its addresses, so that restart
//! finds it from the image alone; made and removed by `nft` (Debian
//! package nftables) in the network namespace of the socket (taken from
//! the socket itself with `SIOCGSKNS`). The peer retransmits what was
//! dropped, as it would across a lost link.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::{Command, Stdio};

/// Where Debian puts `nft` (never looked up in PATH: root runs it).
const NFT: [&str; 2] = ["/usr/sbin/nft", "/sbin/nft"];

/// `SIOCGSKNS`: an fd of the network namespace of a socket.
const SIOCGSKNS: libc::c_ulong = 0x894C;

/// An IPv4 or IPv6 connection, by its two ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Conn {
    /// From the sockaddr bytes of both ends (None unless both are inet
    /// addresses of one family).
    pub fn from_sockaddrs(local: &[u8], remote: &[u8]) -> Option<Conn> {
        let (local, remote) = (sockaddr(local)?, sockaddr(remote)?);
        (local.is_ipv4() == remote.is_ipv4()).then_some(Conn { local, remote })
    }

    /// The table of the lock: `krg_tcp_` and both ends in hex.
    pub fn table(&self) -> String {
        let hex = |a: &SocketAddr| {
            let ip: Vec<u8> = match a.ip() {
                IpAddr::V4(v) => v.octets().to_vec(),
                IpAddr::V6(v) => v.octets().to_vec(),
            };
            let mut s: String = ip.iter().map(|b| format!("{b:02x}")).collect();
            s.push_str(&format!("{:04x}", a.port()));
            s
        };
        format!("krg_tcp_{}_{}", hex(&self.local), hex(&self.remote))
    }

    /// The nft script that makes the lock (replacing any stale one).
    pub fn lock_script(&self) -> String {
        let t = self.table();
        let (l, r) = (self.local, self.remote);
        format!(
            "add table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n  \
             chain input {{ type filter hook input priority -300; policy accept; {} drop; }}\n  \
             chain output {{ type filter hook output priority -300; policy accept; {} drop; }}\n}}\n",
            matches(r, l),
            matches(l, r)
        )
    }

    /// The nft script that removes the lock (and succeeds if there is none).
    pub fn unlock_script(&self) -> String {
        let t = self.table();
        format!("add table inet {t}\ndelete table inet {t}\n")
    }
}

/// An nft match of the TCP segments from `src` to `dst`.
fn matches(src: SocketAddr, dst: SocketAddr) -> String {
    let fam = if src.is_ipv4() { "ip" } else { "ip6" };
    format!(
        "{fam} saddr {} tcp sport {} {fam} daddr {} tcp dport {}",
        src.ip(),
        src.port(),
        dst.ip(),
        dst.port()
    )
}

/// A sockaddr_in / sockaddr_in6 as recorded; an IPv4-mapped IPv6 address
/// is IPv4 on the wire, and matched as such.
fn sockaddr(a: &[u8]) -> Option<SocketAddr> {
    let fam = u16::from_ne_bytes([*a.first()?, *a.get(1)?]) as i32;
    let port = u16::from_be_bytes([*a.get(2)?, *a.get(3)?]);
    match fam {
        libc::AF_INET => {
            let ip: [u8; 4] = a.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        libc::AF_INET6 => {
            let ip: [u8; 16] = a.get(8..24)?.try_into().ok()?;
            let ip = std::net::Ipv6Addr::from(ip);
            let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
            Some(SocketAddr::new(ip, port))
        }
        _ => None,
    }
}

fn nft_path() -> Option<&'static str> {
    NFT.into_iter().find(|p| Path::new(p).is_file())
}

/// Drop every segment of `c` (socket `sock`'s connection) in its network
/// namespace, until [`unlock`].
pub fn lock(sock: RawFd, c: &Conn) -> io::Result<()> {
    let Some(nft) = nft_path() else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} not found: holding an established TCP connection across checkpoint --kill needs nftables",
                NFT[0]
            ),
        ));
    };
    run(nft, sock, &c.lock_script())
}

/// Remove the lock of `c`, if any, in the namespace of socket `sock`. With
/// no `nft` on this host no lock can have been made here: nothing to do.
pub fn unlock(sock: RawFd, c: &Conn) -> io::Result<()> {
    match nft_path() {
        Some(nft) => run(nft, sock, &c.unlock_script()),
        None => Ok(()),
    }
}

/// Run `nft -f -` with `script` in the network namespace of `sock`.
fn run(nft: &str, sock: RawFd, script: &str) -> io::Result<()> {
    // SAFETY: SIOCGSKNS takes no argument and returns a new fd.
    let ns = unsafe { libc::ioctl(sock, SIOCGSKNS) };
    if ns < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just returned to us and is owned by nobody else.
    let ns = unsafe { OwnedFd::from_raw_fd(ns) };
    let nsfd = ns.as_raw_fd();
    let mut cmd = Command::new(nft);
    cmd.args(["-f", "-"])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only setns, async-signal-safe, between fork and exec; the
    // namespace fd stays open in the parent until the child has started.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if libc::setns(nsfd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(ns);
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(io::Error::other(format!(
            "{nft}: {}",
            err.lines().next().unwrap_or("failed").trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn v4(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut b = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        b.extend_from_slice(&port.to_be_bytes());
        b.extend_from_slice(&ip);
        b.extend_from_slice(&[0; 8]);
        b
    }

    fn v6(ip: std::net::Ipv6Addr, port: u16) -> Vec<u8> {
        let mut b = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        b.extend_from_slice(&port.to_be_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&ip.octets());
        b.extend_from_slice(&[0; 4]);
        b
    }

    #[test]
    fn the_table_is_named_after_both_ends() {
        let c = Conn::from_sockaddrs(&v4([127, 0, 0, 1], 6379), &v4([10, 0, 0, 2], 50262)).unwrap();
        assert_eq!(c.table(), "krg_tcp_7f00000118eb_0a000002c456");
        let s = c.lock_script();
        assert!(
            s.contains("ip saddr 10.0.0.2 tcp sport 50262 ip daddr 127.0.0.1 tcp dport 6379 drop"),
            "{s}"
        );
        assert!(
            s.contains("ip saddr 127.0.0.1 tcp sport 6379 ip daddr 10.0.0.2 tcp dport 50262 drop"),
            "{s}"
        );
    }

    #[test]
    fn an_ipv4_mapped_address_is_matched_as_ipv4() {
        let m = "::ffff:127.0.0.1".parse().unwrap();
        let c = Conn::from_sockaddrs(&v6(m, 1), &v6(m, 2)).unwrap();
        assert!(c
            .lock_script()
            .contains("ip saddr 127.0.0.1 tcp sport 2 ip daddr 127.0.0.1"));
        let c = Conn::from_sockaddrs(
            &v6("::1".parse().unwrap(), 1),
            &v6("::1".parse().unwrap(), 2),
        )
        .unwrap();
        assert!(c
            .lock_script()
            .contains("ip6 saddr ::1 tcp sport 2 ip6 daddr ::1"));
    }

    #[test]
    fn garbage_addresses_are_no_connection() {
        assert_eq!(Conn::from_sockaddrs(&[], &[]), None);
        assert_eq!(
            Conn::from_sockaddrs(&v4([1, 2, 3, 4], 5)[..6], &v4([1, 2, 3, 4], 5)),
            None
        );
        let m = "::1".parse().unwrap();
        assert_eq!(Conn::from_sockaddrs(&v4([1, 2, 3, 4], 5), &v6(m, 5)), None);
    }
}
