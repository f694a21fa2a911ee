//! `kdfsctl status` against real krgds on loopback: the members that
//! serve a store, one that serves none, one killed; bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::Cluster;

fn kdfsctl(c: &Cluster, i: usize, args: &[&str]) -> Output {
    Command::new(PathBuf::from(env!("CARGO_BIN_EXE_kdfsctl")))
        .arg("--socket")
        .arg(&c.nodes[i].sock)
        .arg("--keyfile")
        .arg(&c.key)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn row(t: &str, node: u32) -> String {
    t.lines()
        .find(|l| l.split_whitespace().next() == Some(&node.to_string()))
        .unwrap_or_else(|| panic!("no row for node {node}: {t}"))
        .to_string()
}

#[test]
fn status_shows_who_serves_and_who_is_down() {
    common::ensure_binaries();
    let mut c = Cluster::start(3);
    // stores on nodes 1 and 2 only
    for i in 0..2 {
        let o = c.mkfs(i, 1, false);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = kdfsctl(&c, 1, &["status"]);
    let t = text(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{t}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(t.contains("(root node 1)"), "{t}");
    assert!(t.contains("on node 2 (this node)"), "{t}");
    assert!(row(&t, 1).contains("serving"), "{t}");
    assert!(row(&t, 2).contains("serving"), "{t}");
    assert!(row(&t, 3).contains("no store"), "{t}");
    assert!(row(&t, 1).contains('%'), "{t}");

    let o = kdfsctl(&c, 0, &["status", "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["copies"], 1);
    assert_eq!(j["fs"]["root_node"], 1);
    let states: Vec<&str> = j["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["serving", "serving", "no_store"], "{j}");
    assert!(j["nodes"][0]["size"].as_u64().unwrap() > 0, "{j}");

    // node 2's krgd dies: node 1 says its files cannot be reached, exit 3
    c.kill_krgd(1);
    let t0 = Instant::now();
    let o = kdfsctl(&c, 0, &["status"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(row(&t, 2).contains("down"), "{t}");
    assert!(t.contains("unreachable now: the files of node(s) 2"), "{t}");
    assert!(row(&t, 1).contains("serving"), "{t}");
    // a dead node costs at most the short per-node wait
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[test]
fn status_refuses_what_it_cannot_answer() {
    common::ensure_binaries();
    let c = Cluster::start(1);
    // no store attached here
    let o = kdfsctl(&c, 0, &["status"]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("serves no kDFS store"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    // no krgd there
    let o = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_kdfsctl")))
        .args(["--socket", "/nonexistent/krgd.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("is krgd running?"), "{e}");
    // a bad command line
    let o = kdfsctl(&c, 0, &["status", "--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    let o = kdfsctl(&c, 0, &["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

/// `kdfsctl status MOUNT`, as an operator types it: the node's own kDFS
/// mount is answered; another node's mount, a plain directory and a path
/// that does not exist are refused in one line each.
#[test]
fn status_of_a_mount_point_checks_it_is_this_nodes_kdfs() {
    let c = Cluster::with_kdfs(2);
    let mnt = |i: usize| c.mnt(i).to_str().unwrap().to_string();
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // The mount table names the file system as findmnt -t and df -t see it.
    let table = kdfs::mountinfo::read().unwrap();
    let m = kdfs::mountinfo::newest_at(&table, c.mnt(0)).unwrap();
    assert_eq!(
        (m.fstype.as_str(), m.source.as_str()),
        ("fuse.kdfs", c.nodes[0].store.to_str().unwrap())
    );

    let o = kdfsctl(&c, 0, &["status", &mnt(0)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(text(&o).contains("on node 1 (this node)"), "{}", text(&o));

    let o = kdfsctl(&c, 0, &["status", &mnt(1)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "mounts {}, not the store",
            c.nodes[1].store.display()
        )),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(text(&o).is_empty(), "a refused mount printed a status");

    let plain = c.root.path().to_str().unwrap();
    let o = kdfsctl(&c, 0, &["status", plain]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is not a kDFS mount"), "{}", stderr(&o));

    let o = kdfsctl(&c, 0, &["status", "/no/such/mount"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/no/such/mount"), "{}", stderr(&o));
}
