//! kDFS: one namespace over every node's local directory.
//!
//! * [`format`]: the on-disk superblock and root meta-file (`mkfs.kdfs`).
//! * [`fsck`]: offline check and repair of stores (`fsck.kdfs`).
//! * [`store`]: the storage engine a krgd runs against its local directory.
//! * [`callback`]: which mounts' kernels cache what of a krgd's store, and
//!   telling them of changes (coherent kernel caches); directories lent
//!   to a node's sole mount, and their recall.
//! * [`lockmgr`]: cluster-wide fcntl/flock locks of the files a krgd owns.
//! * [`client`]: the FUSE client behind `mount.kdfs`.
//! * [`status`]: what `kdfsctl status` asks the members and prints.
//! * [`mountinfo`]: this process's mount table, as the tools read it.
//! * [`stripectl`]: what `kdfsctl stripe` does to a path of a mount.
//! * [`replicasctl`]: what `kdfsctl replicas` does to the members' stores
//!   and to a path's tree.
//! * [`vattr`]: a mount's virtual attributes on a path, as the tools use
//!   them.
//!
//! The design (placement, consistency, faults) is written down in docs/kdfs.md.

pub mod acl;
pub mod callback;
pub mod client;
pub mod error;
pub mod format;
pub mod fsck;
pub mod lockmgr;
pub mod members;
pub mod mirror;
pub mod mountinfo;
pub mod replicasctl;
pub mod status;
pub mod store;
pub mod stripectl;
pub mod vattr;

pub use error::KdfsError;
