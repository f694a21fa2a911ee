//! The one error type of the crate. Every variant maps to the errno the FUSE
//! layer answers, so the model decides the errno and the file system only
//! forwards it.

use thiserror::Error;

#[derive(Debug, Error)]
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
    /// A system call failed: reading /proc, starting a plug-in or a
    /// thread, mounting. Keeps the OS error as its source.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A plug-in did not declare itself, answer in time or make sense, or
    /// it exited.
    #[error("{0}")]
    Plugin(String),
    /// A /proc file did not have the expected format.
    #[error("{0}")]
    Proc(String),
    /// A file krgd would trust as root (the plug-in registry, a plug-in
    /// executable, a directory on their path) can be changed by another
    /// user, or a mount point is not one to cover.
    #[error("{0}")]
    Untrusted(String),
}

impl Error {
    /// An [`Error::Io`] saying what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// The errno a file system call answers for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound(_) => libc::ENOENT,
            Error::Invalid(_) => libc::EINVAL,
            Error::NotPermitted(_) => libc::EPERM,
            Error::Busy(_) => libc::EBUSY,
            Error::Exists(_) => libc::EEXIST,
            Error::NotEmpty(_) => libc::ENOTEMPTY,
            Error::Io { .. } | Error::Plugin(_) | Error::Proc(_) => libc::EIO,
            Error::Untrusted(_) => libc::EACCES,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
