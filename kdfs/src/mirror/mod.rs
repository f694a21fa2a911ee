//! Mirrors: a copy of another node's store, kept on this node, that
//! serves that node's files while it is down (`mkfs.kdfs --replicas 2`).
//!
//! * this file: who mirrors whom ([`mirror_of`]), what a mirror may be
//!   asked ([`may_ask_mirror`]) and serve from a copy ([`is_mirror_read`]);
//! * `copy`: a mirror on disk, `DIR/mirrors/<owner>/`, laid out as the
//!   owner's store (same meta-files, same `inodes/<hex>` objects), changed
//!   only by applying the owner's [`MirrorChange`]s;
//! * [`full`]: copying a whole store to its mirror, step by step;
//! * [`place`]: which of a store's mirrors keeps which inodes (their
//!   replica counts).
//!
//! The owner's side (what a change touched) is `store::capture`; krgd
//! sends it and keeps the sessions (`krgd/src/service/kdfs/mirror`).

mod copy;
pub mod full;
pub mod place;
#[cfg(test)]
mod place_tests;
#[cfg(test)]
mod tests;

use krg_proto::kdfs::{KdfsRequest, MirrorChange, MIRROR_HANDLE};
use krg_proto::NodeId;

pub use copy::{MirrorCopy, MIRRORS};

use crate::store::Store;

/// The node that mirrors `owner`'s store first: the next member after it
/// in id order, wrapping around; `None` in a cluster of one. Every member
/// computes the same from the committed membership.
pub fn mirror_of(owner: NodeId, members: &[NodeId]) -> Option<NodeId> {
    mirrors_of(owner, members, 1).first().copied()
}

/// The `count` nodes that mirror `owner`'s store (`--replicas count+1`),
/// first to last: the members after it in id order, wrapping around
/// (fewer in a smaller cluster).
pub fn mirrors_of(owner: NodeId, members: &[NodeId], count: usize) -> Vec<NodeId> {
    let mut others: Vec<NodeId> = members.iter().copied().filter(|m| *m != owner).collect();
    others.sort_unstable();
    others.dedup();
    let split = others.partition_point(|m| *m < owner);
    others.rotate_left(split);
    others.truncate(count);
    others
}

/// `req` without what wraps it for its owner (the mount it comes from,
/// the handles it holds): a mirror keeps neither.
pub fn unwrapped(req: KdfsRequest) -> KdfsRequest {
    match req {
        KdfsRequest::As { req, .. } | KdfsRequest::HeldBy { req, .. } => unwrapped(*req),
        req => req,
    }
}

/// What [`unwrapped`] gives, by reference.
pub fn unwrapped_ref(req: &KdfsRequest) -> &KdfsRequest {
    match req {
        KdfsRequest::As { req, .. } | KdfsRequest::HeldBy { req, .. } => unwrapped_ref(req),
        req => req,
    }
}

/// Whether a mirror may answer `req` for its owner from its copy: what the
/// store answers without changing anything (a striped file's units
/// included), a regular file opened for reading and its data, the file
/// system's size and root.
pub fn is_mirror_read(req: &KdfsRequest) -> bool {
    use KdfsRequest as Q;
    let req = unwrapped_ref(req);
    Store::is_read_only(req)
        || matches!(
            req,
            Q::Open { write: false, .. } | Q::Read { .. } | Q::Release { .. } | Q::Statfs | Q::Root
        )
}

/// Whether `req` may be asked of a node's mirror when the node does not
/// answer: anything on its files, their locks included (a mirror that
/// took the store over keeps them), but the mounts' own bookkeeping with
/// the node.
pub fn may_ask_mirror(req: &KdfsRequest) -> bool {
    use KdfsRequest as Q;
    !matches!(
        unwrapped_ref(req),
        Q::Watch { .. }
            | Q::Unwatch { .. }
            | Q::Hello
            | Q::HandOver
            | Q::Mirror { .. }
            | Q::FromMirror { .. }
            | Q::Replication
            | Q::SetReplicas { .. }
            | Q::Conversion { .. }
            | Q::Lend { .. }
            | Q::ReleaseMany { .. }
    )
}

/// The inode `req` is about first (a directory for a request on one of
/// its entries), if it names one: what a copy that lacks it cannot serve.
pub fn inode_named(req: &KdfsRequest) -> Option<krg_proto::kdfs::InodeId> {
    inodes_named(req).first().copied()
}

