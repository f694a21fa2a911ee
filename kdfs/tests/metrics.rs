//! kDFS operations as krgd's `/metrics` counts them: a file written on one
//! node and read through another node's mount is served by the first
//! node's krgd, which counts the operations by kind, their latency and the
//! bytes moved.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;

use common::observe::{metric, scrape};
use common::Cluster;

#[test]
fn remote_reads_and_writes_are_counted_by_the_serving_node() {
    let c = Cluster::with_kdfs(2);
    let (m1, m2) = (c.mnt(0).to_path_buf(), c.mnt(1).to_path_buf());
    let data = vec![7u8; 300_000];
    std::fs::write(m1.join("on-node-1"), &data).unwrap();
    let before = scrape(c.nodes[0].http_port);
    let read_before = metric(&before, "krg_kdfs_bytes_total{direction=\"read\"}").unwrap_or(0.0);
    // Read through node 2's mount: node 1's krgd serves the data.
    assert_eq!(std::fs::read(m2.join("on-node-1")).unwrap(), data);
    let after = scrape(c.nodes[0].http_port);
    let read_after = metric(&after, "krg_kdfs_bytes_total{direction=\"read\"}").unwrap();
    assert!(
        read_after - read_before >= data.len() as f64,
        "node 1 served {read_before} -> {read_after} bytes"
    );
    let reads = metric(&after, "krg_kdfs_operations_total{op=\"read\"}").unwrap();
    assert!(reads >= 1.0);
    let timed = metric(&after, "krg_kdfs_operation_seconds_count{op=\"read\"}").unwrap();
    assert_eq!(timed, reads, "every read timed");
    assert!(metric(&after, "krg_kdfs_operations_total{op=\"lookup\"}").unwrap() >= 1.0);
    // Written through node 2 into a file of node 1: node 1 counts the bytes.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(m2.join("on-node-1"))
        .unwrap();
    f.write_all(&[1u8; 4096]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let last = scrape(c.nodes[0].http_port);
    let written = metric(&last, "krg_kdfs_bytes_total{direction=\"written\"}").unwrap();
    assert!(written >= 4096.0, "written {written}");

    // The kernel asks security.capability before every write: for another
    // node's file the client remembers its absence instead of asking each time.
    let asked = |t: &str| metric(t, "krg_kdfs_operations_total{op=\"getxattr\"}").unwrap_or(0.0);
    let before = asked(&scrape(c.nodes[0].http_port));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(m2.join("on-node-1"))
        .unwrap();
    for _ in 0..50 {
        f.write_all(&[2u8; 4096]).unwrap();
    }
    drop(f);
    let after = asked(&scrape(c.nodes[0].http_port));
    println!(
        "getxattr requests for 50 writes: {} (total {after})",
        after - before
    );
    assert!(
        after - before < 10.0,
        "{} getxattr requests for 50 writes",
        after - before
    );
}
