//! Random operations on a file system of two copies (`--replicas 2`, three
//! nodes): the mirror's copy must be what the owner served. The sequence
//! (`common::random`, in bursts on the mounts of nodes 1 and 2) is applied
//! to kDFS and to a local directory; then node 2's krgd is killed, and its
//! files, now served by node 3 from its copy, must still match the local
//! directory — answers to more operations too — and so must everything
//! once node 2 is back and has taken its store back. Node 2 is killed
//! right after the last operation: every change answered is on the
//! mirror already. And with three copies, two failures in a row.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use common::random::*;
use common::{wait_until, Cluster};

/// One seed: operations, node 2 killed, more operations through node 1's
/// mount (node 2's files on node 3), node 2 back.
fn mirrored_run(seeds: std::ops::Range<u64>) {
    let mut c = Cluster::with_kdfs_formatted(3, &["--replicas", "2"]);
    // each change is answered once its mirror has it: no wait after them
    c.wait_mirrored(0);
    c.wait_mirrored(1);
    let local = tempfile::tempdir().unwrap();
    let local = local.path();
    let mut bases = Vec::new();
    for seed in seeds.clone() {
        // node 2's directory: what either mount makes in it lives on node
        // 1 or 2 (and their mirrors, nodes 2 and 3)
        let base = fresh_base(c.mnt(1), local, seed);
        operate(BURSTS, [c.mnt(0), c.mnt(1)], local, &base, seed);
        bases.push((seed, base));
    }

    c.kill_krgd(1);
    // (node 1's mount alone: node 2's files through node 3)
    let one = [c.mnt(0), c.mnt(0)];
    for (seed, base) in &bases {
        same_trees(one, local, base, *seed);
        operate(BURSTS, one, local, base, seed + 1000);
        same_trees(one, local, base, seed + 1000);
    }

    c.start_krgd(1);
    c.wait_took_store_back(1);
    // (a mount tries a node it found down again after half a second)
    wait_until("node 2 back for mount 1", Duration::from_secs(10), || {
        std::fs::write(c.mnt(0).join("after"), b"after").is_ok()
    });
    for (seed, base) in &bases {
        same_trees([c.mnt(0), c.mnt(1)], local, base, *seed);
        same_trees([c.mnt(2), c.mnt(2)], local, base, *seed);
    }
}

#[test]
fn a_mirror_serves_what_random_operations_left() {
    mirrored_run(0..2);
}

/// The long campaign: `cargo test -p kdfs --test random_mirrored -- --ignored`.
#[test]
#[ignore]
fn a_mirror_serves_what_random_operations_left_campaign() {
    mirrored_run(100..112);
}

/// Three copies (`--replicas 3`, five nodes): random operations in node
/// 2's directory through the mounts of nodes 1 and 2, then node 2 killed
/// (one of its mirrors serves its store and copies it on to the other),
/// more operations, then that serving mirror killed too: the last copy
/// serves all of it, as the local directory has it.
#[test]
fn three_copies_serve_what_random_operations_left_after_two_failures() {
    let mut c = Cluster::with_kdfs_formatted(5, &["--replicas", "3"]);
    c.wait_full_copies(1, 2);
    let local = tempfile::tempdir().unwrap();
    let local = local.path();
    let seed = 40;
    let base = fresh_base(c.mnt(1), local, seed);
    operate(BURSTS, [c.mnt(0), c.mnt(1)], local, &base, seed);

    c.kill_krgd(1);
    let m1 = c.mnt(0).to_path_buf();
    let one = [m1.as_path(), m1.as_path()];
    same_trees(one, local, &base, seed);
    operate(BURSTS, one, local, &base, seed + 1000);
    let (server, _) = c.takeover_copied_on(1, [2, 3]);
    operate(BURSTS, one, local, &base, seed + 2000);

    c.kill_krgd(server);
    same_trees(one, local, &base, seed + 2000);
    let m5 = c.mnt(4).to_path_buf();
    same_trees([m5.as_path(), m5.as_path()], local, &base, seed + 2000);
}
