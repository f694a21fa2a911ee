//! What one descriptor of a frozen task is, on its own: a file reopened by
//! its path, a terminal, a pipe end (classified later with the whole
//! tree in view), or refused; and the bytes a pipe holds. Used by the fd
//! tables (`files`), the held and in-flight descriptors (`held`,
//! `inflight`).

use std::os::unix::fs::OpenOptionsExt;

use crate::error::{ChkptError, Result};
use crate::image::FdKind;

/// Devices a process may hold open and still be checkpointed: they carry no state.
const ALLOWED_DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"];

/// A pipe fd seen while listing fds: (pid, fd, inode, write end).
#[derive(Debug, Clone)]
pub(super) struct PipeRef {
    pub pid: i32,
    pub fd: i32,
    pub ino: u64,
    pub write_end: bool,
}

/// A file reopened by its path (a regular file, directory or allowed
/// device), or `None` when `target` is something else.
pub(super) fn classify_path(pid: i32, fd: i32, target: &str, pos: u64) -> Result<Option<FdKind>> {
    Ok(classify_fd(pid, fd, target, pos)?.filter(|k| matches!(k, FdKind::Path { .. })))
}

/// `None` for a pipe (classified later with the whole tree in view).
pub(super) fn classify_fd(pid: i32, fd: i32, target: &str, pos: u64) -> Result<Option<FdKind>> {
    let refuse = |why: &str| {
        Err(ChkptError::unsupported(
            pid,
            format!("fd {fd} ({target})"),
            why.to_string(),
        ))
    };
    if target.starts_with("pipe:[") {
        return Ok(None);
    }
    let is_tty = target.starts_with("/dev/pts/")
        || target.starts_with("/dev/tty")
        || target == "/dev/console";
    if fd <= 2 && is_tty {
        return Ok(Some(FdKind::InheritedStdio {
            what: target.to_string(),
        }));
    }
    if is_tty {
        // a terminal above fd 2: restart gives it its own stdin/stdout
        // (or what --inherit-fd names)
        return Ok(Some(FdKind::External {
            file: 0,
            what: target.to_string(),
        }));
    }
    if target.contains("io_uring") {
        return refuse("io_uring cannot be checkpointed");
    }
    if target.starts_with("anon_inode:") {
        return refuse("this kind of anonymous inode is not saved by this version");
    }
    if target.ends_with(" (deleted)") {
        return refuse("the file was deleted");
    }
    if !target.starts_with('/') {
        return refuse("unknown kind of file");
    }
    if let Some(why) = super::refuse::proc_file(target) {
        return refuse(&why);
    }
    // The object the fd holds (the magic link is followed to it, never
    // the path, which may name something else by now).
    let meta = match std::fs::metadata(format!("/proc/{pid}/fd/{fd}")) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            return Err(ChkptError::NoSuchProcess(pid))
        }
        Err(e) => return refuse(&format!("cannot look at it: {e}")),
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        return refuse("a symbolic link itself (opened with O_PATH|O_NOFOLLOW) cannot be reopened");
    }
    use std::os::unix::fs::FileTypeExt;
    if ft.is_char_device() || ft.is_block_device() {
        if !ALLOWED_DEVICES.contains(&target) {
            return refuse("devices other than /dev/null, /dev/zero, /dev/random, /dev/urandom cannot be checkpointed");
        }
    } else if !ft.is_file() && !ft.is_dir() {
        return refuse("only regular files, directories and pipes inside the tree are supported");
    }
    // `file` is assigned once the whole tree's fds are known (dump::share_files)
    Ok(Some(FdKind::Path {
        path: target.to_string(),
        pos,
        file: 0,
    }))
}

/// Bytes buffered in a pipe, copied without consuming them: `tee` into a
/// pipe of our own, then read that.
pub(super) fn pipe_data(pid: i32, fd: i32) -> Result<Vec<u8>> {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let path = format!("/proc/{pid}/fd/{fd}");
    let src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| ChkptError::io(&path, e))?;
    let mut p = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the 2-int array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(ChkptError::sys("pipe2 (copying pipe data)", pid));
    }
    // SAFETY: pipe2 succeeded: both fds are new and ours alone.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // A pipe holds at most 1 MiB here (pipe-max-size without CAP_SYS_RESOURCE).
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    // SAFETY: tee between two pipe fds we hold open.
    let n = unsafe {
        libc::tee(
            src.as_raw_fd(),
            wr.as_raw_fd(),
            1 << 20,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(Vec::new()); // an empty pipe
        }
        return Err(ChkptError::io(&path, e));
    }
    drop(wr);
    let mut data = Vec::with_capacity(n as usize);
    std::fs::File::from(rd)
        .read_to_end(&mut data)
        .map_err(|e| ChkptError::io(&path, e))?;
    Ok(data)
}
