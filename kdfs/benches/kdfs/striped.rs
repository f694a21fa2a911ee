//! The striping table (`KDFS_BENCH_ONLY=striped`, or after the others): a
//! file held by one node (node 2) against a file striped `4M:3` over the
//! three (created through node 2 too), both written through node 2's
//! mount and read cold through node 1's. The line: the striped
//! read at least as fast as the single-node read.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::{common, median, seq_read, seq_write};

const LINES: [&str; 4] = [
    "seq write, one node (MB/s)",
    "seq write, striped 4M:3 (MB/s)",
    "seq read, one node (MB/s)",
    "seq read, striped 4M:3 (MB/s)",
];

/// `kdfsctl stripe 4M:3 DIR`.
pub(super) fn stripe(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_kdfsctl"))
        .args(["stripe", "4M:3"])
        .arg(dir)
        .output()
        .expect("run kdfsctl");
    assert!(
        out.status.success(),
        "kdfsctl stripe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run `rounds` rounds of `mb` MiB per file and print the medians.
pub fn table(cluster: &common::Cluster, rounds: u64, mb: u64) {
    let names = ["bench-one-node", "bench-striped"];
    for n in names {
        fs::create_dir(cluster.mnt(1).join(n)).expect("mkdir on kdfs");
    }
    stripe(&cluster.mnt(1).join(names[1]));
    let mut samples = vec![Vec::new(); LINES.len()];
    for round in 1..=rounds {
        for (i, n) in names.iter().enumerate() {
            samples[i].push(seq_write(&cluster.mnt(1).join(n), mb));
            samples[2 + i].push(seq_read(&cluster.mnt(0).join(n), mb));
        }
        eprintln!("kDFS bench: striping round {round}/{rounds} done");
    }
    let med: Vec<Option<f64>> = samples.into_iter().map(median).collect();
    println!("striping: {mb} MiB files written through node 2, read cold through node 1, medians of {rounds}:");
    let fmt = |v: Option<f64>| v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into());
    for (name, v) in LINES.iter().zip(&med) {
        println!("{name:<32} {:>12}", fmt(*v));
    }
    if let (Some(s), Some(o)) = (med[3], med[2]) {
        println!("striped read / one-node read: {:.2}", s / o);
    }
    for n in names {
        let _ = fs::remove_dir(cluster.mnt(1).join(n));
    }
}
