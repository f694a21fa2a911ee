//! The hand-over table (`KDFS_BENCH_ONLY=handover`): what `krgadm nodes
//! del` of a node holding kDFS files costs. Each round fills a tree through
//! node 3's mount (its files are node 3's): KDFS_BENCH_HANDOVER_FILES
//! (default 2000) files of 4 KiB in directories of 100, one file of
//! KDFS_BENCH_HANDOVER_MB (default 256) MiB, and, when
//! KDFS_BENCH_HANDOVER_STRIPED_MB is set, a file of that size striped
//! `4M:3` over the three nodes (node 3 owns it, so it moves with its
//! object's units, and the other holders' units are renamed). The reference is what an
//! administrator would do by hand: `cp -a` of that tree through node 1's
//! mount (the copy lands on node 1: the same bytes from node 3 to another
//! node), timed first and removed; then `nodes del -n 3` is timed (the
//! command returns once the data has moved and the node is removed), and
//! node 3 is added back for the next round.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{common, drop_caches, env_num, median};

fn krgadm(cluster: &common::Cluster, i: usize, args: &[&str]) -> bool {
    Command::new(common::bin_dir().join("krgadm"))
        .arg("--socket")
        .arg(&cluster.nodes[i].sock)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The tree of one round, through node 3's mount.
fn fill(top: &Path, files: u64, mb: u64, striped_mb: u64) {
    let small = vec![0x5au8; 4096];
    for i in 0..files {
        let dir = top.join(format!("d{}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&dir).expect("mkdir on kdfs");
        }
        fs::write(dir.join(format!("f{i}")), &small).expect("write on kdfs");
    }
    let chunk: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 253) as u8).collect();
    let mut big = fs::File::create(top.join("big")).expect("create on kdfs");
    for _ in 0..mb {
        std::io::Write::write_all(&mut big, &chunk).expect("write on kdfs");
    }
    big.sync_all().expect("fsync on kdfs");
    if striped_mb > 0 {
        let dir = top.join("striped");
        fs::create_dir(&dir).expect("mkdir on kdfs");
        super::striped::stripe(&dir);
        let mut f = fs::File::create(dir.join("big")).expect("create on kdfs");
        for _ in 0..striped_mb {
            std::io::Write::write_all(&mut f, &chunk).expect("write on kdfs");
        }
        f.sync_all().expect("fsync on kdfs");
    }
}

fn timed(what: &str, f: impl FnOnce() -> bool) -> f64 {
    let start = Instant::now();
    assert!(f(), "{what} failed");
    start.elapsed().as_secs_f64()
}

/// Run `rounds` rounds and print the medians.
pub fn table(cluster: &common::Cluster, rounds: u64) {
    let files = env_num("KDFS_BENCH_HANDOVER_FILES", 2000);
    let mb = env_num("KDFS_BENCH_HANDOVER_MB", 256);
    let striped_mb = env_num("KDFS_BENCH_HANDOVER_STRIPED_MB", 0);
    let (mut by_hand, mut handed) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let name = format!("handover-{round}");
        fill(&cluster.mnt(2).join(&name), files, mb, striped_mb);
        drop_caches();
        let copy = cluster.mnt(0).join(format!("{name}.cp"));
        by_hand.push(timed("cp -a", || {
            Command::new("cp")
                .arg("-a")
                .arg(cluster.mnt(2).join(&name))
                .arg(&copy)
                .status()
                .is_ok_and(|s| s.success())
        }));
        fs::remove_dir_all(&copy).expect("rm the copy");
        drop_caches();
        handed.push(timed("nodes del", || {
            krgadm(cluster, 0, &["nodes", "del", "-n", "3"])
        }));
        common::wait_until("node 3 added back", Duration::from_secs(30), || {
            krgadm(cluster, 0, &["nodes", "add", "-n", "3"])
        });
        common::wait_until("node 3 online everywhere", Duration::from_secs(30), || {
            (0..3).all(|i| {
                let out = Command::new(common::bin_dir().join("krgadm"))
                    .arg("--socket")
                    .arg(&cluster.nodes[i].sock)
                    .args(["nodes", "status"])
                    .output();
                out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).matches("online").count() == 3)
            })
        });
        eprintln!("kDFS bench: hand-over round {round}/{rounds} done");
    }
    let (h, c) = (median(handed), median(by_hand));
    println!(
        "hand-over of node 3's {files} files of 4 KiB + {mb} MiB + {striped_mb} MiB striped 4M:3, medians of {rounds}:"
    );
    let fmt = |v: Option<f64>| v.map(|x| format!("{x:.2} s")).unwrap_or_else(|| "-".into());
    println!(
        "{:<44} {:>10}",
        "krgadm nodes del -n 3 (data moved, node removed)",
        fmt(h)
    );
    println!(
        "{:<44} {:>10}",
        "cp -a of the same tree through node 1's mount",
        fmt(c)
    );
    if let (Some(h), Some(c)) = (h, c) {
        println!("cp -a / hand-over: {:.2}", c / h);
    }
}
