//! Extended attributes and POSIX ACLs of kDFS inodes.
//!
//! The names and values come from any user of any node: hostile input. They
//! are kept on the inode's object in the owner's store, each under
//! `trusted.kdfsx.<name>`: the local file system then gives them no meaning
//! of its own (a `security.` or `system.posix_acl_` attribute stored under
//! its own name would be read by the local kernel, and `user.` attributes
//! are refused on symlinks and device nodes there), they cannot collide
//! with the store's own `trusted.kdfs.` counts, and listing shows only
//! them. Only the namespaces Linux gives meaning to are accepted: `user.`,
//! `trusted.`, `security.` and the two ACL names (the kernel checks who may
//! touch which before the request is sent). The object is named by the
//! inode number, never by anything the caller gave.

use std::ffi::{CString, OsStr};
use std::io;

use krg_proto::kdfs::{InodeId, SetAttr};

use super::error::{Res, StoreError};
use super::{sys, Store};
use crate::acl::{ACCESS as ACL_ACCESS, DEFAULT as ACL_DEFAULT};

/// Where client attributes live on an object.
const PREFIX: &[u8] = b"trusted.kdfsx.";
/// Longest attribute name the local file system takes (XATTR_NAME_MAX).
const NAME_MAX: usize = 255;
/// Largest value (XATTR_SIZE_MAX).
pub const VALUE_MAX: usize = 65536;

fn errno(e: i32) -> StoreError {
    StoreError::Io(io::Error::from_raw_os_error(e))
}

/// Where an inode's access ACL is kept on its object.
pub(super) fn access_acl_key() -> Res<CString> {
    stored(ACL_ACCESS)
}

/// The local name of client attribute `name`, refused unless it is one a
/// Linux file system keeps.
fn stored(name: &[u8]) -> Res<CString> {
    let known = [&b"user."[..], b"trusted.", b"security."]
        .iter()
        .any(|ns| name.len() > ns.len() && name.starts_with(ns))
        || name == ACL_ACCESS
        || name == ACL_DEFAULT;
    if !known {
        return Err(StoreError::NotSupported);
    }
    if PREFIX.len() + name.len() > NAME_MAX {
        return Err(errno(libc::ERANGE));
    }
    CString::new([PREFIX, name].concat()).map_err(|_| StoreError::BadName)
}

impl Store {
    pub(super) fn get_xattr(&self, ino: InodeId, name: &[u8]) -> Res<Vec<u8>> {
        let key = stored(name)?;
        let obj = self.objects.name(ino)?;
        Ok(sys::get_xattr(self.objects.fd(), OsStr::new(&obj), &key)?)
    }

    pub(super) fn list_xattr(&self, ino: InodeId) -> Res<Vec<Vec<u8>>> {
        let obj = self.objects.name(ino)?;
        let all = sys::list_xattr(self.objects.fd(), OsStr::new(&obj))?;
        Ok(all
            .split(|b| *b == 0)
            .filter_map(|n| n.strip_prefix(PREFIX))
            .filter(|n| !n.is_empty())
            .map(<[u8]>::to_vec)
            .collect())
    }

    pub(super) fn set_xattr(&self, ino: InodeId, name: &[u8], value: &[u8], flags: i32) -> Res<()> {
        let key = stored(name)?;
        if flags & !(libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
            return Err(StoreError::Invalid("unknown setxattr flags"));
        }
        if value.len() > VALUE_MAX {
            return Err(errno(libc::E2BIG));
        }
        let perm = if name == ACL_ACCESS {
            Some(crate::acl::equiv_mode(value).ok_or(StoreError::Invalid("malformed POSIX ACL"))?)
        } else {
            None
        };
        let obj = self.objects.name(ino)?;
        let _g = self.stripes.lock(ino);
        match perm {
            // An ACL the mode says all of is kept as the mode alone, as a
            // local file system does (`setfacl -b`).
            Some((_, true)) if flags & libc::XATTR_CREATE == 0 => {
                match sys::remove_xattr(self.objects.fd(), OsStr::new(&obj), &key) {
                    Err(e) if e.raw_os_error() != Some(libc::ENODATA) => return Err(e.into()),
                    _ => {}
                }
            }
            _ => sys::set_xattr(self.objects.fd(), OsStr::new(&obj), &key, value, flags)?,
        }
        // Setting an access ACL sets the permission bits it implies (the
        // kernel leaves that to the file system), keeping set-id and sticky.
        if let Some((perm, _)) = perm {
            let keep = u32::from(self.getattr(ino)?.perm) & 0o7000;
            let set = SetAttr {
                mode: Some(keep | perm),
                ..SetAttr::default()
            };
            self.objects.setattr(ino, &set)?;
        }
        Ok(())
    }

    pub(super) fn remove_xattr(&self, ino: InodeId, name: &[u8]) -> Res<()> {
        let key = stored(name)?;
        let obj = self.objects.name(ino)?;
        Ok(sys::remove_xattr(
            self.objects.fd(),
            OsStr::new(&obj),
            &key,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_namespaces_and_lengths_the_local_fs_takes() {
        assert_eq!(
            stored(b"user.a").unwrap().as_bytes(),
            b"trusted.kdfsx.user.a"
        );
        assert!(stored(ACL_DEFAULT).is_ok());
        for bad in [&b"system.other"[..], b"os2.x", b"user.", b"", b"kdfs.nlink"] {
            assert_eq!(
                stored(bad).unwrap_err().errno(),
                libc::EOPNOTSUPP,
                "{bad:?}"
            );
        }
        let long = [b"user.".as_slice(), &[b'a'; 250]].concat();
        assert_eq!(stored(&long).unwrap_err().errno(), libc::ERANGE);
        assert_eq!(stored(b"user.a\0b").unwrap_err().errno(), libc::EINVAL);
    }
}
