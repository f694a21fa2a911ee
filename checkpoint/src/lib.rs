//! Checkpoint/restart of real Linux processes.
//!
//! [`dump::checkpoint`] freezes a process tree with ptrace, reads its state
//! from /proc and by injected system calls, and writes one SN of image files
//! ([`image`] is the whole on-disk format; [`describe`] decodes it for
//! people); [`restore::restart`] brings it back with the same PIDs.
//! [`store`] is the checkpoint directory (SNs, lock, atomic commit), done
//! through [`checked_dir`] descriptors because users own it; [`chain`]
//! removes an SN of a chain of incremental ones. [`captrack`]
//! follows the CHECKPOINTABLE capability across forks (used by krgd),
//! woken only by the events it needs through `connfilter`;
//! [`capclient`] asks krgd about it. [`standin`] turns a process that
//! moved into its stand-in on the node it left. [`nodepid`] is the
//! `[NODE:]PID` of the command lines. [`ownproc`] gives a krg job a
//! `/proc` of its own.
//!
//! Used by both sides: [`ptrace`] (seizing, registers, injected system
//! calls) and [`procfs`] (parsers of /proc files); [`timings`] (where the
//! time of a checkpoint or a restart goes, phase by phase); `ranges`
//! (address-range arithmetic); [`prealloc`] (blocks reserved before image
//! data is written); [`sockopts`] (the socket options carried
//! over); `netlock` (the
//! nftables rules that hold a TCP connection still between `checkpoint
//! --kill` and `restart`).

pub mod capclient;
pub mod captrack;
pub mod chain;
pub mod checked_dir;
mod connfilter;
pub mod describe;
mod diag;
pub mod dump;
pub mod error;
pub mod image;
mod ipc;
mod netlock;
pub mod nodepid;
pub mod ownproc;
pub mod partcopy;
pub mod prealloc;
pub mod procfs;
mod ptrace;
mod ranges;
pub mod restore;
pub mod sockopts;
pub mod standin;
pub mod store;
pub mod timings;
pub mod uffd;

pub use error::{ChkptError, Result};
