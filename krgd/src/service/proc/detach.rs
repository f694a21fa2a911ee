//! Output of detached jobs (`krg run --detach`): a directory per job under
//! `<data_dir>/detached/`, holding `stdout`, `stderr` and, once the job
//! ended, `status`. krgd (root) makes the directory and files in its own
//! root-owned directory with `*at()` calls (O_EXCL, O_NOFOLLOW), then gives
//! them to the job's user (mode 0700/0600): the user never gets a chance to
//! swap a path under root's feet.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use krg_proto::proc::{Credentials, Down, ExitStatus};
use tokio::sync::mpsc;

fn cvt(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cname(name: &str) -> std::io::Result<CString> {
    CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// A new, empty file `name` in directory `dir` (never through a link).
fn create_in(dir: &OwnedFd, name: &str, creds: &Credentials) -> std::io::Result<File> {
    let c = cname(name)?;
    // SAFETY: openat on a directory we hold, with a NUL-terminated name.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600,
        )
    })?;
    // SAFETY: a descriptor openat just returned.
    let file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: fchown of the file we created.
    cvt(unsafe { libc::fchown(fd, creds.uid, creds.gid) })?;
    Ok(file)
}

/// The output directory of one detached job and its two files.
#[derive(Debug)]
pub struct Output {
    /// The directory.
    pub dir: PathBuf,
    /// stdout of the job.
    pub stdout: File,
    /// stderr of the job.
    pub stderr: File,
}

/// The name of job `id`'s output directory (its program's PID in its
/// namespace, this krgd's PID, the job number: unique on this node).
pub fn dir_name(pid: i32, id: u64) -> String {
    format!("{pid}-{}-{id}", std::process::id())
}

/// Make `<base>/<name>/{stdout,stderr}` for a job of `creds`.
pub fn create(base: &Path, name: &str, creds: &Credentials) -> std::io::Result<Output> {
    std::fs::create_dir_all(base)?;
    let base_c = CString::new(base.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open of a NUL-terminated path; the descriptor is ours.
    let parent = unsafe {
        OwnedFd::from_raw_fd(cvt(libc::open(
            base_c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        ))?)
    };
    let c = cname(name)?;
    // SAFETY: mkdirat/openat on the directory we hold.
    let dir = unsafe {
        cvt(libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o700))?;
        OwnedFd::from_raw_fd(cvt(libc::openat(
            parent.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        ))?)
    };
    let stdout = create_in(&dir, "stdout", creds)?;
    let stderr = create_in(&dir, "stderr", creds)?;
    // Given to the user last: until now only root could touch it.
    // SAFETY: fchown of the directory we created.
    cvt(unsafe { libc::fchown(dir.as_raw_fd(), creds.uid, creds.gid) })?;
    Ok(Output {
        dir: base.join(name),
        stdout,
        stderr,
    })
}

/// Record how a detached job ended in `<dir>/status`. The directory is the
/// user's by now, so the file is created with O_EXCL|O_NOFOLLOW relative
/// to a descriptor of it: a link planted there is refused, not followed.
pub fn write_status(dir: &Path, creds: &Credentials, status: ExitStatus) -> std::io::Result<()> {
    let c = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open of a NUL-terminated path; the descriptor is ours.
    let dirfd = unsafe {
        OwnedFd::from_raw_fd(cvt(libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        ))?)
    };
    let mut f = create_in(&dirfd, "status", creds)?;
    writeln!(f, "{status}")
}

/// A detached job that moved to this node: its session stream goes to
/// the node that started it, which keeps its output files. If that node
/// goes away, the job runs on and its output goes into files here.
pub struct Outlives {
    /// Name of its directory here.
    pub name: String,
    /// Its owner.
    pub creds: Credentials,
}

/// The node that started a moved detached job is gone: write what the
/// job prints from now on into `<base>/<name>/{stdout,stderr}`, and how it
/// ended into `status`, until its last event.
pub async fn carry_on(base: &Path, o: Outlives, mut events: mpsc::Receiver<Down>) {
    let out = match create(base, &o.name, &o.creds) {
        Ok(out) => out,
        Err(e) => {
            tracing::warn!(error = %e, "a moved detached job lost its origin, and no output directory could be made here: its output is dropped");
            while events.recv().await.is_some() {}
            return;
        }
    };
    tracing::info!(dir = %out.dir.display(), "the node that started a moved detached job is gone: its output goes on here");
    let (mut stdout, mut stderr) = (out.stdout, out.stderr);
    while let Some(ev) = events.recv().await {
        // a full disk loses that output, not the job
        let _ = match ev {
            Down::Stdout { data, .. } => stdout.write_all(&data),
            Down::Stderr { data, .. } => stderr.write_all(&data),
            Down::Exited { status, .. } => write_status(&out.dir, &o.creds, status),
            _ => Ok(()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_made_once_and_links_are_not_followed() {
        let base = tempfile::tempdir().unwrap();
        let me = Credentials {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            groups: vec![],
        };
        let out = create(base.path(), "7", &me).unwrap();
        assert!(out.dir.join("stdout").exists() && out.dir.join("stderr").exists());
        assert!(create(base.path(), "7", &me).is_err());
        let victim = base.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, out.dir.join("status")).unwrap();
        assert!(write_status(&out.dir, &me, ExitStatus::Code(0)).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        std::fs::remove_file(out.dir.join("status")).unwrap();
        write_status(&out.dir, &me, ExitStatus::Code(3)).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.dir.join("status")).unwrap(),
            "exit 3\n"
        );
    }
}
