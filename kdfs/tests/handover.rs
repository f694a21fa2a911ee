//! `krgadm nodes del` of a live node moves its kDFS data to another member
//! before it goes: every file, directory, symlink and fifo it kept is
//! reached under the same names, with the same contents and attributes,
//! once its krgd is gone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{bin_dir, run, wait_until, xattrs, Cluster};

/// The node that keeps inode `ino` (kDFS ids are the inode numbers).
fn owner(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino() >> 48
}

/// What a user sees of one name: type and mode, owner, size, mtime, link
/// count, and the data (a file's bytes, a symlink's target).
type Seen = (u32, u32, u32, u64, i64, i64, u64, Vec<u8>);

fn seen(p: &Path) -> Seen {
    let m = fs::symlink_metadata(p).unwrap();
    let data = if m.file_type().is_symlink() {
        fs::read_link(p).unwrap().as_os_str().as_bytes().to_vec()
    } else if m.is_file() {
        fs::read(p).unwrap()
    } else {
        Vec::new()
    };
    let nlink = if m.is_dir() { 0 } else { m.nlink() };
    (
        m.mode(),
        m.uid(),
        m.gid(),
        if m.is_dir() { 0 } else { m.size() },
        m.mtime(),
        m.mtime_nsec(),
        nlink,
        data,
    )
}

/// Every name under `top`, relative, with what it shows.
fn tree(top: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut all = BTreeMap::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            all.insert(p.strip_prefix(top).unwrap().to_path_buf(), seen(&p));
        }
    }
    all
}

/// `got` is `want`; if not, the names that differ and how (without their
/// data, which may be large).
fn same_tree(got: &BTreeMap<PathBuf, Seen>, want: &BTreeMap<PathBuf, Seen>, what: &str) {
    let brief =
        |s: Option<&Seen>| s.map(|s| (s.0, s.1, s.2, s.3, s.4, s.5, s.6, s.7.len(), crc(&s.7)));
    let differ: Vec<String> = got
        .keys()
        .chain(want.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|p| got.get(*p) != want.get(*p))
        .map(|p| {
            format!(
                "{}: got {:?}, want {:?}",
                p.display(),
                brief(got.get(p)),
                brief(want.get(p))
            )
        })
        .collect();
    assert!(differ.is_empty(), "{what}:\n{}", differ.join("\n"));
}

