//! Which mirror keeps which inodes (`place`): counts given to inodes and
//! inherited from a directory's policy, changes cut per mirror, full
//! copies that keep or drop, and a partial copy handing a store back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use krg_proto::kdfs::{FileKind, InodeId, KdfsRequest as Q, KdfsResponse as A, NewInode};

use super::full::{plan, step, CopyStep};
use super::place::{kept_at, Keeper};
use crate::format::{mkfs, MkfsOptions};
use crate::store::Store;

fn store(replicas: u8) -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let opts = MkfsOptions {
        dir: d.path().into(),
        node: 1,
        root_node: 1,
        force: false,
        replicas,
    };
    mkfs(&opts).unwrap();
    let s = Store::open(d.path(), 1, None).unwrap();
    (d, s)
}

fn make(s: &Store, dir: InodeId, name: &str, kind: FileKind) -> InodeId {
    let new = NewInode {
        kind,
        perm: 0o755,
        uid: 0,
        gid: 0,
        rdev: 0,
        target: None,
    };
    let q = Q::Create {
        dir,
        name: name.into(),
        new,
        open: None,
    };
    match s.handle(q) {
        A::Created { attr, .. } => attr.ino,
        other => panic!("{other:?}"),
    }
}

fn root(s: &Store) -> InodeId {
    let A::Root(r) = s.handle(Q::Root) else {
        panic!()
    };
    r
}

fn set(s: &Store, ino: InodeId, own: Option<u8>, policy: Option<Option<u8>>) -> A {
    s.handle(Q::SetInodeReplicas { ino, own, policy })
}

fn errno(a: A) -> Option<i32> {
    match a {
        A::Errno(e) => Some(e),
        _ => None,
    }
}

fn count(s: &Store, ino: InodeId) -> (u8, Option<u8>) {
    match s.handle(Q::GetReplicas { ino }) {
        A::Replicas { own, policy } => (own, policy),
        other => panic!("{other:?}"),
    }
}

/// The objects a full copy to `keeper` sends.
fn copied(s: &Store, keeper: Keeper) -> Vec<u64> {
    let have = Default::default();
    let steps = plan(s, &have, keeper, Keeper::Owner).unwrap();
    let mut sent = Vec::new();
    for st in &steps {
        if let CopyStep::Object(l) = st {
            if !step(s, st, &have, keeper).unwrap().0.is_empty() {
                sent.push(*l);
            }
        }
    }
    sent
}

#[test]
fn a_directory_s_policy_is_inherited_and_only_the_second_mirror_s_share_goes_there() {
    let (_d, s) = store(2);
    let r = root(&s);
    let imp = make(&s, r, "imp", FileKind::Dir);
    let plain = make(&s, r, "plain", FileKind::File);
    assert_eq!(s.most_replicas(), 2);
    let moved = set(&s, imp, Some(3), Some(Some(3)));
    assert!(
        matches!(
            moved,
            A::ReplicasSet {
                before: 2,
                after: 3
            }
        ),
        "{moved:?}"
    );
    assert_eq!(s.most_replicas(), 3, "the store now keeps a second mirror");
    let sub = make(&s, imp, "sub", FileKind::Dir);
    let f = make(&s, sub, "f", FileKind::File);
    assert_eq!(
        count(&s, sub),
        (3, Some(3)),
        "a new directory: count and policy"
    );
    assert_eq!(count(&s, f), (3, None));
    assert_eq!(count(&s, plain), (2, None));

    let local = krg_proto::kdfs::inode_local;
    let first = copied(&s, Keeper::Mirror(0));
    let second = copied(&s, Keeper::Mirror(1));
    for ino in [r, imp, sub, f, plain] {
        assert!(first.contains(&local(ino)), "the first mirror keeps all");
    }
    let mut want = vec![local(imp), local(sub), local(f)];
    want.sort_unstable();
    let mut got = second.clone();
    got.sort_unstable();
    assert_eq!(got, want, "the second mirror keeps the three-copy inodes");

    // A write to each: cut per mirror.
    let write = |ino| {
        let req = Q::SetAttr {
            ino,
            set: krg_proto::kdfs::SetAttr {
                mode: Some(0o700),
                ..Default::default()
            },
        };
        let resp = s.handle(req.clone());
        s.mirror_changes(&req, &resp).unwrap()
    };
    let (to_f, to_plain) = (write(f), write(plain));
    assert_eq!(kept_at(&s, Keeper::Mirror(1), &to_f), to_f);
    assert!(kept_at(&s, Keeper::Mirror(1), &to_plain).is_empty());
    assert_eq!(kept_at(&s, Keeper::Mirror(0), &to_plain), to_plain);
}

#[test]
fn counts_are_checked_and_a_single_copy_store_keeps_one() {
    let (_d, s) = store(2);
    let r = root(&s);
    let f = make(&s, r, "f", FileKind::File);
    assert_eq!(errno(set(&s, f, Some(4), None)), Some(libc::EINVAL));
    assert_eq!(errno(set(&s, f, Some(0), None)), Some(libc::EINVAL));
    assert_eq!(errno(set(&s, f, None, Some(Some(3)))), Some(libc::ENOTDIR));
    assert_eq!(count(&s, f), (2, None));
    let (_d1, single) = store(1);
    let g = make(&single, root(&single), "g", FileKind::File);
    assert_eq!(
        errno(set(&single, g, Some(2), None)),
        Some(libc::EOPNOTSUPP)
    );
    // A client asking a new inode three copies there is not followed.
    let new = NewInode {
        kind: FileKind::File,
        perm: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        target: None,
    };
    let made = single.handle(Q::MakeInode {
        new,
        open: None,
        replicas: Some(3),
    });
    let A::Created { attr, .. } = made else {
        panic!("{made:?}")
    };
    assert_eq!(count(&single, attr.ino), (1, None));
    assert_eq!(single.most_replicas(), 1);
}

#[test]
fn a_partial_copy_handing_a_store_back_drops_only_what_it_would_keep() {
    // The copy that served the store (the second mirror's: inodes of 3)
    // is `s`; the owner holds `f` (2 copies, never in the copy) and `gone`
    // (3 copies, removed while the copy served).
    let (_d, s) = store(2);
    let r = root(&s);
    set(&s, r, Some(3), None);
    let mut have = krg_proto::kdfs::MirrorInventory::default();
    let object = |local, replicas| krg_proto::kdfs::MirroredObject {
        local,
        kind: FileKind::File,
        size: 0,
        mtime: krg_proto::kdfs::Time { sec: 0, nsec: 0 },
        replicas,
    };
    have.objects = vec![object(900, None), object(901, Some(3))];
    let steps = plan(&s, &have, Keeper::Owner, Keeper::Mirror(1)).unwrap();
    assert!(!steps.contains(&CopyStep::Drop(900)), "{steps:?}");
    assert!(steps.contains(&CopyStep::Drop(901)), "{steps:?}");
    let whole = plan(&s, &have, Keeper::Owner, Keeper::Owner).unwrap();
    assert!(whole.contains(&CopyStep::Drop(900)), "a full copy drops it");
}
