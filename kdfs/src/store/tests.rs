//! Store unit tests on a formatted temporary directory (single node).

use krg_proto::kdfs::{FileKind, KdfsRequest, KdfsResponse, NewInode, RemoveWhat};

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
    })
    .unwrap();
    let s = Store::open(d.path(), 1, None).unwrap();
    let root = s.root.unwrap();
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