/// A short digest of `data`, to tell two contents apart in a message.
fn crc(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// `krgadm nodes del -n NODES` through node index `i`, which must succeed
/// (a leave never fails).
fn nodes_del(c: &Cluster, i: usize, nodes: &str) {
    let out = krgadm(c, i, &["nodes", "del", "-n", nodes]);
    assert!(
        out.status.success(),
        "nodes del: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `krgadm nodes del -n 3` through node 1, on a thread of its own (a
/// pause point holds node 3's pass meanwhile).
fn nodes_del_held(c: &Cluster) -> std::thread::JoinHandle<std::process::Output> {
    let sock = c.nodes[0].sock.clone();
    std::thread::spawn(move || {
        run(Command::new(bin_dir().join("krgadm"))
            .arg("--socket")
            .arg(&sock)
            .args(["nodes", "del", "-n", "3"]))
    })
}

fn krgadm(c: &Cluster, i: usize, args: &[&str]) -> std::process::Output {
    run(Command::new(bin_dir().join("krgadm"))
        .arg("--socket")
        .arg(&c.nodes[i].sock)
        .args(args))
}

/// Node 3's files (in its directories and in node 1's), a directory of
/// node 1 inside node 3's, hard links across nodes: all there after
/// `nodes del -n 3`, and still there once node 3's krgd is killed. Then
/// node 1, the root node, leaves: the root directory moves too.
#[test]
fn a_leaving_node_hands_its_files_over() {
    let mut c = Cluster::with_kdfs(3);
    let (m1, m2, m3) = (
        c.mnt(0).to_path_buf(),
        c.mnt(1).to_path_buf(),
        c.mnt(2).to_path_buf(),
    );
    // Made through node 3's mount: kept by node 3.
    fs::create_dir(m3.join("d3")).unwrap();
    fs::create_dir(m3.join("d3/sub")).unwrap();
    let mut f = fs::File::create(m3.join("d3/big")).unwrap();
    let block: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 251) as u8).collect();
    f.write_all(&block).unwrap();
    // a hole of 2 MiB, then a tail
    f.seek(SeekFrom::Start(3 << 20)).unwrap();
    f.write_all(b"tail after a hole").unwrap();
    f.sync_all().unwrap();
    drop(f);
    // chown first: it clears the set-uid bit
    std::os::unix::fs::lchown(m3.join("d3/big"), Some(1234), Some(4321)).unwrap();
    fs::set_permissions(m3.join("d3/big"), fs::Permissions::from_mode(0o4750)).unwrap();
    xattrs::set(&m3.join("d3/big"), "user.color", b"blue", 0).unwrap();
    fs::hard_link(m3.join("d3/big"), m3.join("d3/sub/big-again")).unwrap();
    fs::write(m3.join("d3/sub/small"), b"small file of node 3").unwrap();
    symlink("../big", m3.join("d3/sub/up")).unwrap();
    let fifo = xattrs::c(&m3.join("d3/pipe"));
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o620) }, 0);
    fs::set_permissions(m3.join("d3/sub"), fs::Permissions::from_mode(0o2750)).unwrap();
    // Node 1's directory naming node 3's inodes, and node 1's inside node 3's.
    fs::create_dir(m1.join("d1")).unwrap();
    fs::write(m3.join("d1/from3"), b"node 3's file in node 1's directory").unwrap();
    fs::hard_link(m3.join("d3/sub/small"), m3.join("d1/small-link")).unwrap();
    fs::create_dir(m1.join("d3/of1")).unwrap();
    fs::write(
        m1.join("d3/of1/kept"),
        b"node 1's file under node 3's directory",
    )
    .unwrap();
    fs::write(
        m3.join("d3/of1/back"),
        b"node 3's file under node 1's directory",
    )
    .unwrap();
    Command::new("sync").status().unwrap();

    for p in [
        "d3",
        "d3/big",
        "d3/sub/up",
        "d3/pipe",
        "d1/from3",
        "d3/of1/back",
    ] {
        assert_eq!(owner(&m1.join(p)), 3, "{p} is kept by node 3 before");
    }
    assert_eq!(owner(&m1.join("d3/of1")), 1);
    let before = tree(&m1);
    assert!(before.len() >= 11, "{before:?}");

    // Open through node 1 across the hand-over.
    let mut late = fs::OpenOptions::new()
        .append(true)
        .open(m1.join("d1/from3"))
        .unwrap();

    nodes_del(&c, 0, "3");
    // A write through the old descriptor fails: it would be lost.
    assert!(late.write_all(b"written too late").is_err());
    drop(late);
    let log3 = || fs::read_to_string(c.nodes[2].data.join("krgd.log")).unwrap_or_default();
    assert!(log3().contains("kdfs: handed over"), "{}", log3());

    // The originals are gone from node 3's store.
    let left = fs::read_dir(c.nodes[2].store.join("inodes"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "objects left in node 3's store");
    // Node 3 leaves for good: nothing may depend on it any more.
    c.umount(2);
    c.kill_krgd(2);
    for m in [&m1, &m2] {
        let after = tree(m);
        assert_eq!(
            after,
            before,
            "what {} shows after the hand-over",
            m.display()
        );
        for p in after.keys() {
            assert_ne!(owner(&m.join(p)), 3, "{} still on node 3", p.display());
        }
        assert_eq!(
            xattrs::get(&m.join("d3/big"), "user.color", 64).unwrap(),
            b"blue"
        );
        assert!(fs::symlink_metadata(m.join("d3/pipe"))
            .unwrap()
            .file_type()
            .is_fifo());
        // The hole stayed a hole.
        assert!(fs::metadata(m.join("d3/big")).unwrap().blocks() * 512 < 3 << 20);
    }
    // Hard links are still one file: written through one name, read
    // through the other.
    fs::write(m2.join("d1/small-link"), b"changed through a link").unwrap();
    assert_eq!(
        fs::read(m1.join("d3/sub/small")).unwrap(),
        b"changed through a link"
    );
    // The moved directories take new files.
    fs::write(m2.join("d3/sub/new"), b"new").unwrap();
    wait_until(
        "the new file seen by node 1",
        Duration::from_secs(5),
        || fs::read(m1.join("d3/sub/new")).is_ok_and(|d| d == b"new"),
    );

    // Node 3 back (`nodes add`): its mount takes part again, as a new
    // node's would, its new files on node 3.
    c.start_krgd(2);
    wait_until("node 3 added back", Duration::from_secs(30), || {
        krgadm(&c, 0, &["nodes", "add", "-n", "3"]).status.success()
    });
    wait_until("node 3 sees every member", Duration::from_secs(30), || {
        let out = krgadm(&c, 2, &["nodes", "status"]);
        String::from_utf8_lossy(&out.stdout)
            .matches("online")
            .count()
            == 3
    });
    let out = c.mount(2, "");
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Err(e) = fs::write(m3.join("d3/sub/back"), b"node 3 again") {
        panic!("write through node 3 again: {e}\n{}", c.client_log(2));
    }
    assert_eq!(owner(&m3.join("d3/sub/back")), 3);
    // (node 1's mount holds a node down for 0.5 s after it failed)
    wait_until(
        "node 3's new file read through node 1",
        Duration::from_secs(5),
        || fs::read(m1.join("d3/sub/back")).is_ok_and(|d| d == b"node 3 again"),
    );
    assert_eq!(
        fs::read(m3.join("d3/big")).unwrap(),
        fs::read(m1.join("d3/big")).unwrap()
    );

    // The root node leaves too: its files and the root directory move,
    // every store names the new root node, and the mounts follow.
    fs::write(m1.join("in-root-of-1"), b"node 1's file in the root").unwrap();
    fs::write(m2.join("in-root-of-2"), b"node 2's file in the root").unwrap();
    Command::new("sync").status().unwrap();
    let before = tree(&m2);
    nodes_del(&c, 1, "1");
    let log1 = plain(&fs::read_to_string(c.nodes[0].data.join("krgd.log")).unwrap());
    assert!(log1.contains("kdfs: handed over"), "{log1}");
    let root_node = |i: usize| {
        kdfs::format::read_superblock(&c.nodes[i].store)
            .unwrap()
            .root_node
    };
    let new_root = root_node(1);
    assert_ne!(new_root, 1, "node 2's superblock still names node 1");
    assert_eq!(root_node(2), new_root, "node 3's superblock");
    c.umount(0);
    c.kill_krgd(0);
    for m in [&m2, &m3] {
        same_tree(
            &tree(m),
            &before,
            &format!("{} after the root left", m.display()),
        );
    }
    for p in before.keys() {
        assert_ne!(owner(&m2.join(p)), 1, "{} still on node 1", p.display());
    }
    // The new root takes new names, seen through the other mount, and a
    // new mount finds it.
    fs::write(m2.join("after"), b"made in the new root").unwrap();
    wait_until(
        "the new name seen by node 3",
        Duration::from_secs(5),
        || fs::read(m3.join("after")).is_ok_and(|d| d == b"made in the new root"),
    );
    c.umount(2);
    let out = c.mount(2, "");
    assert!(
        out.status.success(),
        "mount after the root moved: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(m3.join("after")).unwrap(), b"made in the new root");
    assert_eq!(
        fs::read(m3.join("in-root-of-1")).unwrap(),
        b"node 1's file in the root"
    );
    // A store that still names node 1 (as one not attached during the
    // move would): its mount says why it waits, and what to do.
    c.umount(2);
    let store3 = kdfs::format::StoreDir::open(&c.nodes[2].store).unwrap();
    let moved = kdfs::format::read_superblock(&c.nodes[2].store).unwrap();
    let stale = kdfs::format::Superblock {
        root_node: 1,
        ..moved.clone()
    };
    store3.write_superblock(&stale).unwrap();
    let out = c.mount(2, "timeo=1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mounted with a departed root node");
    assert!(
        err.contains("root node 1") && err.contains("is not a member"),
        "{err}"
    );
    store3.write_superblock(&moved).unwrap();
}

/// A log without its colours.
fn plain(log: &str) -> String {
    let mut out = String::new();
    let mut chars = log.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

fn objects(c: &Cluster, i: usize) -> usize {
    fs::read_dir(c.nodes[i].store.join("inodes"))
        .unwrap()
        .count()
}

/// A hand-over that fails midway (a failure point after its first name was
/// pointed at a copy) is undone: the names are node 3's again, the copies
/// are gone, node 3's store takes writes again.
#[test]
fn a_failed_hand_over_is_undone() {
    let c = Cluster::with_kdfs(3);
    let (m1, m3) = (c.mnt(0).to_path_buf(), c.mnt(2).to_path_buf());
    fs::create_dir_all(m3.join("d3/sub")).unwrap();
    fs::write(m3.join("d3/f"), b"node 3's data").unwrap();
    fs::write(m3.join("d3/sub/g"), b"deeper").unwrap();
    fs::create_dir(m1.join("d1")).unwrap();
    fs::hard_link(m3.join("d3/f"), m3.join("d1/f-link")).unwrap();
    // A striped file with units on node 3: they are handed over before
    // the names, and given back by the undo.
    fs::create_dir(m1.join("s")).unwrap();
    kdfsctl_stripe(&[Path::new("64K:3"), &m1.join("s")]);
    fs::write(m1.join("s/f"), pattern(7 * (64 << 10), 3)).unwrap();
    // And one node 3 owns (over 3,1,2), copied with the walk: the other
    // holders' units are renamed to the copy, and back by the undo.
    fs::create_dir(m3.join("d3/st")).unwrap();
    kdfsctl_stripe(&[Path::new("64K:3"), &m3.join("d3/st")]);
    fs::write(m3.join("d3/st/f"), pattern(8 * (64 << 10), 9)).unwrap();
    assert!(kdfsctl_stripe(&[&m1.join("d3/st/f")]).contains("on nodes 3,1,2"));
    let owned_by_3 = fs::metadata(m1.join("d3/st/f")).unwrap().ino();
    Command::new("sync").status().unwrap();
    let before = tree(&m1);
    let kept = (objects(&c, 0), objects(&c, 1));

    fs::write(c.nodes[2].data.join("crash-at"), "fail:handover-repointed").unwrap();
    nodes_del(&c, 0, "3");
    let log3 = plain(&fs::read_to_string(c.nodes[2].data.join("krgd.log")).unwrap());
    assert!(
        log3.contains("the hand-over failed") && log3.contains("undo_failures=0"),
        "{log3}"
    );
    assert!(log3.contains("kdfs: not handed over"), "{log3}");

    same_tree(&tree(&m1), &before, "the tree after the undo");
    for p in ["d3", "d3/f", "d3/sub/g", "d1/f-link"] {
        assert_eq!(owner(&m1.join(p)), 3, "{p} is node 3's again");
    }
    assert_eq!((objects(&c, 0), objects(&c, 1)), kept, "copies left behind");
    assert!(kdfsctl_stripe(&[&m1.join("s/f")]).contains("on nodes 1,2,3"));
    assert!(kdfsctl_stripe(&[&m1.join("d3/st/f")]).contains("on nodes 3,1,2"));
    assert_eq!(
        fs::read_dir(c.nodes[2].store.join("stripes"))
            .unwrap()
            .count(),
        1,
        "node 3's stripe units"
    );
    for (i, copies) in [(0, 1), (1, 2)] {
        let names: Vec<String> = fs::read_dir(c.nodes[i].store.join("stripes"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.contains(&format!("{owned_by_3:016x}")) && names.len() == copies,
            "node {}'s units of node 3's striped file (and no other name): {names:?}",
            i + 1
        );
    }
    // Writable again.
    fs::write(m3.join("d3/f"), b"written after the undo").unwrap();
    assert_eq!(
        fs::read(m3.join("d1/f-link")).unwrap(),
        b"written after the undo"
    );
}

/// The root node's hand-over failing once the target holds the new root
/// (a failure point) is undone: every superblock names node 1 again, the
/// target keeps no root meta-file, and the tree is as it was.
#[test]
fn a_failed_root_hand_over_is_undone() {
    let c = Cluster::with_kdfs(3);
    let (m1, m2) = (c.mnt(0).to_path_buf(), c.mnt(1).to_path_buf());
    fs::create_dir(m1.join("d1")).unwrap();
    fs::write(m1.join("d1/f"), b"node 1's").unwrap();
    fs::write(m1.join("top"), b"in the root").unwrap();
    fs::write(m2.join("of2"), b"node 2's in the root").unwrap();
    Command::new("sync").status().unwrap();
    let before = tree(&m2);

    fs::write(c.nodes[0].data.join("crash-at"), "fail:handover-root-moved").unwrap();
    nodes_del(&c, 1, "1");
    let log1 = plain(&fs::read_to_string(c.nodes[0].data.join("krgd.log")).unwrap());
    assert!(
        log1.contains("the hand-over failed") && log1.contains("undo_failures=0"),
        "{log1}"
    );
    for i in 0..3 {
        let sb = kdfs::format::read_superblock(&c.nodes[i].store).unwrap();
        assert_eq!(sb.root_node, 1, "node {}'s superblock", i + 1);
        let meta = c.nodes[i].store.join("root.meta").exists();
        assert_eq!(meta, i == 0, "node {}'s root meta-file", i + 1);
    }
    // (a mount that followed the root to the target follows it back)
    std::thread::sleep(kdfs::client::root::FOLLOW_EVERY * 2);
    same_tree(&tree(&m2), &before, "the tree after the undo");
    assert_eq!(owner(&m2.join("top")), 1);
}

/// kill -9 of the leaving krgd in the middle of its pass (held by a pause
/// point after its first names were pointed at copies): it is a failed
/// node then, removed at once. Every name still reads what it held or
/// fails (its inode stayed on the dead node); none reads other bytes.
#[test]
fn a_hand_over_cut_by_a_crash_leaves_no_wrong_file() {
    let mut c = Cluster::with_kdfs(3);
    let (m1, m3) = (c.mnt(0).to_path_buf(), c.mnt(2).to_path_buf());
    fs::create_dir(m3.join("d3")).unwrap();
    fs::create_dir(m1.join("d1")).unwrap();
    for i in 0..40 {
        fs::write(m3.join(format!("d3/f{i}")), format!("file {i} of node 3")).unwrap();
        fs::write(m3.join(format!("d1/g{i}")), format!("file {i} in node 1's")).unwrap();
    }
    Command::new("sync").status().unwrap();
    let before = tree(&m1);
    fs::write(
        c.nodes[2].data.join("crash-at"),
        "pause:handover-repointed:20000",
    )
    .unwrap();
    let del = nodes_del_held(&c);
    let log3 = || plain(&fs::read_to_string(c.nodes[2].data.join("krgd.log")).unwrap_or_default());
    wait_until("the pass held mid-way", Duration::from_secs(20), || {
        log3().contains("pause point reached")
    });
    c.umount(2);
    c.kill_krgd(2);
    let out = del.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut moved, mut lost) = (0, 0);
    for (p, seen_before) in &before {
        match fs::symlink_metadata(m1.join(p)) {
            Ok(m) if m.is_file() => match fs::read(m1.join(p)) {
                Ok(data) => {
                    assert_eq!(&data, &seen_before.7, "{} reads other bytes", p.display());
                    moved += 1;
                }
                Err(_) => lost += 1,
            },
            Ok(_) => {}
            Err(_) => lost += 1,
        }
    }
    assert!(moved > 0 && lost > 0, "moved {moved}, lost {lost}");
}

/// Two nodes leaving at once, each naming the other's inodes in its
/// directories: they hand over in turn, and everything ends on node 1.
#[test]
fn two_leaving_nodes_hand_over_in_turn() {
    let mut c = Cluster::with_kdfs(3);
    let (m1, m2, m3) = (
        c.mnt(0).to_path_buf(),
        c.mnt(1).to_path_buf(),
        c.mnt(2).to_path_buf(),
    );
    fs::create_dir(m2.join("d2")).unwrap();
    fs::create_dir(m3.join("d2/d3")).unwrap();
    fs::write(m2.join("d2/d3/of2"), b"node 2's file in node 3's directory").unwrap();
    fs::write(m3.join("d2/of3"), b"node 3's file in node 2's directory").unwrap();
    Command::new("sync").status().unwrap();
    assert_eq!((owner(&m1.join("d2")), owner(&m1.join("d2/d3"))), (2, 3));
    let before = tree(&m1);

    nodes_del(&c, 0, "2:3");
    for i in [1, 2] {
        let log = fs::read_to_string(c.nodes[i].data.join("krgd.log")).unwrap();
        assert!(log.contains("kdfs: handed over"), "node {}: {log}", i + 1);
    }
    for i in [1, 2] {
        c.umount(i);
        c.kill_krgd(i);
    }
    assert_eq!(tree(&m1), before);
    for p in before.keys() {
        assert_eq!(owner(&m1.join(p)), 1, "{}", p.display());
    }
}

/// While node 3 hands over, its store refuses every change (EROFS), so
/// that what is copied is what stays; other nodes' files are not affected.
#[test]
fn a_store_being_handed_over_is_read_only() {
    let c = Cluster::with_kdfs(3);
    let (m1, m3) = (c.mnt(0).to_path_buf(), c.mnt(2).to_path_buf());
    fs::create_dir(m3.join("d3")).unwrap();
    fs::write(m3.join("d3/f"), b"before the hand-over").unwrap();
    fs::write(m1.join("of1"), b"node 1's").unwrap();
    // Hold the pass 3 s once the store is read-only.
    fs::write(
        c.nodes[2].data.join("crash-at"),
        "pause:handover-read-only:3000",
    )
    .unwrap();
    let del = nodes_del_held(&c);
    let log3 = || plain(&fs::read_to_string(c.nodes[2].data.join("krgd.log")).unwrap_or_default());
    wait_until("node 3's store read-only", Duration::from_secs(20), || {
        log3().contains("pause point reached")
    });
    // Meanwhile every member shows node 3 as leaving.
    for i in 0..2 {
        let out = krgadm(&c, i, &["nodes", "status"]);
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        let row3 = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some("3"));
        assert!(row3.is_some_and(|r| r.contains("leaving")), "{table}");
    }
    let erofs = |r: std::io::Result<()>| {
        assert_eq!(r.map_err(|e| e.raw_os_error()), Err(Some(libc::EROFS)));
    };
    erofs(fs::write(m1.join("d3/f"), b"changed meanwhile"));
    erofs(fs::write(m1.join("d3/new"), b"made meanwhile"));
    erofs(fs::set_permissions(
        m1.join("d3/f"),
        fs::Permissions::from_mode(0o600),
    ));
    erofs(fs::rename(m1.join("d3/f"), m1.join("d3/g")));
    fs::write(m1.join("of1"), b"node 1's, changed").unwrap();
    let out = del.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log3().contains("kdfs: handed over"), "{}", log3());
    assert_eq!(fs::read(m1.join("d3/f")).unwrap(), b"before the hand-over");
    assert_ne!(owner(&m1.join("d3/f")), 3);
    assert_eq!(fs::read(m1.join("of1")).unwrap(), b"node 1's, changed");
}

