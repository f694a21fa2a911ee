//! Nodes boot in any order: a store is served from mkfs.kdfs on, mounted or
//! not, and a mount waits (bounded by `-o timeo=`) for the root node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{is_mounted, Cluster};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_non_root_node_mounts_first_and_a_mount_waits_for_the_root_node() {
    let mut c = Cluster::start(2);
    // Node 2 is formatted before the root node exists: it joins later.
    let out = c.mkfs(1, 1, false);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("joins at its first mount"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = c.mkfs(0, 1, false);
    assert!(out.status.success(), "{}", stderr(&out));

    // Node 2 mounts first: nothing is mounted on the root node, whose krgd
    // serves the file system since mkfs.
    let out = c.mount(1, "");
    assert!(out.status.success(), "{}", stderr(&out));
    fs::write(c.mnt(1).join("from2"), b"two").unwrap();
    let out = c.mount(0, "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(c.mnt(0).join("from2")).unwrap(), b"two");
    fs::write(c.mnt(0).join("from1"), b"one").unwrap();
    assert_eq!(fs::read(c.mnt(1).join("from1")).unwrap(), b"one");

    // The root node goes down (unmounted first: its krgd alone serves it).
    c.umount(0);
    c.umount(1);
    c.kill_krgd(0);
    // A short timeo gives up, saying on what.
    let out = c.mount(1, "timeo=1");
    let err = stderr(&out);
    assert!(!out.status.success() && !is_mounted(c.mnt(1)), "{err}");
    assert!(
        err.contains("gave up after 1 s (timeo): root node 1 does not serve"),
        "{err}"
    );

    // A mount started now waits, and says so, until the root node is back.
    let n = &c.nodes[1];
    let mut child = Command::new(common::mount_bin())
        .arg(&n.store)
        .arg(&n.mnt)
        .arg("-o")
        .arg(format!("{},timeo=30", c.mount_opts(1)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the mount did not wait"
    );
    assert!(!is_mounted(c.mnt(1)));
    c.start_krgd(0);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("mount.kdfs: waiting up to 30 s: root node 1 does not serve this kDFS yet"),
        "{err}"
    );
    // Node 1's files, served by its krgd with nothing mounted there.
    assert_eq!(fs::read(c.mnt(1).join("from1")).unwrap(), b"one");
    assert_eq!(fs::read(c.mnt(1).join("from2")).unwrap(), b"two");
}
