//! Files the root task opens or makes for the tree, as the job's user
//! (its file-system ids are the user's by then): a path opened by an
//! injected `openat`, and the unnamed copy of a deleted file.

use std::io::Write;

use crate::error::{ChkptError, Result};
use crate::ptrace::{self, Injector};

use super::ctx::SCRATCH_LEN;

/// `openat` of `path` in the task of `root`.
pub fn open_in(root: &Injector, scratch: u64, path: &str, flags: u32, mode: u32) -> Result<u64> {
    if path.len() as u64 >= SCRATCH_LEN || path.contains('\0') {
        return Err(ChkptError::TooLarge(format!("the path {path}")));
    }
    let mut b = path.as_bytes().to_vec();
    b.push(0);
    ptrace::write_mem(root.tid, scratch, &b)?;
    root.call(
        "openat",
        libc::SYS_openat,
        [
            libc::AT_FDCWD as u64,
            scratch,
            flags as u64,
            mode as u64,
            0,
            0,
        ],
    )
}

/// A file like deleted `path` once was: unnamed (`O_TMPFILE`) in the
/// directory it was in, made by the root task (as the job's user), with
/// `mode` and `content`. Returns its fd in the root task.
pub fn unnamed_file(
    root: &Injector,
    scratch: u64,
    path: &str,
    mode: u32,
    content: &[u8],
) -> Result<u64> {
    let dir = std::path::Path::new(path)
        .parent()
        .and_then(|p| p.to_str())
        .unwrap_or("/");
    let fd = open_in(
        root,
        scratch,
        dir,
        (libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC) as u32,
        mode & 0o777,
    )?;
    root.call(
        "fchmod",
        libc::SYS_fchmod,
        [fd, (mode & 0o777) as u64, 0, 0, 0, 0],
    )?;
    let link = format!("/proc/{}/fd/{fd}", root.tid);
    // a /proc magic link of our own making: it must be followed
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .open(&link)
        .map_err(|e| ChkptError::io(&link, e))?;
    w.write_all(content).map_err(|e| ChkptError::io(&link, e))?;
    Ok(fd)
}