/// Every inode `req` names, the one it is about first: directories whose
/// entries it reads or changes, inodes whose attributes, links, extended
/// attributes, layout or data it opens or changes (not the handles it
/// uses: see [`file_handle`]).
pub fn inodes_named(req: &KdfsRequest) -> Vec<krg_proto::kdfs::InodeId> {
    use KdfsRequest as Q;
    match unwrapped_ref(req) {
        Q::GetAttr { ino }
        | Q::SetAttr { ino, .. }
        | Q::Readlink { ino }
        | Q::Open { ino, .. }
        | Q::OpenDir { ino }
        | Q::IsEmptyDir { ino }
        | Q::FsyncDir { ino }
        | Q::GetXattr { ino, .. }
        | Q::ListXattr { ino }
        | Q::SetXattr { ino, .. }
        | Q::RemoveXattr { ino, .. }
        | Q::GetStripe { ino }
        | Q::GetReplicas { ino }
        | Q::SetInodeReplicas { ino, .. }
        | Q::SetLayout { ino, .. }
        | Q::Extend { ino, .. }
        | Q::IncLink { ino }
        | Q::DecLink { ino }
        | Q::Touch { ino }
        | Q::RemoveDir { ino } => vec![*ino],
        Q::Lookup { dir, .. }
        | Q::Create { dir, .. }
        | Q::AddEntry { dir, .. }
        | Q::RemoveEntry { dir, .. }
        | Q::Unlink { dir, .. }
        | Q::ReplaceEntry { dir, .. }
        | Q::SetStripePolicy { dir, .. } => vec![*dir],
        Q::Rename {
            src_dir, dst_dir, ..
        } => vec![*src_dir, *dst_dir],
        _ => Vec::new(),
    }
}

/// The file and handle of a request that uses an open file's handle.
pub fn file_handle(req: &KdfsRequest) -> Option<(krg_proto::kdfs::InodeId, u64)> {
    use KdfsRequest as Q;
    match unwrapped_ref(req) {
        Q::Read { ino, fh, .. }
        | Q::Write { ino, fh, .. }
        | Q::Fsync { ino, fh, .. }
        | Q::Fallocate { ino, fh, .. }
        | Q::Release { ino, fh } => Some((*ino, *fh)),
        _ => None,
    }
}

/// The handle of an open file or directory that `req` uses, if any.
pub fn handle_of(req: &KdfsRequest) -> Option<u64> {
    use KdfsRequest as Q;
    match unwrapped_ref(req) {
        Q::Read { fh, .. }
        | Q::Write { fh, .. }
        | Q::Fsync { fh, .. }
        | Q::Fallocate { fh, .. }
        | Q::Release { fh, .. }
        | Q::ReadDir { fh, .. }
        | Q::ReleaseDir { fh } => Some(*fh),
        _ => None,
    }
}

/// `req` with `f` of the handle it uses (see [`handle_of`]).
pub fn map_handle(req: KdfsRequest, f: impl FnOnce(u64) -> u64) -> KdfsRequest {
    use KdfsRequest as Q;
    match req {
        Q::Read {
            ino,
            fh,
            offset,
            len,
        } => Q::Read {
            ino,
            fh: f(fh),
            offset,
            len,
        },
        Q::Write {
            ino,
            fh,
            offset,
            data,
        } => Q::Write {
            ino,
            fh: f(fh),
            offset,
            data,
        },
        Q::Fsync { ino, fh, datasync } => Q::Fsync {
            ino,
            fh: f(fh),
            datasync,
        },
        Q::Fallocate {
            ino,
            fh,
            offset,
            len,
            mode,
        } => Q::Fallocate {
            ino,
            fh: f(fh),
            offset,
            len,
            mode,
        },
        Q::Release { ino, fh } => Q::Release { ino, fh: f(fh) },
        Q::ReadDir { fh, offset, max } => Q::ReadDir {
            fh: f(fh),
            offset,
            max,
        },
        Q::ReleaseDir { fh } => Q::ReleaseDir { fh: f(fh) },
        r => r,
    }
}

/// Whether `req` uses a handle a mirror opened: it goes to the mirror
/// again, whether or not the owner answers now.
pub fn uses_mirror_handle(req: &KdfsRequest) -> bool {
    handle_of(req).is_some_and(|fh| fh & MIRROR_HANDLE != 0)
}

/// How many bytes a batch of changes carries, about.
pub fn weight(changes: &[MirrorChange]) -> usize {
    changes
        .iter()
        .map(|c| match c {
            MirrorChange::Data { data, .. } | MirrorChange::StripeData { data, .. } => {
                data.0.len() + 32
            }
            MirrorChange::Entries { entries, .. } => entries.len() * 64 + 32,
            MirrorChange::Meta { image, .. } => image.as_ref().map_or(0, Vec::len) + 32,
            _ => 128,
        })
        .sum()
}
