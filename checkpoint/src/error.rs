//! The one error type of the checkpoint library. Every variant that comes
//! from a failed system call or library call keeps that error as its source.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ChkptError {
    #[error("process {0} does not exist")]
    NoSuchProcess(i32),
    #[error("process {pid}: {what} is not supported ({detail})")]
    Unsupported {
        pid: i32,
        what: String,
        detail: String,
    },
    #[error("permission denied: {0}")]
    Permission(String),
    #[error("{path}: {err}")]
    Io {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("{op} on process {pid}: {err}")]
    Sys {
        op: String,
        pid: i32,
        #[source]
        err: std::io::Error,
    },
    #[error("injected {name} in process {pid} failed: {errno}")]
    Injected {
        name: &'static str,
        pid: i32,
        #[source]
        errno: std::io::Error,
    },
    /// A traced process left the state injection needs (it exited, or a
    /// signal other than the single-step trap arrived).
    #[error("process {pid}: {what}")]
    Tracee { pid: i32, what: String },
    #[error("image {path}: {reason}")]
    BadImage { path: PathBuf, reason: String },
    /// The files of an SN decode, but do not fit together.
    #[error("inconsistent image: {0}")]
    Inconsistent(String),
    #[error("no checkpoint {sn} in {dir}")]
    NoSuchCheckpoint { dir: PathBuf, sn: u32 },
    #[error("PID {0} is in use by another process (end that process or wait until it has been reaped and retry, or use restart --new-pids)")]
    PidTaken(i32),
    #[error("cannot parse {what}: {detail}")]
    Parse { what: String, detail: String },
    #[error("encoding an image: {0}")]
    Encode(#[from] postcard::Error),
    /// A SysV IPC call on an object of the job.
    #[error("{what}: {err}")]
    Ipc {
        what: String,
        #[source]
        err: std::io::Error,
    },
    /// The checkpoint cannot come back on this kernel or machine.
    #[error("{0}: restart on the kernel that took the checkpoint")]
    Kernel(String),
    /// Something of the image does not fit a fixed limit of restart.
    #[error("{0} does not fit restart's limits")]
    TooLarge(String),
    /// The options asked for what this image cannot do.
    #[error("{0}")]
    Usage(String),
    /// A caller shipping the image while the job ran failed (a migration's
    /// transfer); the job was not frozen.
    #[error("sending the image: {0}")]
    Ship(String),
    /// Page data still on another node could not be had (`--fetch-fd`:
    /// a post-copy migration whose origin failed).
    #[error("fetching page data: {0}")]
    Fetch(String),
    /// The job changed while it was being frozen.
    #[error("{0}; retry")]
    Changed(String),
    /// Credentials could not be taken or dropped.
    #[error("{what}: {err}")]
    Credentials {
        what: String,
        #[source]
        err: std::io::Error,
    },
    /// A helper thread of ours died or could not start.
    #[error("{0}")]
    Thread(String),
    /// While restoring one mapping.
    #[error("mapping {start:#x}-{end:#x} ({kind}): {source}")]
    Mapping {
        start: u64,
        end: u64,
        kind: String,
        source: Box<ChkptError>,
    },
    #[error(transparent)]
    Krgd(#[from] krg_proto::ProtoError),
    /// krgd's one line, printed once: not a `source` too, or a chain
    /// printed with `{:#}` said it twice.
    #[error("krgd: {0}")]
    KrgdRefused(krg_proto::admin::AdminError),
    #[error("krgd sent an unexpected reply")]
    KrgdReply,
}

impl From<krg_proto::admin::AdminError> for ChkptError {
    fn from(e: krg_proto::admin::AdminError) -> Self {
        ChkptError::KrgdRefused(e)
    }
}

pub type Result<T> = std::result::Result<T, ChkptError>;

impl ChkptError {
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        ChkptError::Io {
            path: path.into(),
            err,
        }
    }
    /// `op` failed on process `pid` with the last OS error.
    pub fn sys(op: impl Into<String>, pid: i32) -> Self {
        ChkptError::Sys {
            op: op.into(),
            pid,
            err: std::io::Error::last_os_error(),
        }
    }
    /// A SysV call on `what` failed with the last OS error.
    pub fn ipc(what: impl Into<String>) -> Self {
        ChkptError::Ipc {
            what: what.into(),
            err: std::io::Error::last_os_error(),
        }
    }
    pub fn unsupported(pid: i32, what: impl Into<String>, detail: impl Into<String>) -> Self {
        ChkptError::Unsupported {
            pid,
            what: what.into(),
            detail: detail.into(),
        }
    }
    /// Does this error say a process (or thread) just went away — it exited
    /// between being listed and being looked at?
    pub fn is_gone(&self) -> bool {
        let gone =
            |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::ESRCH | libc::ENOENT));
        match self {
            ChkptError::NoSuchProcess(_) => true,
            ChkptError::Io { err, .. } | ChkptError::Sys { err, .. } => gone(err),
            ChkptError::Tracee { what, .. } => what.starts_with("exited"),
            _ => false,
        }
    }

    pub fn bad_image(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ChkptError::BadImage {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use krg_proto::admin::{AdminError, ErrorKind};

    /// The tools print errors with their chain (`{:#}`): krgd's line
    /// once, not once more as the cause.
    #[test]
    fn a_krgd_refusal_is_said_once() {
        let e: ChkptError = AdminError::new(ErrorKind::NotFound, "no process 2:824").into();
        let shown = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(shown, "krgd: no process 2:824");
    }
}
