//! More copies than two: `mkfs.kdfs --replicas 3` (a store on its next
//! two members), and a directory's tree given more copies than the file
//! system (`kdfsctl replicas 3 DIR`) — kept by the second mirror too, so
//! that it outlives two failures while the rest does not.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{wait_until, Cluster};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Assert that `p` holds `want` (a short message when it does not: the
/// first bytes that differ, not megabytes).
fn assert_holds(p: &Path, want: &[u8]) {
    let got = fs::read(p).unwrap();
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        got.len() == want.len() && first.is_none(),
        "{}: {} bytes, {} wanted; first difference at {first:?}",
        p.display(),
        got.len(),
        want.len()
    );
}

/// The `kdfs.replicas` attribute of `p`, as the mount shows it.
fn count_of(p: &Path) -> String {
    String::from_utf8(common::xattrs::get(p, "kdfs.replicas", 16).unwrap()).unwrap()
}

/// `--replicas 3` on five nodes: node 2's store copied to nodes 3 and 4.
/// Node 2 killed: one of them serves its store and sends its changes on
/// to the other; that one killed too, the last serves all of it — the
/// changes made meanwhile included; node 2, back, takes its store back
/// from it.
#[test]
fn three_copies_outlive_two_failures() {
    let mut c = Cluster::with_kdfs_formatted(5, &["--replicas", "3"]);
    let d = c.mnt(1).join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("f"), pattern(3 << 20, 9)).unwrap();
    c.wait_full_copies(1, 2);
    let (st, _) = c.kdfs_status(0);
    assert!(
        st.contains("node 2: mirrored on node 3 (in sync) and node 4 (in sync)"),
        "{st}"
    );

    c.kill_krgd(1);
    let through_1 = c.mnt(0).join("d");
    fs::write(through_1.join("g"), b"while node 2 was down").unwrap();
    let (server, other) = c.takeover_copied_on(1, [2, 3]);
    fs::write(through_1.join("h"), b"after the onward copy").unwrap();

    c.kill_krgd(server);
    let through_last = c.mnt(other).join("d");
    wait_until(
        "the last mirror serves node 2's store",
        Duration::from_secs(15),
        || fs::write(through_last.join("i"), b"with two nodes down").is_ok(),
    );
    assert_holds(&through_last.join("f"), &pattern(3 << 20, 9));
    assert_eq!(
        fs::read(through_last.join("g")).unwrap(),
        b"while node 2 was down"
    );
    assert_eq!(
        fs::read(through_last.join("h")).unwrap(),
        b"after the onward copy"
    );
    assert_eq!(
        fs::read(through_1.join("i")).unwrap(),
        b"with two nodes down"
    );

    c.start_krgd(1);
    wait_until("node 2 has its store back", Duration::from_secs(30), || {
        c.plain_log(1).contains("took the store back")
    });
    wait_until("node 2 serves it", Duration::from_secs(10), || {
        fs::read(c.mnt(1).join("d/i")).is_ok_and(|b| b == b"with two nodes down")
    });
    assert_eq!(
        fs::read(c.mnt(1).join("d/h")).unwrap(),
        b"after the onward copy"
    );
}

