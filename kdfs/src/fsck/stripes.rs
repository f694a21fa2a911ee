//! Striped files in fsck: the holders a striped file's layout names (read
//! with its object), the copies `DIR/stripes/` holds of other nodes'
//! striped files, and — with every store — the copies whose file is gone
//! (its owner's krgd could not reach this node to drop them). Such a copy
//! can be proved useless (inode numbers are never reused: no file will
//! ever read it), so its repair removes it.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use krg_proto::kdfs::{inode_local, inode_node, InodeId, StripeLayout};
use krg_proto::NodeId;
use nix::errno::Errno;

use super::scan::{Model, Scanned};
use super::{Finding, Fix, Problem};
use crate::format::{self, StoreDir, STRIPES};
use crate::store::{sys, LAYOUT_XATTR};

/// The nodes holding units of object `name` of `inodes/` (empty: not a
/// striped file, or a layout that cannot be read — the store answers EIO
/// on it, and its copies elsewhere are then kept).
pub fn holders(inodes: BorrowedFd, name: &OsStr) -> Vec<NodeId> {
    let Ok(key) = CString::new(LAYOUT_XATTR) else {
        return Vec::new();
    };
    sys::get_xattr(inodes, name, &key)
        .ok()
        .and_then(|v| postcard::from_bytes::<StripeLayout>(&v).ok())
        .map(|l| l.nodes)
        .unwrap_or_default()
}

/// `DIR/stripes` (none before the store was first attached) and its names.
pub fn scan_copies(top: &StoreDir) -> Result<(Option<OwnedFd>, Vec<OsString>), String> {
    let shown = top.path().join(STRIPES);
    let fd = match format::open_dir_at(top.fd(), STRIPES, &shown) {
        Ok(fd) => fd,
        Err(crate::KdfsError::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {
            return Ok((None, Vec::new()))
        }
        Err(e) => return Err(e.to_string()),
    };
    let names = super::scan::list(fd.as_fd()).map_err(|e: Errno| e.to_string())?;
    Ok((Some(fd), names))
}

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
