//! A store and its mirror answer the same, after a full copy and after
//! each change mirrored as it happens.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use krg_proto::kdfs::{
    Bytes, FileKind, InodeId, KdfsRequest as Q, KdfsResponse as A, MirrorChange, NewInode, SetAttr,
};

use super::full::{plan, step};
use super::place::Keeper;
use super::*;
use crate::format::{mkfs, MkfsOptions, StoreDir};
use crate::store::Store;

fn formatted(node: u32, root: u32) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let opts = MkfsOptions {
        dir: d.path().into(),
        node,
        root_node: root,
        force: false,
        replicas: 1,
    };
    mkfs(&opts).unwrap();
    d
}

fn new(kind: FileKind, perm: u16, target: Option<&[u8]>) -> NewInode {
    NewInode {
        kind,
        perm,
        uid: 1000,
        gid: 100,
        rdev: 0,
        target: target.map(<[u8]>::to_vec),
    }
}

/// Serve `req` on `s` and mirror what it changed into `m`, strictly.
fn changed(s: &Store, m: &MirrorCopy, req: Q) -> A {
    let resp = s.handle(req.clone());
    assert!(!matches!(resp, A::Errno(_)), "{req:?}: {resp:?}");
    m.apply(&s.mirror_changes(&req, &resp).unwrap(), true)
        .unwrap();
    resp
}

fn created(resp: &A) -> InodeId {
    match resp {
        A::Created { attr, .. } => attr.ino,
        other => panic!("{other:?}"),
    }
}

fn full_copy(s: &Store, m: &MirrorCopy) {
    let have = m.inventory().unwrap();
    let mut steps = plan(s, &have, Keeper::Owner, Keeper::Owner).unwrap();
    while !steps.is_empty() {
        let st = steps.remove(0);
        let (changes, more) = step(s, &st, &have, Keeper::Owner).unwrap();
        m.apply(&changes, false).unwrap();
        for (i, x) in more.into_iter().enumerate() {
            steps.insert(i, x);
        }
    }
}

/// What a client sees of the tree under `dir`: names, kinds, modes,
/// owners, sizes, times, link counts, targets, data, xattrs.
fn seen(s: &Store, dir: InodeId) -> Vec<String> {
    let mut out = Vec::new();
    let A::Handle(fh) = s.handle(Q::OpenDir { ino: dir }) else {
        panic!()
    };
    let A::Entries(mut entries) = s.handle(Q::ReadDir {
        fh,
        offset: 0,
        max: 1000,
    }) else {
        panic!()
    };
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        let A::Attr(mut a) = s.handle(Q::GetAttr { ino: e.ino }) else {
            panic!()
        };
        // (reading moves the access time; ctime is the mirror's own)
        a.ctime = krg_proto::kdfs::Time { sec: 0, nsec: 0 };
        a.atime = a.ctime;
        a.blocks = 0;
        let mut line = format!("{:?} {a:?}", String::from_utf8_lossy(&e.name));
        if let A::XattrNames(n) = s.handle(Q::ListXattr { ino: e.ino }) {
            line += &format!(" {n:?}");
        }
        match a.kind {
            FileKind::Dir => out.extend(seen(s, e.ino)),
            FileKind::Symlink => {
                let A::Target(t) = s.handle(Q::Readlink { ino: e.ino }) else {
                    panic!()
                };
                line += &format!(" -> {t:?}");
            }
            FileKind::File => {
                let A::Handle(fh) = s.handle(Q::Open {
                    ino: e.ino,
                    write: false,
                }) else {
                    panic!()
                };
                let A::Data(d) = s.handle(Q::Read {
                    ino: e.ino,
                    fh,
                    offset: 0,
                    len: 1 << 20,
                }) else {
                    panic!()
                };
                line += &format!(" data {:?}", d.0);
                s.handle(Q::Release { ino: e.ino, fh });
            }
            _ => {}
        }
        out.push(line);
    }
    out
}

#[test]
fn the_next_member_mirrors_a_node() {
    assert_eq!(mirror_of(2, &[1, 2, 3]), Some(3));
    assert_eq!(mirror_of(3, &[1, 2, 3]), Some(1));
    assert_eq!(mirror_of(1, &[1, 5, 9]), Some(5));
    assert_eq!(mirror_of(1, &[1]), None);
    assert_eq!(mirror_of(4, &[1, 2]), Some(1), "a node no longer a member");
    assert_eq!(mirrors_of(2, &[1, 2, 3, 4], 2), vec![3, 4]);
    assert_eq!(mirrors_of(3, &[4, 1, 2, 3], 2), vec![4, 1]);
    assert_eq!(mirrors_of(4, &[1, 2, 3, 4], 2), vec![1, 2]);
    assert_eq!(
        mirrors_of(1, &[1, 2], 2),
        vec![2],
        "fewer in a smaller cluster"
    );
}