/// `--replicas 2` on five nodes, directory `imp` given three copies: node
/// 2's files in it (written through its mount), before and after, are
/// copied to node 2's second mirror (node 4) too, its other files only to
/// its first (node 3).
/// Nodes 2 and 3 killed together: node 4 serves node 2's store, `imp`'s
/// files readable and writable through node 5; a file outside answers
/// EIO, at once. Node 3 back: node 4 copies the store on to it without
/// dropping `plain`; node 4 killed, node 3 serves all of it; node 2 back
/// takes it back whole. Refused: a count out of range, a user's change of root's
/// directory.
#[test]
fn a_directory_given_three_copies_outlives_two_failures() {
    let mut c = Cluster::with_kdfs_formatted(5, &["--replicas", "2"]);
    let (imp, plain) = (c.mnt(1).join("imp"), c.mnt(1).join("plain"));
    fs::create_dir(&imp).unwrap();
    fs::create_dir(&plain).unwrap();
    fs::write(imp.join("before"), pattern(2 << 20, 3)).unwrap();
    fs::write(plain.join("p"), b"two copies").unwrap();
    assert_eq!(count_of(&imp.join("before")), "2");

    let dir = imp.to_str().unwrap();
    let (out, err, code) = c.kdfsctl(1, &["replicas", "3", dir]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("3 copies for 2 inodes"), "{out}");
    assert!(out.contains("1 directories above raised to 3"), "{out}");
    fs::create_dir(imp.join("sub")).unwrap();
    fs::write(imp.join("sub/after"), b"made after").unwrap();
    assert_eq!(count_of(&imp.join("before")), "3");
    assert_eq!(count_of(&imp.join("sub/after")), "3", "inherited");
    assert_eq!(count_of(&plain.join("p")), "2");
    let (out, _, _) = c.kdfsctl(1, &["replicas", dir]);
    assert_eq!(out.trim(), format!("{dir}: 3 copies; made in it: 3"));

    let (_, err, code) = c.kdfsctl(1, &["replicas", "4", dir]);
    assert_eq!(code, Some(1));
    assert!(err.contains("4 copies: an inode keeps 1 to 3"), "{err}");
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o777)).unwrap();
    let (uid, _) = common::tests_user();
    let as_user = common::as_tests_user(env!("CARGO_BIN_EXE_kdfsctl"))
        .args(["replicas", "3", plain.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ne!(uid, 0);
    assert_eq!(as_user.status.code(), Some(1));
    let err = String::from_utf8_lossy(&as_user.stderr);
    assert!(err.contains("only root or its owner may"), "{err}");

    wait_until(
        "node 2's second mirror holds its files in imp",
        Duration::from_secs(30),
        || {
            c.kdfs_status(0)
                .0
                .contains("node 2: mirrored on node 3 (in sync) and node 4 (in sync)")
        },
    );
    let (st, _) = c.kdfs_status(0);
    assert!(
        st.contains("keeps the files of more copies of node(s) 2"),
        "node 4's copy of node 2's store is partial: {st}"
    );

    // A file given three copies while node 4 already mirrors node 2: it
    // gets the file's data, not only its size and times.
    fs::write(plain.join("late"), pattern(1 << 20, 8)).unwrap();
    let late = plain.join("late");
    let (out, err, code) = c.kdfsctl(1, &["replicas", "3", late.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_until(
        "node 4 copied the late file",
        Duration::from_secs(30),
        || {
            c.kdfs_status(0)
                .0
                .contains("node 2: mirrored on node 3 (in sync) and node 4 (in sync)")
        },
    );
    c.kill_krgd(1);
    c.kill_krgd(2);
    let (imp5, plain5) = (c.mnt(4).join("imp"), c.mnt(4).join("plain"));
    wait_until(
        "node 4 serves node 2's store",
        Duration::from_secs(20),
        || fs::write(imp5.join("during"), b"two nodes down").is_ok(),
    );
    assert!(c
        .plain_log(3)
        .contains("node failed; this node serves its store"));
    assert_holds(&imp5.join("before"), &pattern(2 << 20, 3));
    assert_eq!(fs::read(imp5.join("sub/after")).unwrap(), b"made after");
    assert_eq!(fs::read(imp5.join("during")).unwrap(), b"two nodes down");
    assert_holds(&plain5.join("late"), &pattern(1 << 20, 8));
    let started = std::time::Instant::now();
    let lost = fs::read(plain5.join("p"));
    let errno = lost.map(|_| ()).unwrap_err().raw_os_error();
    assert_eq!(errno, Some(libc::EIO), "a file of two copies, both down");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Node 3 back: node 4 copies the store on to it without dropping what
    // it lacks itself (node 3's copy had `plain`); node 4 killed, node 3
    // serves all of it.
    c.start_krgd(2);
    wait_until(
        "node 4's copy on to node 3",
        Duration::from_secs(30),
        || c.plain_log(3).contains("full copy done to=3 store=2"),
    );
    c.kill_krgd(3);
    wait_until(
        "node 3 serves node 2's store",
        Duration::from_secs(20),
        || fs::write(imp5.join("then"), b"node 3 serves").is_ok(),
    );
    assert_eq!(fs::read(plain5.join("p")).unwrap(), b"two copies");
    assert_eq!(fs::read(imp5.join("during")).unwrap(), b"two nodes down");

    // Node 2 back: it takes its store back from node 3.
    c.start_krgd(1);
    wait_until("node 2 has its store back", Duration::from_secs(30), || {
        c.plain_log(1).contains("took the store back")
    });
    wait_until("node 2 serves it", Duration::from_secs(10), || {
        fs::read(imp.join("during")).is_ok_and(|b| b == b"two nodes down")
    });
    assert_eq!(fs::read(plain.join("p")).unwrap(), b"two copies");
    assert_eq!(fs::read(imp.join("then")).unwrap(), b"node 3 serves");
    assert_holds(&imp.join("before"), &pattern(2 << 20, 3));
}

/// `kdfsctl replicas 2` while node 1's mount holds one of its files open
/// with passthrough: node 1's conversion waits; its krgd is killed and
/// started again meanwhile, and still converts the store once the file is
/// closed (the waiting conversion is remembered in its data directory).
#[test]
fn a_conversion_waiting_for_a_mount_outlives_a_krgd_restart() {
    let mut c = Cluster::with_kdfs(2);
    let own = c.mnt(0).join("own");
    fs::write(&own, b"node 1").unwrap();
    let held = fs::OpenOptions::new().write(true).open(&own).unwrap();
    let (out, err, code) = c.kdfsctl(0, &["replicas", "2"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("node 1: converts once the files its kdfs mount opened before are closed"),
        "{out}"
    );
    c.kill_krgd(0);
    c.start_krgd(0);
    wait_until(
        "node 1's conversion waiting again",
        Duration::from_secs(20),
        || {
            c.plain_log(0)
                .contains("a conversion to 2 copies waits again for this node's mounts")
        },
    );
    drop(held);
    c.wait_mirrored(0);
    let (st, _) = c.kdfs_status(1);
    assert!(st.contains("node 1: mirrored on node 2"), "{st}");
}
