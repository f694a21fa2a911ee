//! The store's one error vocabulary.
//!
//! Inside the store every failure is a [`StoreError`]: the store names what
//! went wrong (a taken name, a non-empty directory, a damaged entry), or
//! carries the local file system's own error. [`StoreError::errno`] is the
//! one place that turns it into the errno the wire (`KdfsResponse::Errno`)
//! and the FUSE client answer with, as `plugpropol/src/error.rs` does for the
//! scheduler tree.

use std::ffi::OsStr;
use std::io;

use krg_proto::kdfs::InodeId;

use crate::KdfsError;

pub type Res<T> = Result<T, StoreError>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such entry, inode or handle-less object (ENOENT).
    #[error("no such entry")]
    NotFound,
    /// The name is taken (EEXIST).
    #[error("name already taken")]
    Exists,
    /// A directory was required (ENOTDIR).
    #[error("not a directory")]
    NotDir,
    /// A non-directory was required (EISDIR).
    #[error("is a directory")]
    IsDir,
    /// Empty, `.`, `..`, or holding `/` or NUL (EINVAL).
    #[error("invalid name")]
    BadName,
    /// Longer than the local file system allows (ENAMETOOLONG).
    #[error("name longer than 255 bytes")]
    NameTooLong,
    /// The inode belongs to another node's store (EXDEV).
    #[error("inode {0:x} is not kept on this node")]
    NotHere(InodeId),
    /// The root directory cannot be removed (EBUSY).
    #[error("the root directory cannot be removed")]
    Busy,
    /// Link counts of directories are not changed by request (EPERM).
    #[error("operation not permitted on a directory")]
    NotPermitted,
    /// Symlinks have no mode of their own (EOPNOTSUPP).
    #[error("not supported on a symlink")]
    NotSupported,
    /// No open handle of that number, or not of that kind (EBADF).
    #[error("no such handle")]
    BadHandle,
    /// This node's units of a striped file went to another holder
    /// (ESTALE: the client asks the owner for the layout again).
    #[error("the units of striped file {0:x} moved to another node")]
    Moved(InodeId),
    /// A layout is not the one the request expects (EAGAIN).
    #[error("the layout of inode {0:x} changed meanwhile")]
    LayoutChanged(InodeId),
    /// A request the store cannot carry out as asked (EINVAL).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// On-disk state the store did not write or no longer trusts (EIO).
    #[error("damaged store: {0}")]
    Damaged(String),
    /// A meta-file (the inode counter) could not be written (EIO).
    #[error(transparent)]
    Meta(#[from] KdfsError),
    /// The local file system's own error, errno kept (EIO if it has none).
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl StoreError {
    /// Entry `name` of directory `dir` is not one the store wrote (or names
    /// something other than what it says). Logged here, so that every
    /// refusal leaves a trace; the caller refuses it (EIO), never follows it
    /// and never removes it.
    pub fn forged(dir: InodeId, name: &OsStr, why: impl std::fmt::Display) -> Self {
        let name = name.to_string_lossy();
        tracing::warn!(dir = %format!("{dir:x}"), %name, "kdfs: refusing a directory entry the store did not write: {why}");
        StoreError::Damaged(format!("entry {name:?} of directory {dir:x}: {why}"))
    }

    /// The errno a file system call answers for this error.
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::NotFound => libc::ENOENT,
            StoreError::Exists => libc::EEXIST,
            StoreError::NotDir => libc::ENOTDIR,
            StoreError::IsDir => libc::EISDIR,
            StoreError::BadName => libc::EINVAL,
            StoreError::NameTooLong => libc::ENAMETOOLONG,
            StoreError::NotHere(_) => libc::EXDEV,
            StoreError::Busy => libc::EBUSY,
            StoreError::NotPermitted => libc::EPERM,
            StoreError::NotSupported => libc::EOPNOTSUPP,
            StoreError::BadHandle => libc::EBADF,
            StoreError::Moved(_) => libc::ESTALE,
            StoreError::LayoutChanged(_) => libc::EAGAIN,
            StoreError::Invalid(_) => libc::EINVAL,
            StoreError::Damaged(_) | StoreError::Meta(_) => libc::EIO,
            StoreError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl From<nix::errno::Errno> for StoreError {
    fn from(e: nix::errno::Errno) -> Self {
        StoreError::Io(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_errors_keep_their_errno_and_the_rest_map_once() {
        let e = StoreError::from(io::Error::from_raw_os_error(libc::ENOTEMPTY));
        assert_eq!(e.errno(), libc::ENOTEMPTY);
        assert_eq!(
            StoreError::from(nix::errno::Errno::ELOOP).errno(),
            libc::ELOOP
        );
        let e = StoreError::from(io::Error::other("no errno"));
        assert_eq!(e.errno(), libc::EIO);
        assert_eq!(StoreError::Damaged("x".into()).errno(), libc::EIO);
        assert_eq!(StoreError::NotHere(1).errno(), libc::EXDEV);
    }
}
