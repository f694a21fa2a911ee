//! Striped files in fsck: with every store, the copies `DIR/stripes/`
//! holds of other nodes' striped files whose file is gone
//! (its owner's krgd could not reach this node to drop them). Such a copy
//! can be proved useless (inode numbers are never reused: no file will
//! ever read it), so its repair removes it.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};

use krg_proto::kdfs::{inode_local, inode_node, InodeId};
use krg_proto::NodeId;

use super::scan::{Model, Scanned};
use super::{Finding, Fix, Problem};
use crate::format::STRIPES;

/// The inode id a copy's name stands for (16 lowercase hex digits).
fn copy_ino(name: &OsStr) -> Option<InodeId> {
    let s = name.to_str()?;
    let ino = u64::from_str_radix(s, 16).ok()?;
    (s.len() == 16 && format!("{ino:016x}") == s).then_some(ino)
}

/// Whether `owner` has the striped file `ino` with `node` among its holders.
fn still_held(owner: &Model, ino: InodeId, node: NodeId) -> bool {
    owner
        .objects
        .get(&inode_local(ino))
        .is_some_and(|o| o.holders.contains(&node))
}

/// The findings about store `i`'s copies: names that are no copy; and,
/// with every store, copies of files that are gone.
pub fn check(stores: &[Scanned], complete: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        for name in &s.copies {
            let shown = s.path().join(STRIPES).join(name);
            let Some(ino) = copy_ino(name) else {
                out.push(Finding {
                    store: i,
                    problem: Problem::Stray,
                    message: format!("{}: not a copy kDFS makes", shown.display()),
                    fix: Fix::None,
                });
                continue;
            };
            let owner = stores.iter().find(|o| o.node() == inode_node(ino));
            let Some(owner) = owner.filter(|_| complete) else {
                continue;
            };
            if !still_held(owner, ino, s.node()) {
                out.push(Finding {
                    store: i,
                    problem: Problem::OrphanCopy,
                    message: format!(
                        "{}: units of striped file {ino:x} of node {}, which no longer has it here",
                        shown.display(),
                        inode_node(ino)
                    ),
                    fix: Fix::RemoveCopy(name.clone()),
                });
            }
        }
    }
    out
}

/// Remove copy `name` of `DIR/stripes` (the repair of an orphan copy).
pub fn remove(stripes: Option<&OwnedFd>, name: &OsStr) -> Result<String, String> {
    let fd = stripes.ok_or("no stripes directory")?;
    nix::unistd::unlinkat(fd.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir)
        .map_err(|e| e.to_string())?;
    Ok("removed".into())
}

#[cfg(test)]
mod tests {
    use super::copy_ino;
    use std::ffi::OsStr;

    #[test]
    fn copies_are_named_by_their_inode_id_in_16_hex_digits() {
        assert_eq!(
            copy_ino(OsStr::new("00020000000000a3")),
            Some(0x2_0000_0000_00a3)
        );
        for bad in [
            "a3",
            "00020000000000A3",
            "0002000000000000a3",
            "x002000000000000",
        ] {
            assert_eq!(copy_ino(OsStr::new(bad)), None, "{bad}");
        }
    }
}
