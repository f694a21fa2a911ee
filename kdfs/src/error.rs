//! The one error type of the kdfs library.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum KdfsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unreachable(String),
}

impl KdfsError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        KdfsError::Io { path: path.into(), source }
    }
    pub fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        KdfsError::Corrupt { path: path.into(), reason: reason.into() }
    }
}
