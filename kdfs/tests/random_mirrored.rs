//! Random operations on a file system of two copies (`--replicas 2`, three
//! nodes): the mirror's copy must be what the owner served. The sequence
//! (`common::random`, in bursts on the mounts of nodes 1 and 2) is applied
//! to kDFS and to a local directory; then node 2's krgd is killed, and its
//! files, now served by node 3 from its copy, must still match the local
//! directory — answers to more operations too — and so must everything
//! once node 2 is back and has taken its store back. Node 2 is killed
//! right after the last operation: every change answered is on the
//! mirror already.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::path::Path;
use std::time::Duration;

use common::random::*;
use common::{wait_until, Cluster};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// `steps` operations of seed `seed` under `base` of mounts `mounts`
/// (taking turns in bursts) and of `local`, every answer compared.
fn operations(c: &Cluster, mounts: [usize; 2], local: &Path, base: &str, seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut turns = Turns::bursts();
    for step in 0..steps {
        let on = mounts[turns.next(&mut rng)];
        let op = random_op_wide(&mut rng);
        let got = apply(&c.mnt(on).join(base), &op);
        if refused_across_nodes(&op, &got) {
            continue;
        }
        let want = apply(&local.join(base), &op);
        assert_eq!(got, want, "seed {seed} step {step} on mount {on}: {op:?}");
    }
}

/// The tree under `base` of mount `i` is the local one, link counts right.
fn same_tree(c: &Cluster, i: usize, local: &Path, base: &str, what: &str) {
    let tree = c.mnt(i).join(base);
    assert_eq!(snapshot(&local.join(base)), snapshot(&tree), "{what}");
    check_counts(&tree);
}

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
        let base = format!("run{seed}");
        std::fs::create_dir(local.join(&base)).unwrap();
        std::fs::create_dir(c.mnt(1).join(&base)).unwrap();
        operations(&c, [0, 1], local, &base, seed, 300);
        bases.push(base);
    }

    c.kill_krgd(1);
    for (base, seed) in bases.iter().zip(seeds) {
        same_tree(&c, 0, local, base, &format!("seed {seed}: node 2 down"));
        operations(&c, [0, 0], local, base, seed + 1000, 100);
        same_tree(
            &c,
            0,
            local,
            base,
            &format!("seed {seed}: changed while node 2 was down"),
        );
    }

    c.start_krgd(1);
    wait_until("node 2 serving again", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(c.nodes[1].data.join("krgd.log")).unwrap_or_default();
        log.contains("took the store back") && log.contains("kdfs mirror: full copy done")
    });
    // (a mount tries a node it found down again after half a second)
    wait_until("node 2 back for mount 1", Duration::from_secs(10), || {
        std::fs::write(c.mnt(0).join("after"), b"after").is_ok()
    });
    for base in &bases {
        for i in 0..3 {
            same_tree(
                &c,
                i,
                local,
                base,
                &format!("{base}: node 2 back, mount {i}"),
            );
        }
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
