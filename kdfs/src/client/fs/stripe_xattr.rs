//! `kdfs.stripe`, the virtual extended attribute that shows and sets
//! striping (as CephFS does with `ceph.dir.layout`): on a directory, its
//! policy (`4M:4`; set by root or the directory's owner, `off` or removing
//! the attribute clears it); on a file, its layout (`4M:3 on nodes 1,2,3`,
//! read-only: a layout is given when the file is made). It is not listed,
//! so `cp -a` and `rsync -X` do not copy it. `kdfsctl stripe` uses it.

use fuser::{ReplyEmpty, ReplyXattr};
use krg_proto::kdfs::StripePolicy;
use krg_proto::kdfs::{inode_node, FileKind, InodeId, KdfsRequest as Q, KdfsResponse as A};

use super::super::convert::err;
use super::KdfsFs;

/// The attribute's name.
pub const STRIPE_XATTR: &[u8] = b"kdfs.stripe";

/// A value of `kdfs.stripe` set on a directory: a policy, or `None` to clear it.
fn parse_policy(value: &[u8]) -> Result<Option<StripePolicy>, i32> {
    let text = std::str::from_utf8(value).map_err(|_| libc::EINVAL)?;
    let text = text.trim_end_matches(['\n', '\0']).trim();
    if matches!(text, "off" | "none" | "") {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| libc::EINVAL)
}

impl KdfsFs {
    pub(super) fn get_stripe_xattr(&self, ino: InodeId, size: u32, reply: ReplyXattr) {
        let ops = self.ops.clone();
        self.spawn(async move {
            let text = match ops.call(inode_node(ino), Q::GetStripe { ino }).await {
                Ok(A::Stripe {
                    policy: Some(p), ..
                }) => p.to_string(),
                Ok(A::Stripe {
                    layout: Some(l), ..
                }) => l.to_string(),
                Ok(A::Stripe { .. }) => return reply.error(err(libc::ENODATA)),
                Ok(_) => return reply.error(err(libc::EIO)),
                Err(e) => return reply.error(err(e)),
            };
            super::xattr::answer(reply, size, text.as_bytes());
        });
    }

    /// Set (`Some`) or clear (`None`: removexattr) the policy of directory `ino`.
    pub(super) fn set_stripe_xattr(
        &self,
        uid: u32,
        ino: InodeId,
        value: Option<&[u8]>,
        reply: ReplyEmpty,
    ) {
        let policy = match value.map(parse_policy).transpose() {
            Ok(p) => p.flatten(),
            Err(e) => return reply.error(err(e)),
        };
        let ops = self.ops.clone();
        self.reply_empty(reply, async move {
            let attr = ops.getattr(ino).await?;
            if attr.kind != FileKind::Dir {
                return Err(libc::ENOTDIR);
            }
            if uid != 0 && uid != attr.uid {
                return Err(libc::EPERM);
            }
            let q = Q::SetStripePolicy { dir: ino, policy };
            ops.call(inode_node(ino), q).await.map(|_| ())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_value_is_read_as_setfattr_and_echo_write_it() {
        let p = parse_policy(b"4M:4\n").unwrap().unwrap();
        assert_eq!((p.unit, p.count), (4 << 20, 4));
        assert_eq!(parse_policy(b"off").unwrap(), None);
        assert_eq!(parse_policy(b"4M:1"), Err(libc::EINVAL));
        assert_eq!(parse_policy(b"\xff"), Err(libc::EINVAL));
    }
}
