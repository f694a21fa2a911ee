//! A new inode's permissions when the kernel enforces POSIX ACLs (the
//! mount asks for FUSE_POSIX_ACL and FUSE_DONT_MASK): the kernel then
//! sends the mode as the program asked it, with its umask beside it, and
//! leaves to the file system what a local one does in
//! `posix_acl_create`. In a directory with a default ACL the new inode
//! takes it (masked by the mode asked, the umask ignored) as its access
//! ACL, and a new directory also as its own default ACL; elsewhere the
//! umask applies. Rules in [`crate::acl`].

use krg_proto::kdfs::{
    inode_node, Bytes, FileKind, InodeId, KdfsRequest as Q, KdfsResponse as A, NewInode,
};

use super::ops::{Ops, Res};
use crate::acl::{ACCESS as ACL_ACCESS, DEFAULT as ACL_DEFAULT};

/// What a new inode takes from its directory's default ACL, once made.
#[derive(Default)]
pub struct Inherited {
    /// Its access ACL (`None`: its mode says it all).
    access: Option<Vec<u8>>,
    /// A new directory's own default ACL.
    default: Option<Vec<u8>>,
}

impl Ops {
    /// Before `new` is made in `dir`: its mode from `dir`'s default ACL,
    /// or from `umask` when `dir` has none; what to set on it once made
    /// ([`Ops::set_inherited`]).
    pub async fn inherit(&self, dir: InodeId, new: &mut NewInode, umask: u32) -> Res<Inherited> {
        if new.kind == FileKind::Symlink {
            return Ok(Inherited::default());
        }
        let get = Q::GetXattr {
            ino: dir,
            name: ACL_DEFAULT.to_vec(),
        };
        let default = match self.call(inode_node(dir), get).await {
            Ok(A::Xattr(v)) => v.0.to_vec(),
            Err(libc::ENODATA) | Err(libc::EOPNOTSUPP) => {
                new.perm &= !(umask as u16);
                return Ok(Inherited::default());
            }
            Ok(_) => return Err(libc::EIO),
            Err(e) => return Err(e),
        };
        let (access, mode) = crate::acl::inherit(&default, u32::from(new.perm)).ok_or(libc::EIO)?;
        new.perm = mode as u16;
        Ok(Inherited {
            access,
            default: (new.kind == FileKind::Dir).then_some(default),
        })
    }

    /// Set on the new inode `ino` what it inherited. A failure leaves it
    /// with the mode it was made with, which grants no more than the ACL
    /// would: logged, not an error of the create.
    pub async fn set_inherited(&self, ino: InodeId, inherited: Inherited) {
        let sets = [
            (ACL_ACCESS, inherited.access),
            (ACL_DEFAULT, inherited.default),
        ];
        for (name, value) in sets {
            let Some(value) = value else { continue };
            let q = Q::SetXattr {
                ino,
                name: name.to_vec(),
                value: Bytes(value.into()),
                flags: 0,
            };
            if let Err(e) = self.simple(inode_node(ino), q).await {
                tracing::warn!(
                    ino,
                    errno = e,
                    "kdfs: a new inode did not get its directory's default ACL"
                );
            }
        }
    }
}
