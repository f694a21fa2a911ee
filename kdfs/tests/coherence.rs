//! Kernel caches kept coherent across nodes (docs/kdfs.md, Consistency):
//! two mounts on two krgds, each with names and attributes cached by its
//! kernel; a change through one mount is seen by the other's very next
//! look, with no wait — and the caching is real (repeated looks do not
//! reach the owner's krgd).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::Cluster;

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn gone(p: &Path) -> bool {
    matches!(fs::symlink_metadata(p), Err(e) if e.kind() == ErrorKind::NotFound)
}

/// How many lookups and getattrs node `i`'s krgd has served.
fn looks(c: &Cluster, i: usize) -> f64 {
    c.served(i, &["lookup", "getattr"])
}

#[test]
fn a_change_on_one_node_is_seen_at_once_through_the_other_nodes_cache() {
    let c = Cluster::with_kdfs(2);
    let (a, b) = (c.mnt(0).to_path_buf(), c.mnt(1).to_path_buf());
    // `d` and its files live on node 1 (made through node 1's mount).
    fs::create_dir(a.join("d")).unwrap();
    for f in ["f", "g", "x", "y"] {
        fs::write(a.join("d").join(f), b"1234").unwrap();
    }
    fs::create_dir(a.join("d/sub")).unwrap();

    // Node 2's kernel caches names and directory attributes: looking again
    // and again does not reach node 1's krgd.
    for p in ["d", "d/f", "d/g", "d/sub", "d/x", "d/y"] {
        fs::symlink_metadata(b.join(p)).unwrap();
        fs::symlink_metadata(a.join(p)).unwrap();
    }
    let before = looks(&c, 0);
    for _ in 0..50 {
        fs::symlink_metadata(b.join("d")).unwrap();
        fs::symlink_metadata(b.join("d/sub")).unwrap();
    }
    let asked = looks(&c, 0) - before;
    assert!(
        asked < 10.0,
        "100 looks through node 2 cost {asked} requests to node 1"
    );

    // Names, changed through node 1, cached on node 2.
    fs::remove_file(a.join("d/f")).unwrap();
    assert!(gone(&b.join("d/f")), "node 2 still sees an unlinked name");
    fs::rename(a.join("d/g"), a.join("d/h")).unwrap();
    assert!(gone(&b.join("d/g")), "node 2 still sees a renamed name");
    assert_eq!(fs::read(b.join("d/h")).unwrap(), b"1234");
    fs::create_dir(a.join("d/sub3")).unwrap();
    assert!(b.join("d/sub3").is_dir());
    fs::rename(a.join("d/sub3"), a.join("d/sub4")).unwrap();
    assert!(
        gone(&b.join("d/sub3")),
        "node 2 still sees a renamed directory"
    );
    assert!(b.join("d/sub4").is_dir());
    fs::remove_dir(a.join("d/sub")).unwrap();
    assert!(
        gone(&b.join("d/sub")),
        "node 2 still sees a removed directory"
    );
    fs::create_dir(a.join("d/sub")).unwrap();
    assert!(b.join("d/sub").is_dir());

    // Appending through node 1, then opening through node 2 to append:
    // node 2 appends at the new end (close-to-open for the size).
    let mut w = OpenOptions::new().append(true).open(a.join("d/h")).unwrap();
    w.write_all(b"ab").unwrap();
    drop(w);
    let mut w = OpenOptions::new().append(true).open(b.join("d/h")).unwrap();
    w.write_all(b"cd").unwrap();
    drop(w);
    assert_eq!(fs::read(a.join("d/h")).unwrap(), b"1234abcd");

    // Directory attributes, changed through node 1, cached on node 2.
    assert_eq!(mode(&b.join("d")), 0o755);
    fs::set_permissions(a.join("d"), fs::Permissions::from_mode(0o750)).unwrap();
    assert_eq!(mode(&b.join("d")), 0o750, "node 2 kept a stale mode");
    let links = fs::symlink_metadata(b.join("d")).unwrap().nlink();
    fs::create_dir(a.join("d/sub2")).unwrap();
    assert_eq!(
        fs::symlink_metadata(b.join("d")).unwrap().nlink(),
        links + 1
    );

    // The other way: node 1's kernel caches its own files (it reads its
    // store in place); changes through node 2 reach it at once.
    let x = a.join("d/x");
    assert_eq!((mode(&x), fs::metadata(&x).unwrap().len()), (0o644, 4));
    fs::set_permissions(b.join("d/x"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(mode(&x), 0o600, "node 1 kept a stale mode of its own file");
    // Written through node 2 (the file stays node 1's): node 1 sees the
    // size while the file is open there, and after.
    let mut w = OpenOptions::new().append(true).open(b.join("d/x")).unwrap();
    w.write_all(b"56").unwrap();
    assert_eq!(fs::metadata(&x).unwrap().len(), 6);
    w.write_all(b"78").unwrap();
    assert_eq!(fs::metadata(&x).unwrap().len(), 8);
    drop(w);
    assert_eq!(fs::metadata(&x).unwrap().len(), 8);
    // Written through node 1 itself (FUSE passthrough: no krgd sees it):
    // node 2 sees the size at once.
    let mut w = OpenOptions::new().append(true).open(a.join("d/y")).unwrap();
    w.write_all(b"5678").unwrap();
    assert_eq!(fs::metadata(b.join("d/y")).unwrap().len(), 8);
    drop(w);
    // A link made through node 2 is counted on node 1 at once.
    fs::hard_link(b.join("d/y"), b.join("d/y2")).unwrap();
    assert_eq!(fs::symlink_metadata(a.join("d/y")).unwrap().nlink(), 2);
    fs::remove_file(b.join("d/y2")).unwrap();
    assert_eq!(fs::symlink_metadata(a.join("d/y")).unwrap().nlink(), 1);
    assert!(gone(&a.join("d/y2")));

    // A directory of node 2, cached on node 1, changed through node 2.
    fs::create_dir(b.join("e")).unwrap();
    fs::write(b.join("e/z"), b"z").unwrap();
    assert!(a.join("e/z").exists());
    assert!(a.join("e").exists());
    fs::rename(b.join("e/z"), b.join("e/w")).unwrap();
    assert!(gone(&a.join("e/z")), "node 1 still sees a renamed name");
    assert!(a.join("e/w").exists());
    fs::remove_file(b.join("e/w")).unwrap();
    assert!(gone(&a.join("e/w")));
}

#[test]
fn a_restarted_krgd_is_not_trusted_for_what_it_gave_before() {
    let mut c = Cluster::with_kdfs(2);
    let (a, b) = (c.mnt(0).to_path_buf(), c.mnt(1).to_path_buf());
    fs::create_dir(a.join("d")).unwrap();
    fs::write(a.join("d/f"), b"1").unwrap();
    // Node 2 caches node 1's name; node 1's krgd restarts (it forgets who
    // holds what); then the name moves through node 1's mount (the inode
    // stays: only the name tells).
    assert!(b.join("d/f").exists());
    c.kill_krgd(0);
    c.start_krgd(0);
    common::wait_until(
        "node 1 serves again",
        std::time::Duration::from_secs(30),
        || fs::rename(a.join("d/f"), a.join("d/g")).is_ok(),
    );
    // Node 2 holds node 1 down for a moment after its last failed attempt
    // (ENOTCONN): wait until it asks node 1 again.
    let seen = || fs::symlink_metadata(b.join("d/f"));
    common::wait_until(
        "node 2 reaches node 1",
        std::time::Duration::from_secs(30),
        || !matches!(seen(), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN)),
    );
    assert!(
        matches!(seen(), Err(e) if e.kind() == ErrorKind::NotFound),
        "node 2 trusted a name given before the restart: {:?}; its log:\n{}",
        seen(),
        c.client_log(1)
    );
    assert!(b.join("d/g").exists());
}

/// The first mount of a node changes its regular files' attributes itself
/// (no request to krgd, which would tell the other mounts); a second mount
/// of the same node therefore keeps no regular file's attributes, and sees
/// every such change at its very next look.
#[test]
fn a_second_mount_of_a_node_sees_the_first_mounts_attribute_changes_at_once() {
    let c = Cluster::with_kdfs(1);
    let a = c.mnt(0).to_path_buf();
    let b = c.root.path().join("second");
    let out = c.mount_at(0, &b, "kdfs-second.log");
    assert!(
        out.status.success(),
        "second mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = fs::read_to_string(c.nodes[0].data.join("kdfs-second.log")).unwrap();
    assert!(
        log.contains("another mount of node 1"),
        "the second mount did not say it is not the node's first:\n{log}"
    );

    let (fa, fb) = (a.join("f"), b.join("f"));
    fs::write(&fa, b"1234").unwrap();
    fs::set_permissions(&fa, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(mode(&fb), 0o644);
    let before = c.served(0, &["setattr"]);

    fs::set_permissions(&fa, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(mode(&fb), 0o600, "a chmod through the first mount, unseen");
    std::os::unix::fs::chown(&fa, Some(4321), Some(4322)).unwrap();
    let m = fs::symlink_metadata(&fb).unwrap();
    assert_eq!((m.uid(), m.gid()), (4321, 4322), "a chown, unseen");
    OpenOptions::new()
        .write(true)
        .open(&fa)
        .unwrap()
        .set_len(1)
        .unwrap();
    assert_eq!(
        fs::symlink_metadata(&fb).unwrap().len(),
        1,
        "a truncate, unseen"
    );
    let touched = Command::new("touch")
        .args(["-m", "-d", "@1000000000"])
        .arg(&fa)
        .status()
        .unwrap();
    assert!(touched.success());
    assert_eq!(
        fs::symlink_metadata(&fb).unwrap().mtime(),
        1_000_000_000,
        "a utimes, unseen"
    );
    assert_eq!(
        c.served(0, &["setattr"]),
        before,
        "the first mount sent its setattrs to krgd instead of making them itself"
    );

    // Through the second mount krgd makes the change, and tells the first.
    fs::set_permissions(&fb, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        mode(&fa),
        0o640,
        "a chmod through the second mount, unseen by the first"
    );
    assert!(c.served(0, &["setattr"]) > before);
}
