//! getxattr and listxattr replies: the size the caller asked decides
//! between answering the length (0), ERANGE (too small) and the bytes.
//!
//! The kernel asks `security.capability` before every write(2) (FUSE does
//! not let it remember that a file has none). This node's files answer
//! from the local view; for another node's file that would be a round trip
//! per write, so its absence is remembered for the attribute lifetime
//! (`attr_timeout`, the staleness docs/kdfs.md already allows for
//! attributes) and forgotten when this mount sets or removes an attribute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fuser::{ReplyEmpty, ReplyXattr};
use krg_proto::kdfs::{inode_node, InodeId, KdfsRequest as Q, KdfsResponse as A};

use super::super::convert::err;
use super::KdfsFs;

const CAPS: &[u8] = b"security.capability";
/// Entries kept before expired ones are swept.
const CAPS_SWEEP: usize = 4096;

/// Files known to have no `security.capability`, until when.
pub struct NoCaps {
    ttl: Duration,
    until: Mutex<HashMap<InodeId, Instant>>,
}

impl NoCaps {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            until: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<InodeId, Instant>> {
        self.until.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn known_absent(&self, ino: InodeId) -> bool {
        self.map().get(&ino).is_some_and(|t| Instant::now() < *t)
    }

    fn absent(&self, ino: InodeId) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut m = self.map();
        if m.len() >= CAPS_SWEEP {
            m.retain(|_, t| now < *t);
        }
        m.insert(ino, now + self.ttl);
    }

    pub fn forget(&self, ino: InodeId) {
        self.map().remove(&ino);
    }
}

/// What a getxattr/listxattr of `size` bytes answers for `bytes`.
pub(super) fn answer(reply: ReplyXattr, size: u32, bytes: &[u8]) {
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
    pub(super) fn do_getxattr(&self, q: Q, size: u32, hide_trusted: bool, reply: ReplyXattr) {
        if !self.xattr {
            // ENOSYS: the kernel stops asking for the whole mount.
            return reply.error(err(libc::ENOSYS));
        }
        let (ino, is_caps) = match &q {
            Q::GetXattr { ino, name } => (*ino, name == CAPS),
            Q::ListXattr { ino } => (*ino, false),
            _ => return reply.error(err(libc::EINVAL)),
        };
        let remote_caps = is_caps && inode_node(ino) != self.ops.local;
        if remote_caps && self.caps.known_absent(ino) {
            return reply.error(err(libc::ENODATA));
        }
        // This node's inodes: a few local syscalls, answered right here on
        // the FUSE thread (no hand-off: it happens at every write).
        let q = match self.ops.local_store.answer(inode_node(ino), q) {
            Ok(got) => return reply_with(reply, size, hide_trusted, got),
            Err(q) => q,
        };
        let (ops, caps) = (self.ops.clone(), self.caps.clone());
        self.spawn(async move {
            let got = ops.cluster.call(inode_node(ino), q).await;
            if remote_caps && got.as_ref().err() == Some(&libc::ENODATA) {
                caps.absent(ino);
            }
            reply_with(reply, size, hide_trusted, got)
        });
    }
}

impl KdfsFs {
    /// `q` is a `SetXattr` or a `RemoveXattr`.
    pub(super) fn do_setxattr(&self, q: Q, reply: ReplyEmpty) {
        let ino = match &q {
            Q::SetXattr { ino, .. } | Q::RemoveXattr { ino, .. } => *ino,
            _ => return reply.error(err(libc::EINVAL)),
        };
        if !self.xattr {
            return reply.error(err(libc::ENOSYS));
        }
        self.caps.forget(ino);
        let ops = self.ops.clone();
        self.reply_empty(reply, async move { ops.simple(inode_node(ino), q).await });
    }
}

/// Answer a getxattr/listxattr from the owner's answer (a listing without
/// `trusted.*` names for `hide_trusted`).
fn reply_with(reply: ReplyXattr, size: u32, hide_trusted: bool, got: Result<A, i32>) {
    match got {
        Ok(A::Xattr(v)) => answer(reply, size, &v.0),
        Ok(A::XattrNames(names)) => {
            let list: Vec<u8> = names
                .iter()
                .filter(|n| !(hide_trusted && n.starts_with(b"trusted.")))
                .flat_map(|n| n.iter().copied().chain([0]))
                .collect();
            answer(reply, size, &list)
        }
        Ok(_) => reply.error(err(libc::EIO)),
        Err(e) => reply.error(err(e)),
    }
}
