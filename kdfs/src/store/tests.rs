//! Store unit tests on a formatted temporary directory (single node).

use krg_proto::kdfs::{FileKind, KdfsRequest, KdfsResponse, NewInode, RemoveWhat};

use std::fs;

use super::entry::Entry;
use super::*;
use crate::format::{mkfs, MkfsOptions};

/// The errno a store result answers with (tests compare errnos, as clients see them).
fn no<T>(r: Res<T>) -> Result<T, i32> {
    r.map_err(|e| e.errno())
}

fn lookup(s: &Store, dir: InodeId, name: &[u8]) -> Result<KdfsResponse, i32> {
    match s.handle(KdfsRequest::Lookup {
        dir,
        name: name.to_vec(),
    }) {
        KdfsResponse::Errno(e) => Err(e),
        r => Ok(r),
    }
}

fn store() -> (tempfile::TempDir, Store, InodeId) {
    let d = tempfile::tempdir().unwrap();
    mkfs(&MkfsOptions {
        dir: d.path().into(),
        node: 1,
        root_node: 1,
        force: false,
        replicas: 1,
    })
    .unwrap();
    let s = Store::open(d.path(), 1, None).unwrap();
    let root = s.root().unwrap();
    (d, s, root)
}

fn file(perm: u16) -> NewInode {
    NewInode {
        kind: FileKind::File,
        perm,
        uid: 1000,
        gid: 1000,
        rdev: 0,
        target: None,
    }
}

fn dir() -> NewInode {
    NewInode {
        kind: FileKind::Dir,
        perm: 0o755,
        uid: 0,
        gid: 0,
        rdev: 0,
        target: None,
    }
}

