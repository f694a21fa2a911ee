//! The seccomp state of each thread of a frozen task: strict mode, or its
//! filters read back with `PTRACE_SECCOMP_GET_FILTER` (root only: the
//! kernel gives filters to CAP_SYS_ADMIN) and their flags with
//! `PTRACE_GET_SECCOMP_METADATA`. Restore installs them again
//! (`restore::seccomp`).

use crate::error::{ChkptError, Result};
use crate::image::{SeccompFilter, ThreadSeccomp};
use crate::procfs;

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_GET_SECCOMP_METADATA: libc::c_uint = 0x420d;
/// A classic BPF program holds at most this many instructions.
const BPF_MAXINSNS: usize = 4096;

/// The seccomp state of thread `tid` of `pid` (stopped under our ptrace);
/// `None` when it has none.
pub fn read(pid: i32, tid: i32) -> Result<Option<ThreadSeccomp>> {
    let st = procfs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))?;
    let mode = procfs::status_field(&st, "Seccomp").unwrap_or("0");
    match mode {
        "0" => return Ok(None),
        "1" => {
            return Ok(Some(ThreadSeccomp {
                tid,
                strict: true,
                filters: Vec::new(),
            }))
        }
        "2" => {}
        m => {
            return Err(ChkptError::unsupported(
                pid,
                format!("seccomp mode {m} (thread {tid})"),
                "not saved by this version",
            ))
        }
    }
    let refuse =
        |why: String| ChkptError::unsupported(pid, format!("seccomp filters (thread {tid})"), why);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(refuse(
            "only root can read them (run checkpoint as root)".into(),
        ));
    }
    let mut filters = Vec::new();
    // index 0 is the last installed: read them all, then turn the list
    for index in 0.. {
        let Some(insns) =
            filter(tid, index).map_err(|e| refuse(format!("reading filter {index}: {e}")))?
        else {
            break;
        };
        let flags = flags(tid, index)
            .map_err(|e| refuse(format!("reading filter {index}'s flags: {e}")))?;
        filters.push(SeccompFilter { flags, insns });
    }
    filters.reverse();
    Ok(Some(ThreadSeccomp {
        tid,
        strict: false,
        filters,
    }))
}

/// Filter `index` of `tid` (0: the last installed); `None` past the last.
fn filter(tid: i32, index: u64) -> std::io::Result<Option<Vec<u64>>> {
    // SAFETY: with a null buffer the kernel only returns the length.
    let n = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index, 0usize) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        // ENOENT: no filter at that index
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    let n = n as usize;
    if n == 0 || n > BPF_MAXINSNS {
        return Err(std::io::Error::other(format!("{n} instructions")));
    }
    let mut buf = vec![0u64; n];
    // SAFETY: buf holds n sock_filters of 8 bytes each, as the kernel was
    // told; the filter cannot change (the thread is stopped, and a filter
    // once installed never changes).
    let got = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index, buf.as_mut_ptr()) };
    if got < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(got as usize);
    Ok(Some(buf))
}

/// `struct seccomp_metadata` of filter `index`: its flags.
fn flags(tid: i32, index: u64) -> std::io::Result<u64> {
    let mut md = [index, 0u64];
    // SAFETY: md is the 16-byte struct the kernel reads the index from and
    // writes the flags into; its size is passed.
    let r = unsafe {
        libc::ptrace(
            PTRACE_GET_SECCOMP_METADATA,
            tid,
            std::mem::size_of_val(&md),
            md.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(md[1])
}
