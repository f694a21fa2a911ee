//! The one error type of the kdfs library.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum KdfsError {
    /// The I/O error is part of the message (not a `source`), so that
    /// `{:#}` chains do not print it twice.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unreachable(String),
}

impl KdfsError {
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        KdfsError::Io {
            path: path.into(),
            cause,
        }
    }
    pub fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        KdfsError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
