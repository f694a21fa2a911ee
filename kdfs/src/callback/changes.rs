//! What a served request gave a caching mount ([`grants`]) and what it
//! changed ([`changes`]): the two sides of the callback bookkeeping, read
//! off the request and its answer only.

use krg_proto::kdfs::{FileKind, InodeId, Inval, KdfsRequest as Q, KdfsResponse as A};

/// Something a mount's kernel may now keep until told otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Names of this directory (a dentry under it).
    Entries(InodeId),
    /// The attributes of this inode (never a regular file's: mounts of
    /// other nodes do not cache those, see [`Inval::Volatile`]).
    Attr(InodeId),
}

/// Who must hear of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every mount that holds the directory's names or the inode's
    /// attributes, and this node's own mounts (they read the store in place,
    /// so they may hold anything of it).
    Holders,
    /// This node's own mounts only.
    Local,
}

fn attr_grant(kind: FileKind, ino: InodeId) -> Option<Grant> {
    (kind != FileKind::File).then_some(Grant::Attr(ino))
}

/// What the answer `resp` to `req` lets the asking mount's kernel keep.
pub fn grants(req: &Q, resp: &A) -> Vec<Grant> {
    match (req, resp) {
        (Q::Lookup { dir, .. }, A::Entry { attr, .. }) => {
            let mut g = vec![Grant::Entries(*dir)];
            g.extend(attr.and_then(|a| attr_grant(a.kind, a.ino)));
            g
        }
        (Q::GetAttr { .. } | Q::SetAttr { .. } | Q::IncLink { .. }, A::Attr(a)) => {
            attr_grant(a.kind, a.ino).into_iter().collect()
        }
        (Q::Create { dir, .. }, A::Created { attr, .. }) => {
            let mut g = vec![Grant::Entries(*dir)];
            g.extend(attr_grant(attr.kind, attr.ino));
            g
        }
        (Q::MakeInode { .. }, A::Created { attr, .. }) => {
            attr_grant(attr.kind, attr.ino).into_iter().collect()
        }
        (Q::AddEntry { dir, .. }, A::Removed(_)) => vec![Grant::Entries(*dir)],
        (Q::Rename { dst_dir, .. }, A::Removed(_)) => vec![Grant::Entries(*dst_dir)],
        _ => Vec::new(),
    }
}

/// What serving `req` with the answer `resp` changed, and who must hear of
/// it. `moved` is the inode a rename moved (when its new entry names one).
/// Opens and releases for writing are not here: they are state
/// ([`super::Callbacks`] counts them).
pub fn changes(req: &Q, resp: &A, moved: Option<InodeId>) -> Vec<(Inval, Scope)> {
    use Scope::Holders as H;
    if matches!(resp, A::Errno(_)) {
        return Vec::new();
    }
    let entry = |dir: &InodeId, name: &[u8]| {
        (
            Inval::Entry {
                dir: *dir,
                name: name.to_vec(),
            },
            H,
        )
    };
    match (req, resp) {
        (Q::Create { dir, .. }, _) => vec![(Inval::Attr(*dir), H)],
        (Q::AddEntry { dir, name, .. }, A::Removed(replaced)) => {
            let mut v = vec![(Inval::Attr(*dir), H)];
            if replaced.is_some() {
                v.push(entry(dir, name));
            }
            v
        }
        (Q::RemoveEntry { dir, name, .. }, _) | (Q::ReplaceEntry { dir, name, .. }, _) => {
            vec![(Inval::Attr(*dir), H), entry(dir, name)]
        }
        (Q::Unlink { dir, name }, A::Unlinked { entry: e, .. }) => vec![
            (Inval::Attr(*dir), H),
            entry(dir, name),
            (Inval::Attr(e.ino), H),
        ],
        (
            Q::Rename {
                src_dir,
                src_name,
                dst_dir,
                dst_name,
                ..
            },
            _,
        ) => {
            let mut v = vec![
                (Inval::Attr(*src_dir), H),
                entry(src_dir, src_name),
                entry(dst_dir, dst_name),
            ];
            if dst_dir != src_dir {
                v.push((Inval::Attr(*dst_dir), H));
            }
            v.extend(moved.map(|m| (Inval::Attr(m), H)));
            v
        }
        (
            Q::IncLink { ino }
            | Q::DecLink { ino }
            | Q::Touch { ino }
            | Q::RemoveDir { ino }
            | Q::SetAttr { ino, .. }
            | Q::SetXattr { ino, .. }
            | Q::RemoveXattr { ino, .. }
            | Q::Fallocate { ino, .. }
            | Q::Extend { ino, .. }
            | Q::SetStripePolicy { dir: ino, .. }
            | Q::SetInodeReplicas { ino, .. },
            _,
        ) => vec![(Inval::Attr(*ino), H)],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use krg_proto::kdfs::DirEntry;

    #[test]
    fn an_unlink_changes_the_name_the_directory_and_the_inode() {
        let req = Q::Unlink {
            dir: 7,
            name: b"a".to_vec(),
        };
        let resp = A::Unlinked {
            entry: DirEntry {
                name: b"a".to_vec(),
                ino: 9,
                kind: FileKind::File,
            },
            link_dropped: true,
        };
        let c = changes(&req, &resp, None);
        assert!(c.contains(&(Inval::Attr(7), Scope::Holders)));
        assert!(c.contains(&(Inval::Attr(9), Scope::Holders)));
        assert!(c.contains(&(
            Inval::Entry {
                dir: 7,
                name: b"a".to_vec()
            },
            Scope::Holders
        )));
        assert!(changes(&req, &A::Errno(libc::ENOENT), None).is_empty());
    }

    #[test]
    fn regular_files_attributes_are_not_granted_to_other_nodes() {
        let attr = |kind| krg_proto::kdfs::Attr {
            ino: 5,
            kind,
            perm: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            blocks: 0,
            atime: krg_proto::kdfs::Time { sec: 0, nsec: 0 },
            mtime: krg_proto::kdfs::Time { sec: 0, nsec: 0 },
            ctime: krg_proto::kdfs::Time { sec: 0, nsec: 0 },
        };
        let q = Q::GetAttr { ino: 5 };
        assert!(grants(&q, &A::Attr(attr(FileKind::File))).is_empty());
        assert_eq!(
            grants(&q, &A::Attr(attr(FileKind::Dir))),
            vec![Grant::Attr(5)]
        );
        let l = Q::Lookup {
            dir: 1,
            name: b"x".to_vec(),
        };
        let e = A::Entry {
            ino: 5,
            kind: FileKind::File,
            attr: Some(attr(FileKind::File)),
        };
        assert_eq!(grants(&l, &e), vec![Grant::Entries(1)]);
    }
}