#[test]
fn a_mirror_answers_as_its_store_after_a_copy_and_each_change() {
    let owner_dir = formatted(1, 1);
    let s = Store::open(owner_dir.path(), 1, None).unwrap();
    let root = s.handle(Q::Root);
    let A::Root(root) = root else { panic!() };
    // Something there before mirroring starts (over more than one
    // piece), copied whole.
    let before = created(&s.handle(Q::Create {
        dir: root,
        name: b"before".to_vec(),
        new: new(FileKind::File, 0o640, None),
        open: None,
    }));
    let A::Handle(fh) = s.handle(Q::Open {
        ino: before,
        write: true,
    }) else {
        panic!()
    };
    let big: Vec<u8> = (0..full::PIECE as usize + 4000)
        .map(|i| (i % 251) as u8)
        .collect();
    s.handle(Q::Write {
        ino: before,
        fh,
        offset: 0,
        data: Bytes(big.into()),
    });
    s.handle(Q::Release { ino: before, fh });
    mirrored_after_changes(&s, root, before);
}

fn mirrored_after_changes(s: &Store, root: InodeId, before: InodeId) {
    let mirror_host = formatted(2, 1);
    let host = StoreDir::open(mirror_host.path()).unwrap();
    let m = MirrorCopy::open(&host, 1).unwrap();
    full_copy(s, &m);
    // Then changes, each mirrored as krgd would.
    let sub = created(&changed(
        s,
        &m,
        Q::Create {
            dir: root,
            name: b"sub".to_vec(),
            new: new(FileKind::Dir, 0o750, None),
            open: None,
        },
    ));
    let f = created(&changed(
        s,
        &m,
        Q::Create {
            dir: sub,
            name: b"f".to_vec(),
            new: new(FileKind::File, 0o600, None),
            open: None,
        },
    ));
    let A::Handle(fh) = changed(
        s,
        &m,
        Q::Open {
            ino: f,
            write: true,
        },
    ) else {
        panic!()
    };
    changed(
        s,
        &m,
        Q::Write {
            ino: f,
            fh,
            offset: 3,
            data: Bytes(b"hello".to_vec().into()),
        },
    );
    changed(
        s,
        &m,
        Q::Fsync {
            ino: f,
            fh,
            datasync: false,
        },
    );
    changed(s, &m, Q::Release { ino: f, fh });
    changed(
        s,
        &m,
        Q::Create {
            dir: sub,
            name: b"link".to_vec(),
            new: new(FileKind::Symlink, 0o777, Some(b"../before")),
            open: None,
        },
    );
    changed(
        s,
        &m,
        Q::SetXattr {
            ino: f,
            name: b"user.color".to_vec(),
            value: Bytes(b"blue".to_vec().into()),
            flags: 0,
        },
    );
    let set = SetAttr {
        mode: Some(0o644),
        size: Some(2),
        ..Default::default()
    };
    changed(s, &m, Q::SetAttr { ino: before, set });
    changed(
        s,
        &m,
        Q::Rename {
            src_dir: sub,
            src_name: b"f".to_vec(),
            dst_dir: root,
            dst_name: b"moved".to_vec(),
            flags: 0,
        },
    );
    changed(
        s,
        &m,
        Q::Unlink {
            dir: sub,
            name: b"link".to_vec(),
        },
    );
    changed(
        s,
        &m,
        Q::Create {
            dir: root,
            name: b"gone".to_vec(),
            new: new(FileKind::File, 0o600, None),
            open: None,
        },
    );
    changed(
        s,
        &m,
        Q::Unlink {
            dir: root,
            name: b"gone".to_vec(),
        },
    );

    let view = Store::view(&m.path(), 1).unwrap();
    let want = seen(s, root);
    assert!(
        want.iter()
            .any(|l| l.contains("\"moved\"") && l.contains("hello")),
        "{want:#?}"
    );
    assert_eq!(seen(&view, root), want);

    // A second full copy over the first changes nothing, and drops what
    // the store no longer has (an object left behind on the mirror).
    let stray = MirrorChange::Object {
        local: 0xfff0,
        state: s.object_state(before & 0xffff_ffff_ffff).unwrap(),
    };
    m.apply(&[stray], true).unwrap();
    full_copy(s, &m);
    assert!(!m
        .inventory()
        .unwrap()
        .objects
        .iter()
        .any(|o| o.local == 0xfff0));
    assert_eq!(seen(&view, root), want);
}

