//! `cargo bench -p kdfs`: the same work on the native local directory, on a
//! 3-node kDFS mount (loopback) and, when glusterd is installed, on a 3-brick
//! GlusterFS distribute volume on loopback; figures and ratios printed.
//!
//! Sizes (environment): KDFS_BENCH_SEQ_MB (default 1024), KDFS_BENCH_FILES
//! (default 10000), KDFS_BENCH_FIO_SECS (default 5), KDFS_BENCH_ROUNDS
//! (default 3: every line is run that many times on each target, the
//! targets taking turns, and the median is printed). Must run as root.
//!
//! A second table runs the lines that move data over the peer transport: a
//! file created through node 2's mount (its data lives on node 2) written
//! and read through node 1's. `KDFS_BENCH_ONLY=remote` runs only that table;
//! `KDFS_BENCH_ONLY=meta` runs only the metadata lines (create, stat,
//! readdir, unlink) of the first table, `KDFS_BENCH_ONLY=data` only its
//! data lines (sequential and fio) and then this second table (the remote
//! lines against GlusterFS's, whose client reaches its bricks over
//! connections too), `KDFS_BENCH_ONLY=small` only its small-file lines:
//! `tar -xf` of a tree of KDFS_BENCH_FILES small files, and `dbench 4` for KDFS_BENCH_DBENCH_SECS (default 10) seconds.
//!
//! A third table compares reading a file held by one node with reading a
//! file striped over the three (`benches/kdfs/striped.rs`), of
//! KDFS_BENCH_STRIPE_MB (default 4096) MiB each; `KDFS_BENCH_ONLY=striped`
//! runs only that one.
//!
//! A fifth table (`benches/kdfs/replicated.rs`, `KDFS_BENCH_ONLY=replicated`
//! for it alone) runs on stores formatted `--replicas 2` against a
//! GlusterFS replica-2 volume: sequential write and read, and how long a
//! write waits when the node (the brick) serving its file stops.
//!
//! `KDFS_BENCH_ONLY=handover` runs a fourth table, only on request:
//! `krgadm nodes del` of a node holding kDFS files against `cp -a` of them
//! (`benches/kdfs/handover.rs`).
//!
//! `KDFS_BENCH_MOUNT_OPTS=a,b` mounts node 1 with those `-o` options too
//! (`nolend`: compare creates with and without lent directories).
//!
//! KDFS_TEST_DIR (default /tmp) is where every target lives: the native
//! directory, the kDFS stores and the GlusterFS bricks — one file system
//! for all, so that its quirks weigh on each alike (ext4 without a journal
//! makes a create after many deletions slow: see docs/kdfs.md, Benchmark).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "kdfs/gluster.rs"]
mod gluster;
#[path = "kdfs/handover.rs"]
mod handover;
#[path = "kdfs/replicated.rs"]
mod replicated;
#[path = "kdfs/striped.rs"]
mod striped;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use gluster::Gluster;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

/// One row of results: a unit and a value per target.
struct Row {
    name: String,
    unit: &'static str,
    values: Vec<Option<f64>>,
}

fn seq_write(dir: &Path, mb: u64) -> f64 {
    let p = dir.join("seq.bin");
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = File::create(&p).expect("create seq file");
    for _ in 0..mb {
        f.write_all(&buf).expect("write");
    }
    f.sync_all().expect("fsync");
    drop(f);
    mb as f64 / t.elapsed().as_secs_f64()
}

fn seq_read(dir: &Path, mb: u64) -> f64 {
    drop_caches();
    let p = dir.join("seq.bin");
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut f = File::open(&p).expect("open seq file");
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert_eq!(total, mb << 20);
    let r = mb as f64 / t.elapsed().as_secs_f64();
    let _ = fs::remove_file(&p);
    r
}

