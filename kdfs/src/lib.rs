//! kDFS: one namespace over every node's local directory.
//!
//! * [`format`]: the on-disk superblock and root meta-file (`mkfs.kdfs`).
//! * [`fsck`]: offline check and repair of stores (`fsck.kdfs`).
//! * [`store`]: the storage engine a krgd runs against its local directory.
//! * [`lockmgr`]: cluster-wide fcntl/flock locks of the files a krgd owns.
//! * [`client`]: the FUSE client behind `mount.kdfs`.
//!
//! The design (placement, consistency, faults) is written down in docs/kdfs.md.

pub mod client;
pub mod error;
pub mod format;
pub mod fsck;
pub mod lockmgr;
pub mod store;

pub use error::KdfsError;
