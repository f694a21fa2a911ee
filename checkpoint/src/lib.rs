//! Checkpoint/restart of real Linux processes.
//!
//! [`dump::checkpoint`] freezes a process tree with ptrace, reads its state
//! from /proc and by injected system calls, and writes one SN of image files;
//! [`restore::restart`] brings it back with the same PIDs. [`captrack`]
//! follows the CHECKPOINTABLE capability across forks (used by krgd).

pub mod capclient;
pub mod captrack;
pub mod checked_dir;
pub mod describe;
pub mod dump;
pub mod error;
pub mod image;
pub mod image_owner;
pub mod inspect_task;
pub mod mmdump;
pub mod procfs;
pub mod ptrace;
pub mod restore;
pub mod restore_fds;
pub mod restore_mm;
pub mod restore_sig;
pub mod store;
pub mod sysvipc;
pub mod sysvshm;

pub use error::{ChkptError, Result};
