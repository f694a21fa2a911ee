//! fsck.kdfs on stores damaged by hand or by another user, and on input
//! that is no store: each finding that is no crash leftover, and the
//! refusals.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use krg_proto::kdfs::{inode_local, FileKind, InodeId, KdfsRequest as Q, KdfsResponse as A};

use super::{kinds, repair_then_clean, Fs};
use crate::fsck::*;
use crate::store::Store;

#[test]
fn entries_the_store_did_not_write_go_to_lost_found() {
    use std::os::unix::fs::symlink;
    let mut fs = Fs::new();
    let f = fs.create(1, fs.root, "f", FileKind::File);
    let d = fs.create(1, fs.root, "d", FileKind::Dir);
    let root_obj = fs.object(1, fs.root);
    symlink("garbage", root_obj.join("planted")).unwrap();
    fs::write(root_obj.join("plain"), b"x").unwrap();
    // An entry saying "directory" for a regular file.
    symlink(format!("d{:x}", f.ino), fs.object(1, d.ino).join("liar")).unwrap();
    fs.stop();
    let r = fs.fsck(&[1], false);
    assert_eq!(r.count(Problem::BadEntry), 3, "{r:#?}");
    repair_then_clean(&fs, &[1]);
    let lf = fs.dirs[0].join("lost+found");
    let of = |d: InodeId| lf.join(format!("entries-{d:x}"));
    assert!(of(fs.root).join("planted").is_symlink());
    assert_eq!(fs::read(of(fs.root).join("plain")).unwrap(), b"x");
    assert!(of(d.ino).join("liar").is_symlink());
    assert!(fs.object(1, f.ino).exists());
}

#[test]
fn strays_temporaries_and_counts_are_repaired() {
    use std::os::unix::fs::symlink;
    let mut fs = Fs::new();
    let f = fs.create(1, fs.root, "f", FileKind::File);
    let inodes = fs.dirs[0].join("inodes");
    fs::write(inodes.join("hello.txt"), b"stray").unwrap();
    symlink(
        format!("f{:x}", f.ino),
        inodes.join(".tmp-0123456789abcdef"),
    )
    .unwrap();
    // A link count of the wrong size, a wrong subdirectory count.
    let ifd = fs::File::open(&inodes).unwrap();
    let fd = std::os::fd::AsFd::as_fd(&ifd);
    let name = |ino: InodeId| std::ffi::OsString::from(format!("{:x}", inode_local(ino)));
    let key = std::ffi::CString::new(crate::store::NLINK_XATTR).unwrap();
    crate::store::sys::set_xattr(fd, &name(f.ino), &key, b"xy", 0).unwrap();
    crate::store::sys::set_u64_xattr(fd, &name(fs.root), crate::store::NSUB_XATTR, 5).unwrap();
    fs.stop();
    let r = fs.fsck(&[1], false);
    let mut k = kinds(&r);
    k.sort_by_key(|p| format!("{p:?}"));
    assert_eq!(
        k,
        [
            Problem::LinkCount,
            Problem::Stray,
            Problem::SubdirCount,
            Problem::Temporary
        ],
        "{r:#?}"
    );
    repair_then_clean(&fs, &[1]);
    assert_eq!(
        fs::read(fs.dirs[0].join("lost+found/hello.txt")).unwrap(),
        b"stray"
    );
    assert!(!inodes.join(".tmp-0123456789abcdef").exists());
}