/// fio 4 KiB random I/O (O_DIRECT, psync) on a 256 MiB file: IOPS.
fn fio(dir: &Path, rw: &str, secs: u64) -> Option<f64> {
    let out = Command::new("fio")
        .args([
            "--name=kdfsbench",
            "--bs=4k",
            "--size=256M",
            "--ioengine=psync",
            "--direct=1",
            "--time_based",
        ])
        .arg(format!("--rw={rw}"))
        .arg(format!("--runtime={secs}"))
        .arg(format!("--directory={}", dir.display()))
        .args(["--output-format=json"])
        .output()
        .ok()?;
    let _ = fs::remove_file(dir.join("kdfsbench.0.0"));
    if !out.status.success() {
        eprintln!(
            "fio failed on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let job = &v["jobs"][0];
    let key = if rw.contains("read") { "read" } else { "write" };
    job[key]["iops"].as_f64()
}

/// create, stat, readdir, unlink of `n` files: ops/s each.
fn metadata(dir: &Path, n: u64) -> [f64; 4] {
    let d = dir.join("meta");
    fs::create_dir(&d).expect("mkdir meta");
    let names: Vec<PathBuf> = (0..n).map(|i| d.join(format!("file{i:06}"))).collect();
    let t = Instant::now();
    for p in &names {
        File::create(p).expect("create");
    }
    let create = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for p in &names {
        fs::symlink_metadata(p).expect("stat");
    }
    let stat = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let count = fs::read_dir(&d).expect("readdir").count() as u64;
    assert_eq!(count, n);
    let readdir = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for p in &names {
        fs::remove_file(p).expect("unlink");
    }
    let unlink = n as f64 / t.elapsed().as_secs_f64();
    fs::remove_dir(&d).expect("rmdir meta");
    [create, stat, readdir, unlink]
}

/// A tarball of a tree of `n` small files (100 per directory, 1 to 8 KiB
/// of varied bytes), made once per run under `base`.
fn small_file_tarball(base: &Path, n: u64) -> PathBuf {
    let tree = base.join("tree");
    for i in 0..n {
        let d = tree.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&d).expect("mkdir for the tarball");
        }
        let len = 1024 * (1 + (i as usize * 7) % 8);
        let body: Vec<u8> = (0..len).map(|k| (k as u64 * 31 + i) as u8).collect();
        fs::write(d.join(format!("f{i:05}.txt")), body).expect("file for the tarball");
    }
    let tar = base.join("tree.tar");
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "tar -cf {}", tar.display());
    fs::remove_dir_all(&tree).expect("remove the tarball's tree");
    tar
}

