//! The replication table (`KDFS_BENCH_ONLY=replicated`, or after the
//! others): three nodes whose stores are formatted `--replicas 2` against
//! a GlusterFS replica-2 volume (two bricks), medians of the rounds.
//!
//! * sequential write and read of a file through the mount of the node
//!   that holds it (kDFS: every write mirrored on the next node before it
//!   is answered; GlusterFS: written to both bricks by its client);
//! * how long a 4 KiB write + fsync of a file waits when the server of
//!   that file stops without a word (SIGSTOP: no reset, no answer) — kDFS:
//!   node 2's krgd, its file written through node 1 (its mirror, node 3,
//!   takes the store over once the cluster marks node 2 failed); GlusterFS:
//!   one brick's glusterfsd (its client goes on with the other brick after
//!   `network.ping-timeout`, 42 s by default). The server is let go again
//!   (SIGCONT) and, for kDFS, takes its store back before the next round.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{common, median, seq_read, seq_write, Gluster};

const LINES: [(&str, &str); 3] = [
    ("seq write, replicas 2", "MB/s"),
    ("seq read, replicas 2", "MB/s"),
    ("write after its server stops", "s"),
];

/// Write and fsync 4 KiB at the start of `file`: how long it took.
fn small_write(file: &Path) -> f64 {
    let t = Instant::now();
    let mut f = OpenOptions::new().write(true).open(file).expect("open");
    f.write_all(&[7u8; 4096]).expect("write");
    f.sync_all().expect("fsync");
    t.elapsed().as_secs_f64()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) of a process this bench started or found by its
    // command line; no memory is passed.
    unsafe { libc::kill(pid as i32, sig) };
}

/// The glusterfsd serving the brick at `brick`.
fn brick_pid(brick: &Path) -> Option<u32> {
    let want = brick.display().to_string();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        (cmd.contains("glusterfsd") && cmd.contains(&format!("--brick-name {want} ")))
            .then_some(pid)
    })
}

/// How many times node index `i`'s krgd logged that it took its store back.
fn taken_back(c: &common::Cluster, i: usize) -> usize {
    fs::read_to_string(c.nodes[i].data.join("krgd.log"))
        .unwrap_or_default()
        .matches("took the store back")
        .count()
}

/// One round on kDFS: [write, read, resume].
fn kdfs_round(c: &common::Cluster, mb: u64) -> [f64; 3] {
    let own = c.mnt(1).join("bench-replicated");
    let w = seq_write(&own, mb);
    let r = seq_read(&own, mb);
    let file = own.join("small");
    fs::write(&file, [0u8; 4096]).expect("write the small file");
    let before = taken_back(c, 1);
    let pid = c.krgd_pid(1).expect("node 2's krgd");
    signal(pid, libc::SIGSTOP);
    let resumed = small_write(&c.mnt(0).join("bench-replicated/small"));
    signal(pid, libc::SIGCONT);
    common::wait_until(
        "node 2 takes its store back",
        Duration::from_secs(60),
        || taken_back(c, 1) > before,
    );
    [w, r, resumed]
}

/// One round on GlusterFS: [write, read, resume].
fn gluster_round(g: &Gluster, mb: u64) -> Option<[f64; 3]> {
    let w = seq_write(&g.mnt, mb);
    let r = seq_read(&g.mnt, mb);
    let file = g.mnt.join("small");
    fs::write(&file, [0u8; 4096]).ok()?;
    let pid = brick_pid(&g.base.join("brick0"))?;
    signal(pid, libc::SIGSTOP);
    let resumed = small_write(&file);
    signal(pid, libc::SIGCONT);
    std::thread::sleep(Duration::from_secs(3));
    Some([w, r, resumed])
}

pub fn table(rounds: u64, mb: u64) {
    let c = common::Cluster::with_kdfs_formatted(3, &["--replicas", "2"]);
    fs::create_dir(c.mnt(1).join("bench-replicated")).expect("mkdir on kdfs");
    common::wait_until("node 2's store mirrored", Duration::from_secs(60), || {
        fs::read_to_string(c.nodes[1].data.join("krgd.log"))
            .unwrap_or_default()
            .contains("kdfs mirror: full copy done")
    });
    let base = common::test_dir().join(format!("kdfs-bench-gluster2-{}", std::process::id()));
    let gluster = Gluster::start_volume(&base, "kdfsbench2", Some(2), 2);
    let mut k = vec![Vec::new(); LINES.len()];
    let mut g = vec![Vec::new(); LINES.len()];
    for round in 1..=rounds {
        for (i, v) in kdfs_round(&c, mb).into_iter().enumerate() {
            k[i].push(v);
        }
        if let Some(vs) = gluster.as_ref().and_then(|gl| gluster_round(gl, mb)) {
            for (i, v) in vs.into_iter().enumerate() {
                g[i].push(v);
            }
        }
        eprintln!("kDFS bench: replication round {round}/{rounds} done");
    }
    let fmt = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    println!("replication: {mb} MiB files, 3 nodes --replicas 2 against GlusterFS replica 2 (2 bricks), medians of {rounds}:");
    println!(
        "{:<32} {:>6} {:>12} {:>12} {:>10}",
        "work", "unit", "kdfs", "glusterfs", "kdfs/glu"
    );
    for (i, (name, unit)) in LINES.iter().enumerate() {
        let (kv, gv) = (median(k[i].clone()), median(g[i].clone()));
        // Throughputs: kDFS over GlusterFS; a wait: GlusterFS over kDFS
        // (how many times sooner kDFS goes on).
        let ratio = match (kv, gv) {
            (Some(a), Some(b)) if a > 0.0 && b > 0.0 && *unit == "s" => {
                format!("{:.1}x sooner", b / a)
            }
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        println!(
            "{name:<32} {unit:>6} {:>12} {:>12} {ratio:>10}",
            fmt(kv),
            fmt(gv)
        );
    }
    drop(gluster);
}
