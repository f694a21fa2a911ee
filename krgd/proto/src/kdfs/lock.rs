//! Cluster-wide lock requests and holders (fcntl and flock).

use serde::{Deserialize, Serialize};

/// What a byte-range lock request asks for (fcntl `l_type`; flock(2) locks
/// travel as whole-file locks of their open file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    /// A shared (read) lock: `F_RDLCK`, `LOCK_SH`.
    Read,
    /// An exclusive (write) lock: `F_WRLCK`, `LOCK_EX`.
    Write,
    /// Release the range: `F_UNLCK`, `LOCK_UN`.
    Unlock,
}

/// A lock request's or a lock's parties and range. `client` names one
/// mount (a random number the client draws at start); `owner` is the
/// kernel's lock owner within it (a process's file table for fcntl locks,
/// an open file for flock locks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockSpec {
    /// The mount asking.
    pub client: u64,
    /// The kernel's lock owner in that mount.
    pub owner: u64,
    /// First byte of the range.
    pub start: u64,
    /// Last byte of the range (inclusive; `i64::MAX as u64`: to the end).
    pub end: u64,
    /// What is asked.
    pub kind: LockKind,
    /// The asking process, as its mount's kernel numbers it (for F_GETLK).
    pub pid: u32,
}

/// A lock that conflicts, as `F_GETLK` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// First byte of the held range.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
    /// `Read` or `Write`.
    pub kind: LockKind,
    /// The holder's pid in its own mount's kernel.
    pub pid: u32,
    /// The mount holding it (to tell a local holder from a remote one).
    pub client: u64,
}