#[test]
fn create_lookup_write_read() {
    let (_d, s, root) = store();
    let a = s.create(root, b"f", &file(0o640)).unwrap();
    assert_eq!((a.perm, a.uid, a.nlink), (0o640, 1000, 1));
    assert_eq!(no(s.create(root, b"f", &file(0o640))), Err(libc::EEXIST));
    let fh = s.open_file(a.ino, true).unwrap();
    write_at(&s.file(fh).unwrap(), 5, b"hello").unwrap();
    assert_eq!(
        read_at(&s.file(fh).unwrap(), 0, 100).unwrap(),
        b"\0\0\0\0\0hello"
    );
    s.release(fh).unwrap();
    match lookup(&s, root, b"f").unwrap() {
        KdfsResponse::Entry {
            ino,
            attr: Some(at),
            ..
        } => assert_eq!((ino, at.size), (a.ino, 10)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn dirs_count_subdirs_and_rmdir_needs_empty() {
    let (_d, s, root) = store();
    let d = s.create(root, b"d", &dir()).unwrap();
    assert_eq!(s.getattr(root).unwrap().nlink, 3);
    s.create(d.ino, b"x", &file(0o600)).unwrap();
    assert_eq!(no(s.remove_dir(d.ino)), Err(libc::ENOTEMPTY));
    assert_eq!(
        no(s.remove_entry(root, b"d", RemoveWhat::NonDir, None)),
        Err(libc::EISDIR)
    );
}

#[test]
fn unlink_while_open_keeps_data_until_release() {
    let (_d, s, root) = store();
    let a = s.create(root, b"f", &file(0o600)).unwrap();
    let fh = s.open_file(a.ino, true).unwrap();
    write_at(&s.file(fh).unwrap(), 0, b"data").unwrap();
    s.remove_entry(root, b"f", RemoveWhat::NonDir, None)
        .unwrap();
    assert_eq!(s.change_links(a.ino, -1).unwrap().unwrap().nlink, 0);
    assert_eq!(read_at(&s.file(fh).unwrap(), 0, 10).unwrap(), b"data");
    s.release(fh).unwrap();
    assert_eq!(no(s.getattr(a.ino)), Err(libc::ENOENT));
}

#[test]
fn one_request_unlinks_and_batched_releases_free_the_last_handle() {
    let (_d, s, root) = store();
    let a = s.create(root, b"f", &file(0o600)).unwrap();
    let fh1 = s.open_file(a.ino, true).unwrap();
    let fh2 = s.open_file(a.ino, false).unwrap();
    // The directory's node owns the inode: the link goes in the same request.
    match s.handle(KdfsRequest::Unlink {
        dir: root,
        name: b"f".to_vec(),
    }) {
        KdfsResponse::Unlinked {
            entry,
            link_dropped: true,
        } => assert_eq!(entry.ino, a.ino),
        other => panic!("unlink answered {other:?}"),
    }
    assert_eq!(no(s.getattr(a.ino)).unwrap().nlink, 0, "open: kept");
    let batch = KdfsRequest::ReleaseMany {
        handles: vec![(a.ino, fh1), (a.ino, 9999), (a.ino, fh2)],
    };
    assert!(matches!(s.handle(batch), KdfsResponse::Done));
    assert_eq!(no(s.getattr(a.ino)), Err(libc::ENOENT), "last handle: gone");
}

/// The handles of one mount are released together, as its releases
/// would have been (the last one of an unlinked file removes it); another
/// mount's handle on the same file keeps it, and a handle released by its
/// mount is no longer that mount's.
#[test]
fn a_gone_mounts_handles_are_released_and_no_others() {
    let (_d, s, root) = store();
    let a = s.create(root, b"f", &file(0o600)).unwrap();
    let opened = |holder| {
        let resp = s.handle(KdfsRequest::Open {
            ino: a.ino,
            write: false,
        });
        s.opened_for(holder, &resp);
        match resp {
            KdfsResponse::Handle(fh) => fh,
            other => panic!("open answered {other:?}"),
        }
    };
    let (gone, other) = ((2, 7), (3, 0));
    let _g1 = opened(gone);
    let _g2 = opened(gone);
    let released = opened(gone);
    let _kept = opened(other);
    s.release(released).unwrap();
    let holders: Vec<_> = s.handle_holders().into_iter().collect();
    assert_eq!(holders, vec![gone, other]);
    s.handle(KdfsRequest::Unlink {
        dir: root,
        name: b"f".to_vec(),
    });
    assert_eq!(s.release_held_by(gone), 2);
    assert_eq!(
        no(s.getattr(a.ino)).unwrap().nlink,
        0,
        "still open elsewhere"
    );
    assert_eq!(s.release_held_by(gone), 0);
    assert_eq!(s.release_held_by(other), 1);
    assert_eq!(no(s.getattr(a.ino)), Err(libc::ENOENT), "last handle: gone");
    assert!(s.handle_holders().is_empty());
}

/// A directory renamed over an empty one: the parent counts one
/// subdirectory less when both were its own, the same when the moved one
/// came from elsewhere (its old parent one less).
#[test]
fn a_directory_renamed_over_another_leaves_the_counts_right() {
    let (_d, s, root) = store();
    let nlink = |ino| s.getattr(ino).unwrap().nlink;
    s.create(root, b"d", &dir()).unwrap();
    s.create(root, b"e", &dir()).unwrap();
    assert_eq!(nlink(root), 4);
    let replaced = s.rename(root, b"e", root, b"d", 0).unwrap().unwrap();
    assert!(replaced.kind == FileKind::Dir);
    assert_eq!(nlink(root), 3, "one subdirectory is left");
    let p = s.create(root, b"p", &dir()).unwrap();
    s.create(p.ino, b"q", &dir()).unwrap();
    assert_eq!((nlink(root), nlink(p.ino)), (4, 3));
    s.rename(p.ino, b"q", root, b"d", 0).unwrap().unwrap();
    assert_eq!((nlink(root), nlink(p.ino)), (4, 2));
}

#[test]
fn rename_replaces_atomically_and_links_count() {
    let (_d, s, root) = store();
    let a = s.create(root, b"a", &file(0o600)).unwrap();
    let b = s.create(root, b"b", &file(0o600)).unwrap();
    assert_eq!(s.change_links(a.ino, 1).unwrap().unwrap().nlink, 2);
    s.add_entry(root, b"a2", a.ino, FileKind::File, false)
        .unwrap();
    let replaced = s.rename(root, b"a", root, b"b", 0).unwrap().unwrap();
    assert_eq!(replaced.ino, b.ino);
    assert_eq!(
        s.rename(root, b"a2", root, b"b", 0).unwrap(),
        None,
        "same inode: no-op"
    );
    assert!(
        matches!(lookup(&s, root, b"b").unwrap(), KdfsResponse::Entry { ino, .. } if ino == a.ino)
    );
    assert_eq!(lookup(&s, root, b"a").unwrap_err(), libc::ENOENT);
}

#[test]
fn reopen_checks_node_and_keeps_allocating_fresh_numbers() {
    let (d, s, root) = store();
    let a = s.create(root, b"a", &file(0o600)).unwrap();
    drop(s);
    assert!(Store::open(d.path(), 2, None)
        .err()
        .unwrap()
        .to_string()
        .contains("formatted for node 1"));
    let s = Store::open(d.path(), 1, None).unwrap();
    let b = s.create(root, b"b", &file(0o600)).unwrap();
    assert!(b.ino > a.ino);
}

/// The on-disk object of local inode `ino` of store `s`.
fn object(s: &Store, ino: InodeId) -> std::path::PathBuf {
    let local = krg_proto::kdfs::inode_local(ino);
    s.dir().join(INODES).join(format!("{local:x}"))
}

/// What an attacker who could reach the store would do: a symlink `name`
/// in the object of `dir` with `target`, owned by `uid`.
fn plant(s: &Store, dir: InodeId, name: &str, target: &str, uid: u32) -> std::path::PathBuf {
    let p = object(s, dir).join(name);
    std::os::unix::fs::symlink(target, &p).unwrap();
    std::os::unix::fs::lchown(&p, Some(uid), Some(uid)).unwrap();
    p
}

fn listed(s: &Store, dir: InodeId) -> Vec<Vec<u8>> {
    let fh = s.open_dir(dir).unwrap();
    let names = s.read_dir(fh, 0, 1000).unwrap();
    names.into_iter().map(|e| e.name).collect()
}

#[test]
fn entries_the_store_did_not_write_are_refused_never_followed_nor_removed() {
    let (_d, s, root) = store();
    let victim = s.create(root, b"victim", &file(0o600)).unwrap();
    let mine = s.create(root, b"mine", &dir()).unwrap();
    let target = Entry::new(victim.ino, FileKind::File).encode();
    // A well-formed entry naming the victim, but made by user 1000.
    let forged = plant(&s, mine.ino, "evil", &target, 1000);
    // The same made by root, but as an object path, or not canonical.
    plant(&s, mine.ino, "path", &format!("../{:x}", victim.ino), 0);
    plant(&s, mine.ino, "padded", &format!("f0{:x}", victim.ino), 0);
    // A hard link of a genuine entry, and a plain file in place of one.
    fs::hard_link(
        object(&s, root).join("victim"),
        object(&s, mine.ino).join("hard"),
    )
    .unwrap();
    fs::write(object(&s, mine.ino).join("file"), &target).unwrap();
    for name in ["evil", "path", "padded", "hard", "file"] {
        assert_eq!(
            lookup(&s, mine.ino, name.as_bytes()).err(),
            Some(libc::EIO),
            "{name}"
        );
        let rm = s.remove_entry(mine.ino, name.as_bytes(), RemoveWhat::NonDir, None);
        assert_eq!(no(rm).map(|_| ()), Err(libc::EIO), "{name}");
    }
    assert!(listed(&s, mine.ino).is_empty());
    // Nothing was removed, and the victim keeps its one link and its data.
    assert!(forged.symlink_metadata().is_ok());
    let hard = object(&s, mine.ino).join("hard");
    assert!(hard.symlink_metadata().is_ok());
    assert_eq!(s.getattr(victim.ino).unwrap().nlink, 1);
    // The hard link cannot be told from the genuine entry it shares an inode
    // with: both are refused (logged, naming both) until it is removed.
    assert_eq!(lookup(&s, root, b"victim").err(), Some(libc::EIO));
    fs::remove_file(&hard).unwrap();
    let e = lookup(&s, root, b"victim");
    assert!(
        matches!(e, Ok(KdfsResponse::Entry { ino, .. }) if ino == victim.ino),
        "{e:?}"
    );
}

#[test]
fn an_entry_naming_another_kind_of_object_is_refused() {
    let (_d, s, root) = store();
    let f = s.create(root, b"f", &file(0o600)).unwrap();
    // Made by root (as a damaged disk might have it), but says "directory".
    plant(
        &s,
        root,
        "liar",
        &Entry::new(f.ino, FileKind::Dir).encode(),
        0,
    );
    assert_eq!(lookup(&s, root, b"liar").err(), Some(libc::EIO));
    let rm = s.remove_entry(root, b"liar", RemoveWhat::Dir, None);
    assert_eq!(no(rm).map(|_| ()), Err(libc::EIO));
    assert!(object(&s, root).join("liar").symlink_metadata().is_ok());
    assert_eq!(s.getattr(f.ino).unwrap().nlink, 1);
}

#[test]
fn a_store_other_users_can_reach_is_not_attached() {
    use std::os::unix::fs::PermissionsExt;
    let (d, s, _root) = store();
    drop(s);
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let e = Store::open(d.path(), 1, None).err().unwrap().to_string();
    assert!(e.contains("mode 0755") && e.contains("chmod 700"), "{e}");
    assert!(Store::view(d.path(), 1).is_err());
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(d.path().join(INODES), Some(1000), None).unwrap();
    let e = Store::open(d.path(), 1, None).err().unwrap().to_string();
    assert!(
        e.contains("inodes: owned by uid 1000") && e.contains("chown root"),
        "{e}"
    );
}
