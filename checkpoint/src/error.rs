//! The one error type of the checkpoint library.

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
    Io { path: PathBuf, err: std::io::Error },
    #[error("{op} on process {pid}: {err}")]
    Sys {
        op: String,
        pid: i32,
        err: std::io::Error,
    },
    #[error("injected {name} in process {pid} failed: {errno}")]
    Injected {
        name: &'static str,
        pid: i32,
        errno: std::io::Error,
    },
    #[error("image {path}: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error("no checkpoint {sn} in {dir}")]
    NoSuchCheckpoint { dir: PathBuf, sn: u32 },
    #[error("PID {0} is in use by another process (end that process or wait until it has been reaped and retry, or use restart --new-pids)")]
    PidTaken(i32),
    #[error("cannot parse {what}: {detail}")]
    Parse { what: String, detail: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, ChkptError>;

impl ChkptError {
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        ChkptError::Io {
            path: path.into(),
            err,
        }
    }
    pub fn sys(op: impl Into<String>, pid: i32) -> Self {
        ChkptError::Sys {
            op: op.into(),
            pid,
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
    pub fn bad_image(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ChkptError::BadImage {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