/// `tar -xf` of the small-file tarball into `dir`: files per second (the
/// tree is removed afterwards, untimed).
fn untar(dir: &Path, tar: &Path, n: u64) -> Option<f64> {
    let d = dir.join("untar");
    fs::create_dir(&d).expect("mkdir untar");
    let t = Instant::now();
    let ok = Command::new("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(&d)
        .status()
        .is_ok_and(|s| s.success());
    let r = n as f64 / t.elapsed().as_secs_f64();
    fs::remove_dir_all(&d).expect("remove the untarred tree");
    ok.then_some(r)
}

/// `dbench 4` (its Samba-like client load: creates, writes, reads,
/// renames, locks, unlinks) for `secs` seconds: its throughput in MB/s;
/// None when dbench is not installed (Debian package dbench).
fn dbench(dir: &Path, secs: u64) -> Option<f64> {
    let d = dir.join("dbench");
    fs::create_dir(&d).expect("mkdir dbench");
    let out = Command::new("dbench")
        .arg("-D")
        .arg(&d)
        .args(["-t", &secs.to_string(), "4"])
        .output();
    let _ = fs::remove_dir_all(&d);
    let out = out.ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tput = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Throughput "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    if tput.is_none() {
        eprintln!(
            "dbench on {} gave no throughput: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tput
}

/// What to run of [`LINES`]: everything, or one group (`KDFS_BENCH_ONLY`).
#[derive(Clone, Copy, PartialEq)]
enum Only {
    All,
    /// The data lines (sequential and fio) and the remote table.
    Data,
    Meta,
    Small,
}

fn only() -> Only {
    match std::env::var("KDFS_BENCH_ONLY").as_deref() {
        Ok("meta") => Only::Meta,
        Ok("small") => Only::Small,
        Ok("data") => Only::Data,
        _ => Only::All,
    }
}

/// The work of one round, sized by the environment.
struct Work<'a> {
    seq_mb: u64,
    files: u64,
    fio_secs: u64,
    dbench_secs: u64,
    tar: &'a Path,
}

/// One round of every line on `dir`, in the order of [`LINES`].
fn run_all(dir: &Path, w: &Work) -> Vec<Option<f64>> {
    let mut v = vec![None; LINES.len()];
    let which = only();
    if matches!(which, Only::All | Only::Data) {
        v[0] = Some(seq_write(dir, w.seq_mb));
        v[1] = Some(seq_read(dir, w.seq_mb));
        v[2] = fio(dir, "randread", w.fio_secs);
        v[3] = fio(dir, "randwrite", w.fio_secs);
    }
    if matches!(which, Only::All | Only::Meta) {
        for (i, m) in metadata(dir, w.files).into_iter().enumerate() {
            v[4 + i] = Some(m);
        }
    }
    if matches!(which, Only::All | Only::Small) {
        v[8] = untar(dir, w.tar, w.files);
        v[9] = dbench(dir, w.dbench_secs);
    }
    v
}

const LINES: [(&str, &str); 10] = [
    ("seq write 1 MiB blocks + fsync", "MiB/s"),
    ("seq read (cold cache)", "MiB/s"),
    ("fio 4k randread O_DIRECT", "IOPS"),
    ("fio 4k randwrite O_DIRECT", "IOPS"),
    ("create", "ops/s"),
    ("stat", "ops/s"),
    ("readdir", "entries/s"),
    ("unlink", "ops/s"),
    ("untar small-file tree", "files/s"),
    ("dbench 4 clients", "MB/s"),
];

/// Lines on another node's file, in the order [`run_remote`] returns them.
const REMOTE_LINES: [(&str, &str); 4] = [
    ("remote seq write 1 MiB + fsync", "MiB/s"),
    ("remote seq read (cold cache)", "MiB/s"),
    ("remote fio 4k randread O_DIRECT", "IOPS"),
    ("remote fio 4k randwrite O_DIRECT", "IOPS"),
];

/// Write `mb` MiB into `path` (through the owner's mount, so the data lives
/// on the owner's node).
fn lay_out(path: &Path, mb: u64) {
    let buf = vec![0xa5u8; 1 << 20];
    let mut f = File::create(path).expect("create remote file");
    for _ in 0..mb {
        f.write_all(&buf).expect("lay out remote file");
    }
    f.sync_all().expect("fsync");
}

/// One round of [`REMOTE_LINES`]: `here` and `owner` are one kDFS directory
/// seen through node 1's and node 2's mounts. Every file is created through
/// `owner` (its data lives there) and then used through `here`, so every
/// byte crosses the peer connection between the two krgds.
fn run_remote(here: &Path, owner: &Path, seq_mb: u64, fio_secs: u64) -> Vec<Option<f64>> {
    // seq_write opens the existing file with O_TRUNC: it stays node 2's.
    File::create(owner.join("seq.bin")).expect("create remote seq file");
    let w = seq_write(here, seq_mb);
    let r = seq_read(here, seq_mb);
    // fio reuses a file of the right size instead of laying it out itself.
    lay_out(&owner.join("kdfsbench.0.0"), 256);
    let rr = fio(here, "randread", fio_secs);
    lay_out(&owner.join("kdfsbench.0.0"), 256);
    let rw = fio(here, "randwrite", fio_secs);
    vec![Some(w), Some(r), rr, rw]
}

/// Run [`REMOTE_LINES`] `rounds` times and print their medians, with the
/// ratio to the native and GlusterFS figures of the same lines when they
/// were measured (`[native, glusterfs]`, by line).
fn remote_table(
    cluster: &common::Cluster,
    rounds: u64,
    seq_mb: u64,
    fio_secs: u64,
    refs: [&[Option<f64>]; 2],
) {
    let here = cluster.mnt(0).join("bench-remote");
    fs::create_dir(&here).expect("mkdir bench-remote on kdfs");
    let owner = cluster.mnt(1).join("bench-remote");
    let mut samples = vec![Vec::new(); REMOTE_LINES.len()];
    for round in 1..=rounds {
        for (line, v) in run_remote(&here, &owner, seq_mb, fio_secs)
            .into_iter()
            .enumerate()
        {
            samples[line].extend(v);
        }
        eprintln!("kDFS bench: remote round {round}/{rounds} done");
    }
    println!("another node's file (node 2's data through node 1's mount), medians of {rounds}:");
    println!(
        "{:<32} {:>10} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "work", "unit", "native", "kdfs", "glusterfs", "kdfs/nat", "kdfs/glu"
    );
    for (i, ((name, unit), s)) in REMOTE_LINES.iter().zip(samples).enumerate() {
        let k = median(s);
        let [n, g] = refs.map(|r| r.get(i).copied().flatten());
        let fmt = |v: Option<f64>| v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into());
        let ratio = |r: Option<f64>| match (k, r) {
            (Some(k), Some(r)) if r > 0.0 => format!("{:.2}", k / r),
            _ => "-".into(),
        };
        println!(
            "{name:<32} {unit:>10} {:>12} {:>12} {:>12} {:>10} {:>10}",
            fmt(n),
            fmt(k),
            fmt(g),
            ratio(n),
            ratio(g)
        );
    }
    let _ = fs::remove_dir(&here);
}