#[test]
fn meta_files_and_permissions_are_repaired() {
    let mut fs = Fs::new();
    let f = fs.create(1, fs.root, "f", FileKind::File);
    fs.stop();
    let top = &fs.dirs[0];
    // The counter below an object (it would be handed out again), the
    // root meta-file damaged, the store opened up to other users.
    crate::format::StoreDir::open(top)
        .unwrap()
        .write_ino_next(1)
        .unwrap();
    let meta = top.join("root.meta");
    let mut bytes = fs::read(&meta).unwrap();
    bytes[17] ^= 0xff;
    fs::write(&meta, bytes).unwrap();
    fs::set_permissions(top, fs::Permissions::from_mode(0o755)).unwrap();
    let r = fs.fsck(&[1], false);
    let mut k = kinds(&r);
    k.sort_by_key(|p| format!("{p:?}"));
    assert_eq!(
        k,
        [Problem::Allocator, Problem::NotPrivate, Problem::Root],
        "{r:#?}"
    );
    repair_then_clean(&fs, &[1, 2]);
    let sd = crate::format::StoreDir::open(top).unwrap();
    assert!(sd.read_ino_next().unwrap() > inode_local(f.ino));
    assert_eq!(sd.read_root_meta().unwrap().root, fs.root);
    let fs = Fs::reopen(fs);
    assert!(matches!(fs.ask(1, Q::GetAttr { ino: f.ino }), A::Attr(_)));
}

#[test]
fn bad_input_and_a_store_in_use_are_refused_in_one_line() {
    let d = tempfile::tempdir().unwrap();
    let err = |p: &Path| {
        run(&Options {
            dirs: vec![p.to_path_buf()],
            with: vec![],
            repair: true,
        })
        .unwrap_err()
        .to_string()
    };
    let e = err(&d.path().join("missing"));
    assert!(e.contains("No such file"), "{e}");
    fs::write(d.path().join("file"), b"x").unwrap();
    assert!(err(&d.path().join("file")).contains("is not a directory"));
    let e = err(d.path());
    assert!(
        e.contains("kdfs.sb: missing (is the directory formatted"),
        "{e}"
    );
    fs::write(d.path().join("kdfs.sb"), b"garbage garbage garbage").unwrap();
    let e = err(d.path());
    assert!(e.contains("bad magic"), "{e}");
    let fs = Fs::new();
    let e = err(&fs.dirs[0]);
    assert!(e.contains("is in use"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    // Two stores of one node, or of two file systems.
    let other = Fs::new();
    let mut fs = fs;
    fs.stop();
    let mut other = other;
    other.stop();
    let two = |a: &Path, b: &Path| {
        run(&Options {
            dirs: vec![a.into(), b.into()],
            with: vec![],
            repair: false,
        })
        .unwrap_err()
        .to_string()
    };
    assert!(two(&fs.dirs[0], &other.dirs[0]).contains("two stores of node 1"));
    assert!(two(&fs.dirs[0], &other.dirs[1]).contains("different file systems"));
}

#[test]
fn krgd_cannot_serve_a_store_fsck_is_checking() {
    let mut fs = Fs::new();
    fs.stop();
    let fsck = crate::format::StoreDir::open(&fs.dirs[0]).unwrap();
    fsck.lock_offline().unwrap();
    let e = Store::open(&fs.dirs[0], 1, None).err().unwrap().to_string();
    assert!(e.contains("is being checked by fsck.kdfs"), "{e}");
    drop(fsck);
    Store::open(&fs.dirs[0], 1, None).unwrap();
}

#[test]
fn a_lost_found_another_user_made_is_taken_back_before_use() {
    use std::os::unix::fs::MetadataExt;
    let mut fs = Fs::new();
    let o = fs.make(2, FileKind::File);
    fs.stop();
    // Planted while the store was open to others: theirs, world-writable.
    let lf = fs.dirs[1].join("lost+found");
    fs::create_dir(&lf).unwrap();
    std::os::unix::fs::chown(&lf, Some(1000), Some(1000)).unwrap();
    fs::set_permissions(&lf, fs::Permissions::from_mode(0o777)).unwrap();
    repair_then_clean(&fs, &[1, 2]);
    let m = fs::metadata(&lf).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o700));
    assert!(lf.join(format!("{:x}", inode_local(o.ino))).exists());
    // A symlink there is never followed.
    fs::remove_dir_all(&lf).unwrap();
    let elsewhere = fs._d.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &lf).unwrap();
    let fs2 = Fs::reopen(fs);
    let o2 = fs2.make(2, FileKind::File);
    let mut fs = fs2;
    fs.stop();
    let r = fs.fsck(&[1, 2], true);
    assert_eq!(r.exit_code(), EXIT_LEFT, "{r:#?}");
    assert!(fs.object(2, o2.ino).exists());
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}
