//! `kdfs.replicas` and `kdfs.replicas.new`, the virtual extended
//! attributes that show and set how many nodes keep an inode (see
//! `store::replicas`): `kdfs.replicas` is the inode's count (`2`),
//! `kdfs.replicas.new` a directory's policy, the count the inodes made in
//! it get (absent: the file system's; removing it, or `off`, clears it).
//! Root or the inode's owner may set them, to 1 to 3 copies, on a
//! mirrored file system only (a single-copy one is converted first:
//! `kdfsctl replicas 2`). Not listed, so `cp -a` and `rsync -X` do not
//! copy them. `kdfsctl replicas N DIR` uses them.

use fuser::{ReplyEmpty, ReplyXattr};
use krg_proto::kdfs::{inode_node, FileKind, InodeId, KdfsRequest as Q, KdfsResponse as A};

use super::super::convert::err;
use super::KdfsFs;
use crate::format::MAX_REPLICAS;

/// An inode's count.
pub const REPLICAS_XATTR: &[u8] = b"kdfs.replicas";
/// A directory's policy.
pub const POLICY_XATTR: &[u8] = b"kdfs.replicas.new";

/// Which of the two attributes `name` is, if either.
pub fn which(name: &[u8]) -> Option<bool> {
    match name {
        REPLICAS_XATTR => Some(false),
        POLICY_XATTR => Some(true),
        _ => None,
    }
}

/// A count as `setfattr` and `echo` write it; `None`: `off` (a policy
/// cleared).
fn parse_count(value: &[u8]) -> Result<Option<u8>, i32> {
    let text = std::str::from_utf8(value).map_err(|_| libc::EINVAL)?;
    let text = text.trim_end_matches(['\n', '\0']).trim();
    if matches!(text, "off" | "none" | "") {
        return Ok(None);
    }
    match text.parse::<u8>() {
        Ok(n) if (1..=MAX_REPLICAS).contains(&n) => Ok(Some(n)),
        _ => Err(libc::EINVAL),
    }
}

impl KdfsFs {
    /// Read the count (`policy`: the directory's policy) of `ino`.
    pub(super) fn get_replicas_xattr(
        &self,
        ino: InodeId,
        policy: bool,
        size: u32,
        reply: ReplyXattr,
    ) {
        let ops = self.ops.clone();
        self.spawn(async move {
            let text = match ops.call(inode_node(ino), Q::GetReplicas { ino }).await {
                Ok(A::Replicas { own, .. }) if !policy => own.to_string(),
                Ok(A::Replicas {
                    policy: Some(n), ..
                }) => n.to_string(),
                Ok(A::Replicas { .. }) => return reply.error(err(libc::ENODATA)),
                Ok(_) => return reply.error(err(libc::EIO)),
                Err(e) => return reply.error(err(e)),
            };
            super::xattr::answer(reply, size, text.as_bytes());
        });
    }

    /// Set the count of `ino` or (`policy`) a directory's policy; `None`
    /// (removexattr) clears a policy.
    pub(super) fn set_replicas_xattr(
        &self,
        uid: u32,
        ino: InodeId,
        policy: bool,
        value: Option<&[u8]>,
        reply: ReplyEmpty,
    ) {
        let count = match value.map(parse_count).transpose() {
            Ok(n) => n.flatten(),
            Err(e) => return reply.error(err(e)),
        };
        if count.is_none() && !policy {
            // (an inode always has a count)
            return reply.error(err(libc::EINVAL));
        }
        let ops = self.ops.clone();
        self.reply_empty(reply, async move {
            let attr = ops.getattr(ino).await?;
            if policy && attr.kind != FileKind::Dir {
                return Err(libc::ENOTDIR);
            }
            if uid != 0 && uid != attr.uid {
                return Err(libc::EPERM);
            }
            let q = Q::SetInodeReplicas {
                ino,
                own: count.filter(|_| !policy),
                policy: policy.then_some(count),
            };
            ops.call(inode_node(ino), q).await.map(|_| ())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_is_read_as_setfattr_and_echo_write_it() {
        assert_eq!(parse_count(b"3\n"), Ok(Some(3)));
        assert_eq!(parse_count(b"off"), Ok(None));
        for bad in [&b"0"[..], b"4", b"two", b"\xff", b"-1"] {
            assert_eq!(parse_count(bad), Err(libc::EINVAL), "{bad:?}");
        }
    }
}