/// Median of the values measured (None if none was).
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seq_mb = env_num("KDFS_BENCH_SEQ_MB", 1024);
    let files = env_num("KDFS_BENCH_FILES", 10_000);
    let fio_secs = env_num("KDFS_BENCH_FIO_SECS", 5);
    let dbench_secs = env_num("KDFS_BENCH_DBENCH_SECS", 10);
    let native = tempfile::Builder::new()
        .prefix("kdfs-bench-native")
        .tempdir_in(common::test_dir())
        .expect("native dir");
    let cluster = common::Cluster::with_kdfs(3);
    // Node 1's mount with other options (`nolend`, `nopassthrough`, ...),
    // to compare builds of one binary.
    if let Ok(opts) = std::env::var("KDFS_BENCH_MOUNT_OPTS") {
        cluster.umount(0);
        let out = cluster.mount(0, &opts);
        assert!(
            out.status.success(),
            "mount -o {opts}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rounds = env_num("KDFS_BENCH_ROUNDS", 3).max(1);
    let stripe_mb = env_num("KDFS_BENCH_STRIPE_MB", 4096);
    if std::env::var("KDFS_BENCH_ONLY").is_ok_and(|v| v == "striped") {
        println!(
            "kDFS bench: striping only, {stripe_mb} MiB, {rounds} round(s); 3 nodes on loopback"
        );
        striped::table(&cluster, rounds, stripe_mb);
        return;
    }
    if std::env::var("KDFS_BENCH_ONLY").is_ok_and(|v| v == "replicated") {
        drop(cluster);
        println!(
            "kDFS bench: replicated only, seq {seq_mb} MiB, {rounds} round(s); 3 nodes on loopback"
        );
        replicated::table(rounds, seq_mb);
        return;
    }
    if std::env::var("KDFS_BENCH_ONLY").is_ok_and(|v| v == "handover") {
        println!("kDFS bench: hand-over only, {rounds} round(s); 3 nodes on loopback");
        handover::table(&cluster, rounds);
        return;
    }
    if std::env::var("KDFS_BENCH_ONLY").is_ok_and(|v| v == "remote") {
        println!("kDFS bench: remote lines only, seq {seq_mb} MiB, fio {fio_secs} s, {rounds} round(s); 3 nodes on loopback");
        remote_table(&cluster, rounds, seq_mb, fio_secs, [&[], &[]]);
        return;
    }
    let kdir = cluster.mnt(0).join("bench");
    fs::create_dir(&kdir).expect("mkdir on kdfs");
    let gbase = common::test_dir().join(format!("kdfs-bench-gluster-{}", std::process::id()));
    let gluster = Gluster::start(&gbase);

    println!(
        "kDFS bench: seq {seq_mb} MiB, {files} files, fio {fio_secs} s, {rounds} round(s), \
         targets interleaved, medians; 3 nodes on loopback"
    );
    // samples[target][line]: every round's figure. The targets take turns in
    // each round, so that the machine's drift (memory given back to the
    // host, other work) spreads over all of them alike.
    let mut targets: Vec<&Path> = vec![native.path(), &kdir];
    if let Some(g) = &gluster {
        targets.push(&g.mnt);
    }
    let tar_dir = tempfile::Builder::new()
        .prefix("kdfs-bench-tar")
        .tempdir_in(common::test_dir())
        .expect("tarball dir");
    let tar = if matches!(only(), Only::Meta | Only::Data) {
        PathBuf::new()
    } else {
        small_file_tarball(tar_dir.path(), files)
    };
    let work = Work {
        seq_mb,
        files,
        fio_secs,
        dbench_secs,
        tar: &tar,
    };
    let mut samples = vec![vec![Vec::new(); LINES.len()]; targets.len()];
    for round in 1..=rounds {
        for (t, dir) in targets.iter().enumerate() {
            for (line, v) in run_all(dir, &work).into_iter().enumerate() {
                samples[t][line].extend(v);
            }
        }
        eprintln!("kDFS bench: round {round}/{rounds} done");
    }
    let med: Vec<Vec<Option<f64>>> = samples
        .into_iter()
        .map(|lines| lines.into_iter().map(median).collect())
        .collect();
    let mut rows = Vec::new();
    for (i, (name, unit)) in LINES.iter().enumerate() {
        rows.push(Row {
            name: name.to_string(),
            unit,
            values: vec![med[0][i], med[1][i], med.get(2).and_then(|g| g[i])],
        });
    }
    println!(
        "{:<32} {:>10} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "work", "unit", "native", "kdfs", "glusterfs", "kdfs/nat", "kdfs/glu"
    );
    let fmt = |v: Option<f64>| v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into());
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    for r in rows {
        if r.values.iter().all(Option::is_none) {
            continue;
        }
        let (nv, kv, gv) = (r.values[0], r.values[1], r.values[2]);
        println!(
            "{:<32} {:>10} {:>12} {:>12} {:>12} {:>10} {:>10}",
            r.name,
            r.unit,
            fmt(nv),
            fmt(kv),
            fmt(gv),
            ratio(kv, nv),
            ratio(kv, gv)
        );
    }
    if !matches!(only(), Only::All | Only::Data) {
        drop(gluster);
        return;
    }
    // The native and GlusterFS columns of the remote table: the same four
    // lines (GlusterFS's client reaches its bricks over connections too).
    let native_seq: Vec<Option<f64>> = (0..4).map(|i| med[0][i]).collect();
    let gluster_seq: Vec<Option<f64>> = (0..4).map(|i| med.get(2).and_then(|g| g[i])).collect();
    remote_table(
        &cluster,
        rounds,
        seq_mb,
        fio_secs,
        [&native_seq, &gluster_seq],
    );
    if only() == Only::Data {
        drop(gluster);
        return;
    }
    striped::table(&cluster, rounds, stripe_mb);
    drop(gluster);
    drop(cluster);
    replicated::table(rounds, seq_mb);
}
