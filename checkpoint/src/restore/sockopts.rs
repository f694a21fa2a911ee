//! A socket's options beyond a new socket's, set again by `setsockopt`
//! injected in the root task while it acts as the job's user: the kernel
//! checks them with the user's rights (SO_MARK, a priority above 6,
//! IP_TRANSPARENT need CAP_NET_ADMIN). Only options of
//! [`sockopts::TABLE`](crate::sockopts::TABLE) that apply to the socket
//! are set.

use crate::error::{ChkptError, Result};
use crate::image::{SockOption, SocketImage};
use crate::ptrace::{self, Injector};
use crate::sockopts;

/// Largest socket filter a program may attach (BPF_MAXINSNS).
const MAX_FILTER: usize = 4096;

/// Attach the classic BPF filter `insns` to the root's fd `fd`, socket
/// `s` (as the job's user, like the options).
pub fn attach_filter(
    root: &Injector,
    scratch: u64,
    fd: i32,
    s: &SocketImage,
    insns: &[u64],
) -> Result<()> {
    if insns.len() > MAX_FILTER {
        return Err(ChkptError::Inconsistent(format!(
            "socket:[{}]: a filter of {} instructions",
            s.ino,
            insns.len()
        )));
    }
    ptrace::write_mem(
        root.tid,
        scratch,
        &super::seccomp::sock_fprog(scratch, insns),
    )?;
    root.call(
        "setsockopt(SO_ATTACH_FILTER)",
        libc::SYS_setsockopt,
        [
            fd as u64,
            libc::SOL_SOCKET as u64,
            libc::SO_ATTACH_FILTER as u64,
            scratch,
            16,
            0,
        ],
    )?;
    Ok(())
}

/// Set `options` on the root's fd `fd`, socket `s`.
pub fn set(
    root: &Injector,
    scratch: u64,
    fd: i32,
    s: &SocketImage,
    options: &[SockOption],
) -> Result<()> {
    for o in options {
        let Some(&(_, _, what, applies)) = sockopts::entry(o.level, o.name) else {
            return Err(ChkptError::Inconsistent(format!(
                "socket:[{}]: option {}:{} is not one restart sets",
                s.ino, o.level, o.name
            )));
        };
        if !sockopts::applies(applies, s.family, s.stype, s.protocol) {
            return Err(ChkptError::Inconsistent(format!(
                "socket:[{}]: {what} does not apply to this kind of socket",
                s.ino
            )));
        }
        if o.value.len() > sockopts::size(o.level, o.name) {
            return Err(ChkptError::Inconsistent(format!(
                "socket:[{}]: a {}-byte value for {what}",
                s.ino,
                o.value.len()
            )));
        }
        ptrace::write_mem(root.tid, scratch, &o.value)?;
        root.call(
            what,
            libc::SYS_setsockopt,
            [
                fd as u64,
                o.level as u64,
                o.name as u64,
                scratch,
                o.value.len() as u64,
                0,
            ],
        )?;
    }
    Ok(())
}
