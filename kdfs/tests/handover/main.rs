//! `krgadm nodes del` of a live node moves its kDFS data to another member
//! before it goes: every file, directory, symlink and fifo it kept is
//! reached under the same names, with the same contents and attributes,
//! once its krgd is gone.
//!
//! `failures`: hand-overs that fail, crash or meet a read-only store;
//! `striped`: stripe units of a leaving holder.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

#[path = "../common/mod.rs"]
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

mod failures;
mod striped;