#[test]
fn a_change_to_what_the_mirror_lacks_is_refused_when_strict() {
    let host_dir = formatted(2, 1);
    let host = StoreDir::open(host_dir.path()).unwrap();
    let m = MirrorCopy::open(&host, 1).unwrap();
    let write = MirrorChange::Data {
        local: 7,
        offset: 0,
        data: Bytes(b"x".to_vec().into()),
    };
    assert!(m.apply(std::slice::from_ref(&write), true).is_err());
    m.apply(&[write], false).unwrap();
    // An entry that is not an encoded one is refused, strict or not.
    let dir = MirrorChange::Object {
        local: 9,
        state: Some(krg_proto::kdfs::ObjectState {
            kind: FileKind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            atime: krg_proto::kdfs::Time { sec: 0, nsec: 0 },
            mtime: krg_proto::kdfs::Time { sec: 0, nsec: 0 },
            rdev: 0,
            target: None,
            xattrs: Vec::new(),
        }),
    };
    let bad = MirrorChange::Entries {
        local: 9,
        entries: vec![(b"x".to_vec(), Some("/etc/passwd".into()))],
        complete: false,
    };
    assert!(m.apply(&[dir.clone(), bad], false).is_err());
    let escape = MirrorChange::Entries {
        local: 9,
        entries: vec![(b"../x".to_vec(), Some("f1000000000002".into()))],
        complete: false,
    };
    assert!(m.apply(&[dir, escape], false).is_err());
}

#[test]
fn a_mirror_is_asked_reads_from_its_copy_and_no_locks() {
    let lookup = Q::Lookup {
        dir: 1,
        name: b"x".to_vec(),
    };
    let wrapped = Q::As {
        client: 3,
        req: Box::new(lookup.clone()),
    };
    assert!(is_mirror_read(&lookup) && is_mirror_read(&wrapped));
    assert!(is_mirror_read(&Q::Open {
        ino: 1,
        write: false
    }));
    assert!(!is_mirror_read(&Q::Open {
        ino: 1,
        write: true
    }));
    assert!(!is_mirror_read(&Q::Unlink {
        dir: 1,
        name: b"x".to_vec()
    }));
    assert!(is_mirror_read(&Q::StripeRead {
        ino: 1,
        offset: 0,
        len: 1
    }));
    assert!(may_ask_mirror(&Q::Unlink {
        dir: 1,
        name: b"x".to_vec()
    }));
    assert!(may_ask_mirror(&Q::LockLease { client: 3 }));
    assert!(!is_mirror_read(&Q::LockLease { client: 3 }));
    assert!(!may_ask_mirror(&Q::Watch {
        client: 3,
        acked: 0,
        ttl_ms: 1
    }));
    let read = |fh| Q::Read {
        ino: 1,
        fh,
        offset: 0,
        len: 1,
    };
    assert!(uses_mirror_handle(&read(
        5 | krg_proto::kdfs::MIRROR_HANDLE
    )));
    assert!(!uses_mirror_handle(&read(5)));
    let marked = read(5 | krg_proto::kdfs::MIRROR_HANDLE);
    let plain = map_handle(marked, |fh| fh & !krg_proto::kdfs::MIRROR_HANDLE);
    assert_eq!(handle_of(&plain), Some(5));
    assert_eq!(handle_of(&Q::Statfs), None);
}

