//! Carrying out the repairs of the findings (`fsck.kdfs -y`), entries
//! first and counts last, all relative to the descriptors the scan opened
//! (nothing followed), then one `syncfs` so that they are durable.
//!
//! Nothing that could still hold wanted data is deleted: it goes to
//! `DIR/lost+found/` (root's, 0700, beside `inodes/`, where krgd never
//! looks), objects under their own name, entries under
//! `entries-<directory id>/`.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use krg_proto::kdfs::{inode_local, InodeId};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, Mode};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};

use super::scan::{Live, Scanned};
use super::{Finding, Fix};
use crate::format::RootMeta;
use crate::store::{object_name, sys, NLINK_XATTR, NSUB_XATTR};

pub const LOST_FOUND: &str = "lost+found";

/// Repair every finding; per finding, what was done or why not.
pub fn repair(stores: &[Scanned], findings: &[Finding]) -> Vec<Result<String, String>> {
    let mut order: Vec<usize> = (0..findings.len()).collect();
    order.sort_by_key(|&i| rank(&findings[i].fix));
    let mut done = vec![Err(String::new()); findings.len()];
    for i in order {
        let f = &findings[i];
        let s = &stores[f.store];
        done[i] = match &s.live {
            Some(live) => apply(s, live, &f.fix),
            None => Err("another node's store: repaired by fsck.kdfs there".into()),
        };
    }
    for live in stores.iter().filter_map(|s| s.live.as_ref()) {
        let _ = nix::unistd::syncfs(live.top.fd());
    }
    done
}

/// Names go before the counts that depend on them.
fn rank(f: &Fix) -> u8 {
    match f {
        Fix::MakePrivate => 0,
        Fix::RemoveTemp(_) => 1,
        Fix::EntryToLostFound(..) => 2,
        Fix::RemoveEntry(..) => 3,
        Fix::ObjectToLostFound(_) | Fix::RemoveCopy(_) => 4,
        Fix::SetNlink(..) | Fix::SetNsub(..) => 5,
        Fix::SetInoNext(_) | Fix::WriteRootMeta(_) => 6,
        Fix::None => 7,
    }
}

fn errno(e: Errno) -> String {
    std::io::Error::from(e).to_string()
}

fn apply(s: &Scanned, live: &Live, fix: &Fix) -> Result<String, String> {
    let inodes = live.inodes.as_fd();
    match fix {
        Fix::None => Err("fsck.kdfs cannot repair this".into()),
        Fix::MakePrivate => {
            for fd in [live.top.fd(), inodes] {
                fchown(fd, Some(Uid::from_raw(0)), Some(Gid::from_raw(0))).map_err(errno)?;
                fchmod(fd, Mode::from_bits_truncate(0o700)).map_err(errno)?;
            }
            Ok("made root's, mode 0700".into())
        }
        Fix::RemoveTemp(name) => {
            unlinkat(inodes, name.as_os_str(), UnlinkatFlags::NoRemoveDir).map_err(errno)?;
            Ok("removed".into())
        }
        Fix::ObjectToLostFound(name) => {
            let lf = lost_found(live)?;
            let to = move_to(inodes, name, lf.as_fd())?;
            Ok(format!(
                "moved to {}",
                s.path().join(LOST_FOUND).join(to).display()
            ))
        }
        Fix::EntryToLostFound(dir, name) => {
            let d = dir_object(live, *dir)?;
            let sub = format!("entries-{dir:x}");
            let lf = lost_found(live)?;
            let into = make_dir(lf.as_fd(), &sub)?;
            let to = move_to(d.as_fd(), name, into.as_fd())?;
            let shown = s.path().join(LOST_FOUND).join(sub).join(to);
            Ok(format!("moved to {}", shown.display()))
        }
        Fix::RemoveEntry(dir, name) => {
            let d = dir_object(live, *dir)?;
            unlinkat(d.as_fd(), name.as_os_str(), UnlinkatFlags::NoRemoveDir).map_err(errno)?;
            Ok("entry removed".into())
        }
        Fix::SetNlink(local, n) => set_count(inodes, *local, NLINK_XATTR, *n),
        Fix::SetNsub(local, n) => set_count(inodes, *local, NSUB_XATTR, *n),
        Fix::SetInoNext(n) => {
            live.top.write_ino_next(*n).map_err(|e| e.to_string())?;
            Ok(format!("next inode number set to {n:#x}"))
        }
        Fix::RemoveCopy(name) => super::stripes::remove(live.stripes.as_ref(), name),
        Fix::WriteRootMeta(root) => {
            let meta = RootMeta {
                fs_id: s.sb.fs_id,
                root: *root,
            };
            live.top.write_root_meta(&meta).map_err(|e| e.to_string())?;
            Ok(format!(
                "root meta-file rewritten (root directory {root:x})"
            ))
        }
    }
}

fn set_count(inodes: BorrowedFd, local: u64, key: &str, n: u64) -> Result<String, String> {
    let name = object_name(local);
    sys::set_u64_xattr(inodes, OsStr::new(&name), key, n).map_err(|e| e.to_string())?;
    Ok(format!("set to {n}"))
}

fn dir_object(live: &Live, dir: InodeId) -> Result<OwnedFd, String> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let name = object_name(inode_local(dir));
    openat(live.inodes.as_fd(), name.as_str(), flags, Mode::empty()).map_err(errno)
}

/// Directory `name` in `parent`, root's and 0700 whoever made it (what is
/// moved there keeps the data of files other users must not read).
fn make_dir(parent: BorrowedFd, name: &str) -> Result<OwnedFd, String> {
    match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(errno(e)),
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(parent, name, flags, Mode::empty()).map_err(errno)?;
    fchown(fd.as_fd(), Some(Uid::from_raw(0)), Some(Gid::from_raw(0))).map_err(errno)?;
    fchmod(fd.as_fd(), Mode::from_bits_truncate(0o700)).map_err(errno)?;
    Ok(fd)
}

fn lost_found(live: &Live) -> Result<OwnedFd, String> {
    make_dir(live.top.fd(), LOST_FOUND)
}

/// Move `name` from `from` into `to` under a name not taken there yet
/// (the same, or with `.1`, `.2`… appended, or a bare number when that
/// would be too long); the name it got.
fn move_to(from: BorrowedFd, name: &OsStr, to: BorrowedFd) -> Result<OsString, String> {
    let taken = |n: &OsStr| fstatat(to, n, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok();
    let mut target = name.to_os_string();
    let mut k = 0u32;
    while taken(&target) {
        k += 1;
        let mut t = name.as_bytes().to_vec();
        t.extend_from_slice(format!(".{k}").as_bytes());
        target = if t.len() <= 255 {
            OsStr::from_bytes(&t).to_os_string()
        } else {
            OsString::from(k.to_string())
        };
    }
    renameat(from, name, to, target.as_os_str()).map_err(errno)?;
    Ok(target)
}
