//! The parts of an application over several nodes, copied into its
//! directory.
//!
//! A process of the application that had moved to another node is saved
//! by that node, in that node's store (`/var/chkpt/<its PID there>/`, see
//! docs/checkpoint.md, An application over several nodes). `checkpoint`
//! then copies that SN (with the SNs of its chain the copy lacks) into the
//! application's own directory, as LinuxSSI kept every node's file of an
//! application in one place:
//!
//! ```text
//! /var/chkpt/<app>/parts/<NODE>/<PID>/   a checkpoint directory of its own:
//!                                        the part's SNs, as its node saved them
//! ```
//!
//! so that the part outlives its node's store: `restart` runs a part whose
//! node is not online from its copy, on the node restart runs on.
//!
//! - [`serve`]: on the node that saved the part, its files as its owner
//!   (or root) may read them;
//! - [`copy`]: on the application's node, the copy written, SN by SN,
//!   through the store's staging and commit.

pub mod copy;
pub mod serve;

use std::path::{Path, PathBuf};

use crate::store;

/// The subdirectory of an application directory that holds its parts'
/// copies.
pub const PARTS_DIR: &str = "parts";

/// The checkpoint root of the copies of the parts node `node` saved for
/// the application whose directory is `app_dir`: the copy of its part
/// `PID` is `<root>/<PID>`, a checkpoint directory as any other.
pub fn copies_of(app_dir: &Path, node: u32) -> PathBuf {
    app_dir.join(PARTS_DIR).join(node.to_string())
}

/// Is `name` a file of SN `sn` that may be copied: a plain name (no
/// slash, not hidden — the lock and tombstones are not the SN's).
pub fn is_file_of(name: &str, sn: u32) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains('/')
        && store::sn_of(name) == Some(sn)
}

#[cfg(test)]
mod tests;
