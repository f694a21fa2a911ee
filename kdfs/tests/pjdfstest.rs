//! pjdfstest (the POSIX file system test suite, `cargo install pjdfstest
//! --version 0.2.2 --locked`) against a 2-node kDFS mount, run the honest way
//! (see MACHINE-NOTES): as root, allow_other, a tmpfs second file system for
//! the EXDEV cases, Linux features on, real dummy users.
//!
//! Ignored by default because it needs the pjdfstest binary and a `tests`
//! user: `cargo test -p kdfs --test pjdfstest -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs;
use std::process::Command;

const CONFIG: &str = r#"
[features]
posix_fallocate = {}
utimensat = {}
utime_now = {}
rename_ctime = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [
   ["nobody", "nogroup"],
   ["tests", "tests"],
]
"#;

#[test]
#[ignore = "needs `cargo install pjdfstest` and a `tests` user"]
fn pjdfstest_on_a_two_node_mount() {
    let (c, work) = two_nodes();
    run_pjdfstest(&c, &work);
}

/// The same in a directory striped `4K:2`: every file made by the suite
/// (and in its subdirectories) is cut in 4 KiB units over both nodes.
#[test]
#[ignore = "needs `cargo install pjdfstest` and a `tests` user"]
fn pjdfstest_in_a_striped_directory() {
    let (c, work) = two_nodes();
    let set = Command::new(env!("CARGO_BIN_EXE_kdfsctl"))
        .args(["stripe", "4K:2"])
        .arg(&work)
        .status()
        .unwrap();
    assert!(set.success());
    run_pjdfstest(&c, &work);
}

/// The same on stores formatted `--replicas 2`: every change goes through
/// krgd and is mirrored on the other node before it is answered.
#[test]
#[ignore = "needs `cargo install pjdfstest` and a `tests` user"]
fn pjdfstest_on_a_replicated_mount() {
    let (c, work) = two_nodes_formatted(&["--replicas", "2"]);
    run_pjdfstest(&c, &work);
}

/// Two nodes, and the suite's directory made through node 2's mount.
fn two_nodes() -> (common::Cluster, std::path::PathBuf) {
    two_nodes_formatted(&[])
}

fn two_nodes_formatted(mkfs_args: &[&str]) -> (common::Cluster, std::path::PathBuf) {
    let c = common::Cluster::with_kdfs_formatted(2, mkfs_args);
    let work = c.mnt(1).join("pjd");
    fs::create_dir(&work).unwrap();
    (c, work)
}

fn run_pjdfstest(c: &common::Cluster, work: &std::path::Path) {
    let cfg = c.root.path().join("pjdfstest.toml");
    fs::write(&cfg, CONFIG).unwrap();
    let sec = c.root.path().join("secondary");
    fs::create_dir(&sec).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&sec)
        .status()
        .unwrap()
        .success());
    let out = Command::new("pjdfstest")
        .arg("-c")
        .arg(&cfg)
        .arg("-p")
        .arg(work)
        .arg("-s")
        .arg(&sec)
        .current_dir(work)
        .output();
    let _ = Command::new("umount").arg(&sec).status();
    let out = out.expect("run pjdfstest (cargo install pjdfstest --version 0.2.2 --locked)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let summary = text
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or("no summary")
        .to_string();
    println!("pjdfstest on kDFS: {summary}");
    for l in text.lines().filter(|l| l.contains("FAILED")) {
        println!("  {l}");
    }
    assert!(summary.contains(" 0 failed"), "{summary}");
}
