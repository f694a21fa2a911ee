//! Unit tests of fsck.kdfs on crafted stores: stores made by the real store
//! code (requests as krgd serves them), then left as a crash between two
//! steps would leave them (here), or damaged by hand (`damage`).

mod damage;
mod stripes;

use std::fs;
use std::path::PathBuf;

use krg_proto::kdfs::{
    inode_local, Attr, FileKind, InodeId, KdfsRequest as Q, KdfsResponse as A, NewInode,
};

use super::*;
use crate::format::{mkfs, MkfsOptions};
use crate::store::Store;

fn new(kind: FileKind) -> NewInode {
    NewInode {
        kind,
        perm: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        target: None,
    }
}

/// A two-node file system (root on node 1), both stores in one tempdir.
struct Fs {
    _d: tempfile::TempDir,
    dirs: [PathBuf; 2],
    stores: Option<[Store; 2]>,
    root: InodeId,
}

impl Fs {
    fn new() -> Fs {
        let d = tempfile::tempdir().unwrap();
        let dirs = [d.path().join("n1"), d.path().join("n2")];
        for (i, p) in dirs.iter().enumerate() {
            fs::create_dir(p).unwrap();
            mkfs(&MkfsOptions {
                dir: p.clone(),
                node: i as u32 + 1,
                root_node: 1,
                force: false,
                replicas: 1,
            })
            .unwrap();
        }
        let s1 = Store::open(&dirs[0], 1, None).unwrap();
        let fs_id = s1.superblock().fs_id;
        let s2 = Store::open(&dirs[1], 2, Some(fs_id)).unwrap();
        let root = match s1.handle(Q::Root) {
            A::Root(r) => r,
            other => panic!("{other:?}"),
        };
        Fs {
            _d: d,
            dirs,
            stores: Some([s1, s2]),
            root,
        }
    }

    fn s(&self, node: usize) -> &Store {
        &self.stores.as_ref().unwrap()[node - 1]
    }

    fn ask(&self, node: usize, q: Q) -> A {
        match self.s(node).handle(q) {
            A::Errno(e) => panic!("errno {e}"),
            a => a,
        }
    }

    /// Create `name` in `dir` (on the directory's node).
    fn create(&self, node: usize, dir: InodeId, name: &str, kind: FileKind) -> Attr {
        let q = Q::Create {
            dir,
            name: name.into(),
            new: new(kind),
            open: None,
        };
        match self.ask(node, q) {
            A::Created { attr, .. } => attr,
            other => panic!("{other:?}"),
        }
    }

    /// An inode made on `node`, in no directory (step 1 of a cross-node create).
    fn make(&self, node: usize, kind: FileKind) -> Attr {
        match self.ask(
            node,
            Q::MakeInode {
                new: new(kind),
                open: None,
                replicas: None,
            },
        ) {
            A::Created { attr, .. } => attr,
            other => panic!("{other:?}"),
        }
    }

    fn add_entry(&self, node: usize, dir: InodeId, name: &str, a: &Attr) {
        let q = Q::AddEntry {
            dir,
            name: name.into(),
            ino: a.ino,
            kind: a.kind,
            replace: false,
        };
        self.ask(node, q);
    }

    fn object(&self, node: usize, ino: InodeId) -> PathBuf {
        self.dirs[node - 1]
            .join("inodes")
            .join(format!("{:x}", inode_local(ino)))
    }

    /// Stop serving (fsck refuses a store in use).
    fn stop(&mut self) {
        self.stores = None;
    }

    fn fsck(&self, which: &[usize], repair: bool) -> Report {
        let dirs = which.iter().map(|&n| self.dirs[n - 1].clone()).collect();
        run(&Options {
            dirs,
            with: vec![],
            repair,
        })
        .unwrap()
    }
}

fn kinds(r: &Report) -> Vec<Problem> {
    r.findings.iter().map(|f| f.problem).collect()
}