fn kdfsctl_stripe(args: &[&Path]) -> String {
    let out = run(Command::new(bin_dir().join("kdfsctl"))
        .arg("stripe")
        .args(args));
    assert!(
        out.status.success(),
        "kdfsctl stripe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8 ^ seed).collect()
}

/// Node 3 holds units of striped files of nodes 1 and 2: its units go to
/// node 4 where it holds none of the file, else to a holder already there
/// (which then holds two positions), and the owners' layouts name them.
/// A descriptor opened before the leave reads and writes on (it takes the
/// new layout when node 3 answers ESTALE). Node 3 comes back and takes
/// node 4's units when node 4 leaves. Then node 2 leaves, owning a
/// striped file: the file moves, and the other holders' units with it.
#[test]
fn a_leaving_holder_hands_its_stripe_units_over() {
    const UNIT: usize = 64 << 10;
    let mut c = Cluster::with_kdfs(4);
    let m: Vec<PathBuf> = (0..4).map(|i| c.mnt(i).to_path_buf()).collect();
    fs::create_dir(m[0].join("s3")).unwrap();
    fs::create_dir(m[0].join("s4")).unwrap();
    kdfsctl_stripe(&[Path::new("64K:3"), &m[0].join("s3")]);
    kdfsctl_stripe(&[Path::new("64K:4"), &m[0].join("s4")]);
    // over nodes 1,2,3 (node 4 free), and over all four
    let three = pattern(12 * UNIT + 777, 0);
    let four = pattern(9 * UNIT, 0x5a);
    fs::write(m[0].join("s3/f"), &three).unwrap();
    fs::write(m[1].join("s4/g"), &four).unwrap();
    assert!(kdfsctl_stripe(&[&m[0].join("s3/f")]).contains("on nodes 1,2,3"));
    assert!(kdfsctl_stripe(&[&m[0].join("s4/g")]).contains("on nodes 2,3,4,1"));
    // held open through node 1 across the leave
    let mut held = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m[0].join("s3/f"))
        .unwrap();
    let mut first = vec![0u8; 100];
    std::os::unix::fs::FileExt::read_exact_at(&held, &mut first, 0).unwrap();
    // and through node 3's own mount, which reads its units in place
    let mut held3 = fs::File::open(m[2].join("s3/f")).unwrap();
    Command::new("sync").status().unwrap();

    nodes_del(&c, 0, "3");
    let log3 = plain(&fs::read_to_string(c.nodes[2].data.join("krgd.log")).unwrap());
    assert!(log3.contains("kdfs: handed over"), "{log3}");
    assert_eq!(
        fs::read_dir(c.nodes[2].store.join("stripes"))
            .unwrap()
            .count(),
        0,
        "node 3 kept stripe units"
    );
    // Unit 2 was node 3's: written through the descriptor opened before.
    held.seek(SeekFrom::Start(2 * UNIT as u64 + 10)).unwrap();
    held.write_all(b"after the leave").unwrap();
    held.sync_all().unwrap();
    let mut three = three;
    three[2 * UNIT + 10..2 * UNIT + 25].copy_from_slice(b"after the leave");
    let mut back = Vec::new();
    held.seek(SeekFrom::Start(0)).unwrap();
    std::io::Read::read_to_end(&mut held, &mut back).unwrap();
    assert!(back == three, "the held descriptor read other bytes");
    drop(held);
    // Node 3's mount finds no units in place any more: it asks its krgd,
    // which answers ESTALE, and reads with the new layout (not zeros).
    let mut back3 = Vec::new();
    std::io::Read::read_to_end(&mut held3, &mut back3).unwrap();
    assert!(back3 == three, "node 3's held descriptor read other bytes");
    drop(held3);

    assert!(kdfsctl_stripe(&[&m[0].join("s3/f")]).contains("on nodes 1,2,4"));
    let g = kdfsctl_stripe(&[&m[0].join("s4/g")]);
    assert!(!g.contains(",3") && g.contains("on nodes 2,"), "{g}");
    let reads_both = |nodes: &[usize], what: &str| {
        for &i in nodes {
            for (name, want) in [("s3/f", &three), ("s4/g", &four)] {
                let got = fs::read(m[i].join(name)).unwrap();
                let diff = got.iter().zip(want.iter()).position(|(a, b)| a != b);
                assert!(
                    got == *want,
                    "{what}: node {} read other bytes of {name}: len {} first difference at {diff:?}",
                    i + 1,
                    got.len()
                );
            }
        }
    };
    reads_both(&[0, 1, 3], "node 3 gone");

    // Node 3 back, then node 4 leaves: node 3 is the one node holding none
    // of s3/f, so it takes node 4's units (it answered ESTALE for that
    // file since its own leave, until the hand-over told it it holds
    // units again).
    wait_until("node 3 added back", Duration::from_secs(30), || {
        krgadm(&c, 0, &["nodes", "add", "-n", "3"]).status.success()
    });
    wait_until("node 3 online everywhere", Duration::from_secs(30), || {
        let out = krgadm(&c, 0, &["nodes", "status"]);
        String::from_utf8_lossy(&out.stdout)
            .matches("online")
            .count()
            == 4
    });
    nodes_del(&c, 0, "4");
    let log4 = plain(&fs::read_to_string(c.nodes[3].data.join("krgd.log")).unwrap());
    assert!(log4.contains("kdfs: handed over"), "{log4}");
    c.umount(3);
    c.kill_krgd(3);
    assert!(kdfsctl_stripe(&[&m[0].join("s3/f")]).contains("on nodes 1,2,3"));
    let g = kdfsctl_stripe(&[&m[0].join("s4/g")]);
    assert!(!g.contains(",4") && g.contains(",3"), "{g}");
    reads_both(&[0, 1, 2], "node 4 gone");

    // Node 2 owns s4/g: the file moves (a new inode on node 1 or 3, its
    // layout with that node in node 2's place), the other holder's units
    // get its id, and the target's are merged into its object. Node 2
    // holds units of s3/f too.
    let g_was = format!("{:016x}", fs::metadata(m[0].join("s4/g")).unwrap().ino());
    nodes_del(&c, 0, "2");
    let log2 = plain(&fs::read_to_string(c.nodes[1].data.join("krgd.log")).unwrap());
    assert!(log2.contains("kdfs: handed over"), "{log2}");
    // The other holders' copies lose the old id's name once it is gone.
    wait_until(
        "the old id's copies dropped",
        Duration::from_secs(10),
        || {
            [0, 2]
                .iter()
                .all(|&i| !c.nodes[i].store.join("stripes").join(&g_was).exists())
        },
    );
    c.umount(1);
    c.kill_krgd(1);
    let g = kdfsctl_stripe(&[&m[0].join("s4/g")]);
    let holders = g.rsplit(' ').next().unwrap().trim();
    assert!(
        holders.split(',').all(|n| n == "1" || n == "3"),
        "s4/g: {g}"
    );
    assert_ne!(owner(&m[0].join("s4/g")), 2);
    reads_both(&[0, 2], "node 2 gone");
    assert_eq!(
        fs::read_dir(c.nodes[1].store.join("stripes"))
            .unwrap()
            .count(),
        0,
        "node 2 kept stripe units"
    );
}