/// What `s` reads of striped file `ino`'s units it holds at `offset`.
fn units(s: &Store, ino: InodeId, offset: u64, len: u32) -> Vec<u8> {
    match s.handle(Q::StripeRead { ino, offset, len }) {
        A::Data(d) => d.0.to_vec(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_holder_s_units_of_another_node_s_striped_file_are_mirrored() {
    let host_dir = formatted(2, 1);
    let s = Store::open(host_dir.path(), 2, Some(77)).unwrap();
    let mirror_dir = formatted(3, 1);
    let m = MirrorCopy::open(&StoreDir::open(mirror_dir.path()).unwrap(), 2).unwrap();
    full_copy(&s, &m);
    // Node 1's striped file: node 2 holds the unit at 8 MiB.
    let ino = krg_proto::kdfs::inode_id(1, 5);
    let unit: Vec<u8> = (0..100_000).map(|i| (i % 253) as u8).collect();
    let at = 8 << 20;
    changed(
        &s,
        &m,
        Q::StripeWrite {
            ino,
            offset: at,
            data: Bytes(unit.clone().into()),
        },
    );
    changed(&s, &m, Q::StripeSync { ino });
    let copy = || Store::view(&m.path(), 2).unwrap();
    assert_eq!(units(&copy(), ino, at, 100_000), unit);
    assert_eq!(
        m.inventory().unwrap().stripes,
        vec![(ino, s.stripe_state(ino).unwrap().unwrap())],
        "same length and data time as the holder's"
    );

    // A full copy to an empty mirror sends the data (not the hole before
    // it); to a mirror that has it, nothing.
    let fresh_dir = formatted(3, 1);
    let fresh = MirrorCopy::open(&StoreDir::open(fresh_dir.path()).unwrap(), 2).unwrap();
    let empty = fresh.inventory().unwrap();
    let sent: usize = plan(&s, &empty, Keeper::Owner, Keeper::Owner)
        .unwrap()
        .iter()
        .flat_map(|st| step(&s, st, &empty, Keeper::Owner).unwrap().1)
        .flat_map(|st| step(&s, &st, &empty, Keeper::Owner).unwrap().0)
        .map(|c| match c {
            MirrorChange::StripeData { data, .. } => data.0.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(sent, unit.len(), "the data sent, not the hole before it");
    full_copy(&s, &fresh);
    assert_eq!(
        units(&Store::view(&fresh.path(), 2).unwrap(), ino, at, 100_000),
        unit
    );
    let have = fresh.inventory().unwrap();
    let steps = plan(&s, &have, Keeper::Owner, Keeper::Owner).unwrap();
    let sent: Vec<MirrorChange> = steps
        .iter()
        .flat_map(|st| step(&s, st, &have, Keeper::Owner).unwrap().0)
        .filter(|c| {
            matches!(
                c,
                MirrorChange::StripeData { .. } | MirrorChange::StripeCopy { .. }
            )
        })
        .collect();
    assert!(sent.is_empty(), "sent again: {sent:?}");

    // Cut, a second name (its owner left with it), dropped.
    changed(&s, &m, Q::StripeTruncate { ino, size: at + 10 });
    assert_eq!(units(&copy(), ino, at, 100_000), unit[..10]);
    let new_ino = krg_proto::kdfs::inode_id(3, 9);
    changed(
        &s,
        &m,
        Q::StripeRename {
            old: ino,
            new: new_ino,
        },
    );
    assert_eq!(units(&copy(), new_ino, at, 100), unit[..10]);
    changed(&s, &m, Q::StripeDrop { ino });
    assert!(units(&copy(), ino, at, 100).is_empty());
    assert_eq!(units(&copy(), new_ino, at, 100), unit[..10]);
}

/// A full copy cut short after a file's own step (its session started
/// over) leaves a file that the next copy fills — not one of the owner's
/// size and data time without its data, which it would take for current.
#[test]
fn a_copy_cut_short_is_filled_by_the_next() {
    let owner_dir = formatted(1, 1);
    let s = Store::open(owner_dir.path(), 1, None).unwrap();
    let A::Root(root) = s.handle(Q::Root) else {
        panic!()
    };
    let f = created(&s.handle(Q::Create {
        dir: root,
        name: b"f".to_vec(),
        new: new(FileKind::File, 0o644, None),
        open: None,
    }));
    let A::Handle(fh) = s.handle(Q::Open {
        ino: f,
        write: true,
    }) else {
        panic!()
    };
    let data: Vec<u8> = (0..300_000).map(|i| (i % 249) as u8).collect();
    s.handle(Q::Write {
        ino: f,
        fh,
        offset: 0,
        data: Bytes(data.clone().into()),
    });
    s.handle(Q::Release { ino: f, fh });
    let host_dir = formatted(2, 1);
    let m = MirrorCopy::open(&StoreDir::open(host_dir.path()).unwrap(), 1).unwrap();
    let have = m.inventory().unwrap();
    for st in plan(&s, &have, Keeper::Owner, Keeper::Owner).unwrap() {
        // (the data steps each object step adds are never run)
        let (changes, _) = step(&s, &st, &have, Keeper::Owner).unwrap();
        m.apply(&changes, false).unwrap();
    }
    full_copy(&s, &m);
    let view = Store::view(&m.path(), 1).unwrap();
    let A::Handle(fh) = view.handle(Q::Open {
        ino: f,
        write: false,
    }) else {
        panic!()
    };
    let read = view.handle(Q::Read {
        ino: f,
        fh,
        offset: 0,
        len: 400_000,
    });
    let A::Data(got) = read else {
        panic!("{read:?}")
    };
    assert!(
        got.0[..] == data[..],
        "{} bytes, zeros: {}",
        got.0.len(),
        got.0.iter().all(|b| *b == 0)
    );
}