/// Repair, then check that a second run finds the store clean.
fn repair_then_clean(fs: &Fs, which: &[usize]) -> Report {
    let r = fs.fsck(which, true);
    assert_eq!(r.exit_code(), EXIT_FIXED, "{r:#?}");
    let again = fs.fsck(which, false);
    assert_eq!(again.exit_code(), EXIT_CLEAN, "{again:#?}");
    r
}

#[test]
fn a_healthy_file_system_is_clean() {
    let mut fs = Fs::new();
    let d = fs.create(1, fs.root, "d", FileKind::Dir);
    let f = fs.create(1, d.ino, "f", FileKind::File);
    // A directory and a hard link across nodes, made in the right order.
    let e = fs.make(2, FileKind::Dir);
    fs.add_entry(1, fs.root, "e", &e);
    fs.ask(1, Q::IncLink { ino: f.ino });
    fs.add_entry(2, e.ino, "f2", &f);
    fs.stop();
    for which in [&[1, 2][..], &[1], &[2]] {
        let r = fs.fsck(which, false);
        assert_eq!(r.exit_code(), EXIT_CLEAN, "{which:?}: {r:#?}");
    }
    assert!(fs.fsck(&[1, 2], false).complete);
    assert!(!fs.fsck(&[1], false).complete);
}

#[test]
fn an_orphan_is_found_with_every_store_and_moved_to_lost_found() {
    let mut fs = Fs::new();
    // Step 1 of a create in another node's directory, then the crash.
    let o = fs.make(2, FileKind::File);
    fs::write(fs.object(2, o.ino), b"precious").unwrap();
    fs.stop();
    // Node 2 alone cannot know that no other node names it.
    let alone = fs.fsck(&[2], true);
    assert_eq!(alone.exit_code(), EXIT_CLEAN, "{alone:#?}");
    assert!(alone
        .notes
        .iter()
        .any(|n| n.contains("1 inodes have no name")));
    assert!(fs.object(2, o.ino).exists());
    let r = fs.fsck(&[1, 2], false);
    assert_eq!(kinds(&r), [Problem::Orphan]);
    assert_eq!(r.exit_code(), EXIT_LEFT);
    assert!(fs.object(2, o.ino).exists(), "-n changes nothing");
    repair_then_clean(&fs, &[1, 2]);
    let kept = fs.dirs[1]
        .join("lost+found")
        .join(format!("{:x}", inode_local(o.ino)));
    assert_eq!(fs::read(kept).unwrap(), b"precious");
    assert!(!fs.object(2, o.ino).exists());
}

#[test]
fn an_orphan_directory_takes_its_unreachable_files_along() {
    let mut fs = Fs::new();
    let d = fs.make(2, FileKind::Dir);
    let f = fs.create(2, d.ino, "inside", FileKind::File);
    fs.stop();
    let r = fs.fsck(&[1, 2], false);
    assert_eq!(kinds(&r), [Problem::Orphan, Problem::Orphan], "{r:#?}");
    repair_then_clean(&fs, &[1, 2]);
    let lf = fs.dirs[1].join("lost+found");
    assert!(lf
        .join(format!("{:x}", inode_local(d.ino)))
        .join("inside")
        .is_symlink());
    assert!(lf.join(format!("{:x}", inode_local(f.ino))).is_file());
}

#[test]
fn a_second_name_raises_the_link_count() {
    let mut fs = Fs::new();
    let d = fs.create(1, fs.root, "d", FileKind::Dir);
    let f = fs.create(1, fs.root, "f", FileKind::File);
    // A rename across nodes that stopped after its first step: the new
    // name is in (node 2's directory), the old one not yet removed.
    let r2 = fs.make(2, FileKind::Dir);
    fs.add_entry(1, fs.root, "r2", &r2);
    fs.add_entry(2, r2.ino, "g", &f);
    // The same, within node 1 alone (visible to a one-store check).
    fs.add_entry(1, d.ino, "f-again", &f);
    fs.stop();
    let alone = fs.fsck(&[1], false);
    assert_eq!(kinds(&alone), [Problem::LinkCount], "{alone:#?}");
    assert!(alone.findings[0].message.contains("link count 1, 2 names"));
    let r = repair_then_clean(&fs, &[1, 2]);
    assert_eq!(kinds(&r), [Problem::LinkCount]);
    assert!(
        r.findings[0].message.contains("link count 1, 3 names"),
        "{r:#?}"
    );
    let fs2 = Fs::reopen(fs);
    match fs2.ask(1, Q::GetAttr { ino: f.ino }) {
        A::Attr(a) => assert_eq!(a.nlink, 3),
        other => panic!("{other:?}"),
    }
}

