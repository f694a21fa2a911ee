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

use crate::checked_dir::CheckedDir;
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

/// The parts' copies of the application directory `app_dir`: each
/// node, the part's PID there, and the SNs its copy holds (ascending);
/// nothing when it has none.
pub fn copies(app_dir: &Path) -> Vec<(u32, i32, Vec<u32>)> {
    let numbered = |d: &CheckedDir| -> Vec<String> {
        let mut names: Vec<String> = d
            .entries()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| n.into_string().ok())
            .filter(|n| n.parse::<i64>().is_ok())
            .collect();
        names.sort_by_key(|n| n.parse::<i64>().unwrap_or(0));
        names
    };
    let Ok(parts) = CheckedDir::open(&app_dir.join(PARTS_DIR)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for node in numbered(&parts) {
        let Ok(of_node) = parts.open_dir(&node) else {
            continue;
        };
        for pid in numbered(&of_node) {
            let Ok(copy) = of_node.open_dir(&pid) else {
                continue;
            };
            if let (Ok(n), Ok(p)) = (node.parse(), pid.parse()) {
                out.push((n, p, store::committed_sns(&copy)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