/// Two nodes: the only node left to take a leaving holder's units is the
/// file's owner. They go into its object (the layout names it twice), and
/// the file keeps its modification time.
#[test]
fn the_owner_takes_the_units_when_no_other_node_can() {
    const UNIT: usize = 64 << 10;
    let mut c = Cluster::with_kdfs(2);
    let m1 = c.mnt(0).to_path_buf();
    fs::create_dir(m1.join("s")).unwrap();
    kdfsctl_stripe(&[Path::new("64K:2"), &m1.join("s")]);
    let data = pattern(9 * UNIT + 123, 0x33);
    fs::write(m1.join("s/f"), &data).unwrap();
    assert!(kdfsctl_stripe(&[&m1.join("s/f")]).contains("on nodes 1,2"));
    Command::new("sync").status().unwrap();
    let mtime = fs::metadata(m1.join("s/f")).unwrap().mtime_nsec();

    nodes_del(&c, 0, "2");
    let log2 = plain(&fs::read_to_string(c.nodes[1].data.join("krgd.log")).unwrap());
    assert!(log2.contains("kdfs: handed over"), "{log2}");
    c.umount(1);
    c.kill_krgd(1);
    assert!(kdfsctl_stripe(&[&m1.join("s/f")]).contains("on nodes 1,1"));
    assert!(fs::read(m1.join("s/f")).unwrap() == data, "other bytes");
    assert_eq!(fs::metadata(m1.join("s/f")).unwrap().mtime_nsec(), mtime);
}