impl Fs {
    /// Serve the stores again (after fsck).
    fn reopen(mut fs: Fs) -> Fs {
        let s1 = Store::open(&fs.dirs[0], 1, None).unwrap();
        let s2 = Store::open(&fs.dirs[1], 2, Some(s1.superblock().fs_id)).unwrap();
        fs.stores = Some([s1, s2]);
        fs
    }
}

#[test]
fn a_directory_named_twice_keeps_its_newest_name() {
    let mut fs = Fs::new();
    let d = fs.create(1, fs.root, "old", FileKind::Dir);
    let r2 = fs.make(2, FileKind::Dir);
    fs.add_entry(1, fs.root, "r2", &r2);
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs.add_entry(2, r2.ino, "new", &d);
    fs.stop();
    let r = repair_then_clean(&fs, &[1, 2]);
    assert!(kinds(&r).contains(&Problem::SecondName), "{r:#?}");
    assert!(kinds(&r).contains(&Problem::SubdirCount), "{r:#?}");
    let fs = Fs::reopen(fs);
    let found = |node, dir, name: &str| {
        !matches!(
            fs.s(node).handle(Q::Lookup {
                dir,
                name: name.into()
            }),
            A::Errno(_)
        )
    };
    assert!(!found(1, fs.root, "old"));
    assert!(found(2, r2.ino, "new"));
    match fs.ask(1, Q::GetAttr { ino: fs.root }) {
        A::Attr(a) => assert_eq!(a.nlink, 3, "root: . + .. + r2"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn entries_naming_missing_inodes_are_removed() {
    let mut fs = Fs::new();
    let gone = fs.create(1, fs.root, "gone", FileKind::File);
    let sub = fs.create(1, fs.root, "sub", FileKind::Dir);
    // rmdir's first step (the object) done, not its second (the entry).
    fs::remove_file(fs.object(1, gone.ino)).unwrap();
    fs::remove_dir(fs.object(1, sub.ino)).unwrap();
    // A create across nodes whose inode was dropped after its entry went in.
    let r2 = fs.make(2, FileKind::Dir);
    fs.add_entry(1, fs.root, "r2", &r2);
    let lost = fs.make(1, FileKind::File);
    fs.add_entry(2, r2.ino, "x", &lost);
    fs::remove_file(fs.object(1, lost.ino)).unwrap();
    fs.stop();
    let alone = fs.fsck(&[1], false);
    // The subdirectory count drops too (sub's entry goes).
    let mut k = kinds(&alone);
    k.sort_by_key(|p| format!("{p:?}"));
    assert_eq!(
        k,
        [
            Problem::DanglingEntry,
            Problem::DanglingEntry,
            Problem::SubdirCount
        ],
        "{alone:#?}"
    );
    assert_eq!(fs.fsck(&[2], false).exit_code(), EXIT_CLEAN);
    let r = repair_then_clean(&fs, &[1, 2]);
    assert_eq!(r.count(Problem::DanglingEntry), 3, "{r:#?}");
}

#[test]
fn a_node_checks_its_store_with_the_others_exports() {
    let mut fs = Fs::new();
    // Node 1: an orphan, and a file whose second name is in node 2's
    // directory. Node 2: an orphan of its own.
    let o1 = fs.make(1, FileKind::File);
    let f = fs.create(1, fs.root, "f", FileKind::File);
    let r2 = fs.make(2, FileKind::Dir);
    fs.add_entry(1, fs.root, "r2", &r2);
    fs.add_entry(2, r2.ino, "g", &f);
    let o2 = fs.make(2, FileKind::File);
    fs.stop();
    let out = fs._d.path().join("n2.export");
    export(&fs.dirs[1], &out).unwrap();
    let with = |repair| {
        run(&Options {
            dirs: vec![fs.dirs[0].clone()],
            with: vec![out.clone()],
            repair,
        })
        .unwrap()
    };
    let r = with(false);
    assert!(r.complete);
    let mut k = kinds(&r);
    k.sort_by_key(|p| format!("{p:?}"));
    // Node 2's orphan is for node 2's run.
    assert_eq!(k, [Problem::LinkCount, Problem::Orphan], "{r:#?}");
    assert_eq!(with(true).exit_code(), EXIT_FIXED);
    assert_eq!(with(false).exit_code(), EXIT_CLEAN);
    assert!(!fs.object(1, o1.ino).exists());
    assert!(fs.object(2, o2.ino).exists());
    // Node 2's run with node 1's export (taken after node 1's repair).
    let out1 = fs._d.path().join("n1.export");
    export(&fs.dirs[0], &out1).unwrap();
    let r = run(&Options {
        dirs: vec![fs.dirs[1].clone()],
        with: vec![out1.clone()],
        repair: true,
    })
    .unwrap();
    assert_eq!(kinds(&r), [Problem::Orphan], "{r:#?}");
    assert!(!fs.object(2, o2.ino).exists());
    // Garbage is no export.
    fs::write(&out1, b"{}").unwrap();
    let e = run(&Options {
        dirs: vec![fs.dirs[1].clone()],
        with: vec![out1],
        repair: false,
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("not a store exported by fsck.kdfs --export"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn a_directory_keeps_its_reachable_name_over_a_newer_unreachable_one() {
    let mut fs = Fs::new();
    let d = fs.create(1, fs.root, "d", FileKind::Dir);
    // A directory nothing names, holding a newer name of d.
    let x = fs.make(2, FileKind::Dir);
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs.add_entry(2, x.ino, "again", &d);
    fs.stop();
    let r = repair_then_clean(&fs, &[1, 2]);
    let mut k = kinds(&r);
    k.sort_by_key(|p| format!("{p:?}"));
    // x's subdirectory count is not fixed: x goes to lost+found.
    assert_eq!(k, [Problem::Orphan, Problem::SecondName], "{r:#?}");
    assert!(r.findings.iter().all(|f| matches!(f.repaired, Some(Ok(_)))));
    let fs = Fs::reopen(fs);
    assert!(!matches!(
        fs.s(1).handle(Q::Lookup {
            dir: fs.root,
            name: b"d".to_vec()
        }),
        A::Errno(_)
    ));
    assert!(fs.dirs[1]
        .join("lost+found")
        .join(format!("{:x}", inode_local(x.ino)))
        .is_dir());
}

#[test]
fn a_count_too_high_is_lowered_only_with_every_store() {
    let mut fs = Fs::new();
    let f = fs.create(1, fs.root, "f", FileKind::File);
    let r2 = fs.make(2, FileKind::Dir);
    fs.add_entry(1, fs.root, "r2", &r2);
    // A link into r2 cut after its first step (the count).
    fs.ask(1, Q::IncLink { ino: f.ino });
    fs.stop();
    // Node 1 alone: the second name may be in r2, on node 2.
    let alone = fs.fsck(&[1], false);
    assert_eq!(alone.exit_code(), EXIT_CLEAN, "{alone:#?}");
    assert!(!alone.complete);
    let r = repair_then_clean(&fs, &[1, 2]);
    assert_eq!(kinds(&r), [Problem::LinkCount]);
    assert!(
        r.findings[0].message.contains("link count 2, 1 names"),
        "{r:#?}"
    );
    let fs = Fs::reopen(fs);
    match fs.ask(1, Q::GetAttr { ino: f.ino }) {
        A::Attr(a) => assert_eq!(a.nlink, 1),
        other => panic!("{other:?}"),
    }
}
