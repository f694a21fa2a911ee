//! A socket's options of [`sockopts::TABLE`](crate::sockopts::TABLE)
//! that differ from a new socket's of the same kind: what `restart` sets
//! again.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::image::IntOption;
use crate::sockopts::{applies, TABLE};

fn get(fd: RawFd, level: i32, name: i32) -> Option<i32> {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: an int option into an int.
    let r = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut i32).cast(), &mut len) };
    (r == 0).then_some(v)
}

/// The options of socket `s` (of this family, type and protocol) that a
/// new one does not have.
pub fn changed(s: RawFd, family: i32, stype: i32, protocol: i32) -> Vec<IntOption> {
    // SAFETY: a new socket of ours, owned below.
    let fresh = unsafe { libc::socket(family, stype | libc::SOCK_CLOEXEC, protocol) };
    if fresh < 0 {
        return Vec::new();
    }
    // SAFETY: just made, ours alone.
    let fresh = unsafe { OwnedFd::from_raw_fd(fresh) };
    use std::os::fd::AsRawFd;
    TABLE
        .iter()
        .filter(|e| applies(e.3, family, stype, protocol))
        .filter_map(|&(level, name, _, _)| {
            let value = get(s, level, name)?;
            let f = fresh.as_raw_fd();
            let differs = get(f, level, name) != Some(value);
            // a value the kernel keeps but would not take from setsockopt on
            // this kind of socket (an accepted TCP socket's multicast TTL) was
            // not the program's doing
            (differs && settable(f, level, name, value)).then_some(IntOption { level, name, value })
        })
        .collect()
}

/// Would the kernel take `value` for this option on socket `fd`? Refused
/// only as not applying to the socket (EINVAL, ENOPROTOOPT, EOPNOTSUPP).
fn settable(fd: RawFd, level: i32, name: i32, value: i32) -> bool {
    // SAFETY: an int option from an int.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    let e = std::io::Error::last_os_error().raw_os_error();
    r == 0 || !matches!(e, Some(libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP))
}
