//! getxattr and listxattr replies: the size the caller asked decides
//! between answering the length (0), ERANGE (too small) and the bytes.

use fuser::ReplyXattr;
use krg_proto::kdfs::{inode_node, KdfsRequest as Q, KdfsResponse as A};

use super::super::convert::err;
use super::KdfsFs;

/// What a getxattr/listxattr of `size` bytes answers for `bytes`.
fn answer(reply: ReplyXattr, size: u32, bytes: &[u8]) {
    match u32::try_from(bytes.len()) {
        Err(_) => reply.error(err(libc::E2BIG)),
        Ok(len) if size == 0 => reply.size(len),
        Ok(len) if len > size => reply.error(err(libc::ERANGE)),
        Ok(_) => reply.data(bytes),
    }
}

impl KdfsFs {
    /// `q` is a `GetXattr` or a `ListXattr` (answered from the local view
    /// for this node's inodes: the kernel asks `security.capability` at
    /// every write).
    pub(super) fn do_getxattr(&self, q: Q, size: u32, reply: ReplyXattr) {
        let ino = match &q {
            Q::GetXattr { ino, .. } | Q::ListXattr { ino } => *ino,
            _ => return reply.error(err(libc::EINVAL)),
        };
        let ops = self.ops.clone();
        self.spawn(async move {
            match ops.call(inode_node(ino), q).await {
                Ok(A::Xattr(v)) => answer(reply, size, &v.0),
                Ok(A::XattrNames(names)) => {
                    let list: Vec<u8> = names
                        .iter()
                        .flat_map(|n| n.iter().copied().chain([0]))
                        .collect();
                    answer(reply, size, &list)
                }
                Ok(_) => reply.error(err(libc::EIO)),
                Err(e) => reply.error(err(e)),
            }
        });
    }
}
