//! The one error type of the crate. Every variant maps to the errno the FUSE
//! layer answers, so the model decides the errno and the file system only
//! forwards it.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// No entry of that name, or `mkdir` of a name that is no known part.
    #[error("{0}")]
    NotFound(String),
    /// A write, link or name the tree refuses (configfs answers EINVAL).
    #[error("{0}")]
    Invalid(String),
    /// The operation is not allowed on this kind of entry at all.
    #[error("{0}")]
    NotPermitted(String),
    /// Something still depends on the entry (links point at it).
    #[error("{0}")]
    Busy(String),
    /// The name is taken.
    #[error("{0}")]
    Exists(String),
    /// The directory still holds user-created entries.
    #[error("{0}")]
    NotEmpty(String),
    /// A plug-in failed to start or answer, or /proc could not be read.
    #[error("{0}")]
    Io(String),
}

impl Error {
    /// The errno a file system call answers for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound(_) => libc::ENOENT,
            Error::Invalid(_) => libc::EINVAL,
            Error::NotPermitted(_) => libc::EPERM,
            Error::Busy(_) => libc::EBUSY,
            Error::Exists(_) => libc::EEXIST,
            Error::NotEmpty(_) => libc::ENOTEMPTY,
            Error::Io(_) => libc::EIO,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
