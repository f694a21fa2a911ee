//! A socket's options of [`sockopts::TABLE`](crate::sockopts::TABLE)
//! that differ from a new socket's of the same kind: what `restart` sets
//! again.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::image::SockOption;
use crate::sockopts::{applies, size, TABLE};

/// The option's value as `getsockopt` gives it (empty: none, like an
/// unbound device).
fn get(fd: RawFd, level: i32, name: i32) -> Option<Vec<u8>> {
    let mut v = vec![0u8; size(level, name)];
    let mut len = v.len() as libc::socklen_t;
    // SAFETY: v holds `len` bytes.
    let r = unsafe { libc::getsockopt(fd, level, name, v.as_mut_ptr().cast(), &mut len) };
    if r != 0 {
        return None;
    }
    v.truncate(len as usize);
    Some(v)
}

/// The options of socket `s` (of this family, type and protocol) that a
/// new one does not have.
pub fn changed(s: RawFd, family: i32, stype: i32, protocol: i32) -> Vec<SockOption> {
    // SAFETY: a new socket of ours, owned below.
    let fresh = unsafe { libc::socket(family, stype | libc::SOCK_CLOEXEC, protocol) };
    if fresh < 0 {
        return Vec::new();
    }
    // SAFETY: just made, ours alone.
    let fresh = unsafe { OwnedFd::from_raw_fd(fresh) };
    TABLE
        .iter()
        .filter(|e| applies(e.3, family, stype, protocol))
        .filter_map(|&(level, name, _, _)| {
            let value = get(s, level, name)?;
            let f = fresh.as_raw_fd();
            let differs = get(f, level, name).as_ref() != Some(&value);
            // a value the kernel keeps but would not take from setsockopt on
            // this kind of socket (an accepted TCP socket's multicast TTL) was
            // not the program's doing
            (differs && settable(f, level, name, &value)).then_some(SockOption {
                level,
                name,
                value,
            })
        })
        .collect()
}

/// Would the kernel take `value` for this option on socket `fd`? Refused
/// only as not applying to the socket (EINVAL, ENOPROTOOPT, EOPNOTSUPP).
fn settable(fd: RawFd, level: i32, name: i32, value: &[u8]) -> bool {
    match crate::sockopts::set(fd, level, name, value) {
        Ok(()) => true,
        Err(e) => !matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
        ),
    }
}

/// The classic BPF filter attached to socket `s` (SO_ATTACH_FILTER), as
/// raw `struct sock_filter` words; empty when none. SO_GET_FILTER counts
/// in instructions: asked with none, it says how many there are.
pub fn filter(s: RawFd) -> Vec<u64> {
    let mut n: libc::socklen_t = 0;
    // SAFETY: a zero length: the kernel writes no bytes, only the count.
    let r = unsafe {
        libc::getsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_GET_FILTER,
            std::ptr::null_mut(),
            &mut n,
        )
    };
    if r != 0 || n == 0 {
        return Vec::new();
    }
    let mut insns = vec![0u64; n as usize];
    // SAFETY: room for `n` instructions of 8 bytes.
    let r = unsafe {
        libc::getsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_GET_FILTER,
            insns.as_mut_ptr().cast(),
            &mut n,
        )
    };
    if r != 0 {
        return Vec::new();
    }
    insns.truncate(n as usize);
    insns
}
