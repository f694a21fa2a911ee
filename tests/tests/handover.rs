//! `krgadm nodes del` of a live node hands its CAN_MIGRATE processes over:
//! they run on the remaining members before the node is removed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use krg_tests::{bin, detached_stdio, serial, wait_for, TestCluster};

const SETTLE: Duration = Duration::from_secs(20);

/// A parent and its child, each appending `count pid` lines every 20 ms;
/// the parent waits for the flag file before it forks (so the child
/// inherits CAN_MIGRATE).
const PAIR: &str = r#"
import os, sys, time
out, flag = sys.argv[1], sys.argv[2]
while not os.path.exists(flag):
    time.sleep(0.01)
os.fork()
f = open(out, "a", buffering=1)
n = 0
while True:
    n += 1
    f.write("%d %d\n" % (n, os.getpid()))
    time.sleep(0.02)
"#;

/// Killed by PID (with its child) when dropped.
struct Pair(i32, Vec<i32>);

impl Drop for Pair {
    fn drop(&mut self) {
        for p in std::iter::once(self.0).chain(self.1.iter().copied()) {
            // SAFETY: kill(2) of a process this test started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

/// The PIDs that wrote to `out`, and the highest count.
fn writers(out: &Path) -> (Vec<i32>, u64) {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut pids: Vec<i32> = Vec::new();
    let mut top = 0;
    for l in text.lines() {
        let mut w = l.split_whitespace();
        let (Some(n), Some(p)) = (w.next(), w.next()) else {
            continue;
        };
        top = top.max(n.parse().unwrap_or(0));
        if let Ok(p) = p.parse() {
            if !pids.contains(&p) {
                pids.push(p);
            }
        }
    }
    (pids, top)
}

#[test]
fn a_removed_node_hands_its_processes_over() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::loopback(3)?;
    for id in 1..=3 {
        c.start(id)?;
    }
    c.wait_present(1, &[1, 2, 3], SETTLE)?;
    c.krgadm_ok(1, &["cluster", "start"])?;
    c.wait_agreement(&[1, 2, 3], SETTLE)?;
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755))?;

    let out = c.dir.path().join("pair.txt");
    let flag = c.dir.path().join("go");
    let mut cmd = Command::new("python3");
    detached_stdio(cmd.args(["-c", PAIR]).arg(&out).arg(&flag));
    let mut child = cmd.spawn()?;
    let parent = child.id() as i32;
    std::thread::spawn(move || child.wait());
    let mut pair = Pair(parent, Vec::new());
    // flagged through node 3: they are node 3's processes
    let o = Command::new(bin("krgcapset"))
        .env("KRG_SOCKET", c.dir.path().join("krgd3.sock"))
        .args(["-k", &parent.to_string(), "-d", "+CAN_MIGRATE"])
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(&flag, "")?;
    let pids = wait_for(Duration::from_secs(10), "both to write", || {
        let (p, _) = writers(&out);
        (p.len() == 2).then_some(p)
    })?;
    pair.1 = pids.iter().copied().filter(|p| *p != parent).collect();

    let t = std::time::Instant::now();
    let o = c.krgadm(1, &["nodes", "del", "-n", "3"])?;
    eprintln!("nodes del took {:?}", t.elapsed());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Both run on the remaining members now, as krg ps shows, and go on.
    let o = c.krg(1)?.args(["ps", "--json"]).output()?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let rows: Vec<(u64, i64)> = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["node"].as_u64().unwrap(), r["pid"].as_i64().unwrap()))
        .collect();
    for pid in &pids {
        let node = rows
            .iter()
            .find(|(_, p)| *p == i64::from(*pid))
            .map(|r| r.0);
        assert!(
            matches!(node, Some(1 | 2)),
            "process {pid} is not on node 1 or 2 after the removal (krg ps: {rows:?})"
        );
    }
    let (_, before) = writers(&out);
    wait_for(Duration::from_secs(10), "the pair to go on", || {
        let (p, top) = writers(&out);
        (top > before + 5 && p.len() == 2).then_some(())
    })?;
    Ok(())
}
