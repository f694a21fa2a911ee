//! Crash points: a real 2-node kDFS whose krgds, and then its client, are
//! killed (SIGKILL, at a named step armed through `KDFS_TEST_CRASH_FILE`)
//! in the middle of cross-node operations; then fsck.kdfs on the stopped
//! stores, and the namespace after the repair compared with what it must be.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{fsck_bin, run, wait_until, Cluster};

/// Node index (0 or 1) whose krgd dies at crash point `point` while `op`
/// runs through node 1's mount; `op` must fail, and the krgd is restarted.
fn crash(c: &mut Cluster, node: usize, point: &str, op: impl FnOnce(&Path) -> std::io::Result<()>) {
    fs::write(c.nodes[node].data.join("crash-at"), point).unwrap();
    let m = c.mnt(0).to_path_buf();
    let t = std::time::Instant::now();
    let r = op(&m);
    eprintln!("{point}: {r:?} after {:?}", t.elapsed());
    assert!(r.is_err(), "{point}: the operation succeeded");
    assert!(
        !c.nodes[node].data.join("crash-at").exists(),
        "{point}: the crash point was not reached ({r:?})"
    );
    c.kill_krgd(node);
    c.start_krgd(node);
    let t = std::time::Instant::now();
    // Both krgds answer again through node 1's mount (the client keeps a
    // failed node down for a moment, then reconnects): an open is theirs
    // (a lookup of node 1's own files is not, the client reads them).
    wait_until("the restarted krgd", Duration::from_secs(30), || {
        fs::File::open(m.join("L/p1")).is_ok() && fs::File::open(m.join("R/p2")).is_ok()
    });
    eprintln!("{point}: back after {:?}", t.elapsed());
}

/// Node 1's mount.kdfs dies at client crash point `point` while `op` runs
/// through it; `op` must fail, and the mount is made again.
fn client_crash(c: &mut Cluster, point: &str, op: impl FnOnce(&Path) -> std::io::Result<()>) {
    let armed = c.nodes[0].data.join("client-crash-at");
    fs::write(&armed, point).unwrap();
    let m = c.mnt(0).to_path_buf();
    let r = op(&m);
    assert!(r.is_err(), "{point}: the operation succeeded");
    assert!(!armed.exists(), "{point}: not reached ({r:?})");
    c.umount(0);
    let out = c.mount(0, "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("the new mount", Duration::from_secs(30), || {
        fs::File::open(m.join("L/p1")).is_ok() && fs::File::open(m.join("R/p2")).is_ok()
    });
}

/// Every name under `root`: kind, link count and content.
fn tree(root: &Path) -> BTreeMap<String, (char, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if m.is_dir() {
                todo.push(p.clone());
                out.insert(rel, ('d', m.nlink(), vec![]));
            } else {
                out.insert(rel, ('f', m.nlink(), fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// fsck.kdfs on both stores; (exit code, problems found by kind).
fn fsck(c: &Cluster, flag: &str) -> (i32, BTreeMap<String, usize>, String) {
    let out = run(Command::new(fsck_bin())
        .arg(flag)
        .arg("--json")
        .arg(&c.nodes[0].store)
        .arg(&c.nodes[1].store));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("fsck.kdfs output ({e}): {text} {stderr}"));
    let mut kinds = BTreeMap::new();
    for f in report["findings"].as_array().unwrap() {
        *kinds
            .entry(f["problem"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    (out.status.code().unwrap(), kinds, text)
}

#[test]
fn crashes_between_the_steps_of_cross_node_operations_are_repaired_by_fsck() {
    let mut c = Cluster::with_kdfs(2);
    // R lives on node 2 (made through its mount), L on node 1; every
    // operation below runs through node 1's mount, so its new inodes are
    // made on node 1 and R's entries are on node 2.
    fs::create_dir(c.mnt(1).join("R")).unwrap();
    fs::write(c.mnt(1).join("R/p2"), "probe 2").unwrap();
    let m = c.mnt(0).to_path_buf();
    fs::create_dir(m.join("L")).unwrap();
    fs::write(m.join("L/p1"), "probe 1").unwrap();
    fs::write(m.join("L/f3"), "three").unwrap();
    fs::write(m.join("L/f4"), "four").unwrap();
    fs::write(m.join("R/f5"), "five").unwrap();
    fs::create_dir(m.join("R/d6")).unwrap();
    fs::create_dir(m.join("L/d7")).unwrap();
    for (name, data) in [
        ("L/c2", "c2"),
        ("R/c3", "c3"),
        ("R/c4", "c4"),
        ("L/c6", "c6"),
    ] {
        fs::write(m.join(name), data).unwrap();
    }
    fs::hard_link(m.join("R/c4"), m.join("L/c4b")).unwrap();
    fs::create_dir(m.join("R/c5")).unwrap();

    // create in R: node 2 dies once the entry is in; node 1 drops the inode.
    crash(&mut c, 1, "add-entry", |m| fs::write(m.join("R/s1"), "x"));
    // mkdir in R: node 1 dies once the inode is made, before the entry.
    crash(&mut c, 0, "make-inode", |m| fs::create_dir(m.join("R/s2")));
    // ln across nodes: the new name is in, the count is taken back.
    crash(&mut c, 1, "add-entry", |m| {
        fs::hard_link(m.join("L/f3"), m.join("R/l3"))
    });
    // mv of a file across nodes: the new name is in, the old one stays.
    crash(&mut c, 1, "add-entry", |m| {
        fs::rename(m.join("L/f4"), m.join("R/f4"))
    });
    // rm of R/f5: the entry is gone, the inode keeps its link.
    crash(&mut c, 1, "remove-entry", |m| {
        fs::remove_file(m.join("R/f5"))
    });
    // rmdir of R/d6: the directory is gone, its entry stays.
    crash(&mut c, 0, "remove-dir", |m| fs::remove_dir(m.join("R/d6")));
    // mv of a directory across nodes: named in both.
    crash(&mut c, 1, "add-entry", |m| {
        fs::rename(m.join("L/d7"), m.join("R/d7"))
    });
    // create in a directory of the same node: inode made, entry not.
    // (Node 2 looking into L first keeps L from being lent to node 1's
    // mount, which would make the file itself, without krgd.)
    fs::metadata(c.mnt(1).join("L/p1")).unwrap();
    crash(&mut c, 0, "create-entry", |m| {
        fs::write(m.join("L/s8"), "x")
    });

    // The client (node 1's mount.kdfs) killed between two steps.
    client_crash(&mut c, "client-make", |m| fs::write(m.join("R/c1"), "x"));
    client_crash(&mut c, "client-link", |m| {
        fs::hard_link(m.join("L/c2"), m.join("R/c2l"))
    });
    client_crash(&mut c, "client-unlink", |m| fs::remove_file(m.join("R/c3")));
    client_crash(&mut c, "client-unlink", |m| fs::remove_file(m.join("R/c4")));
    client_crash(&mut c, "client-rmdir", |m| fs::remove_dir(m.join("R/c5")));
    client_crash(&mut c, "client-rename", |m| {
        fs::rename(m.join("L/c6"), m.join("R/c6"))
    });
    // A create in a directory lent to node 1's mount, which makes the file
    // itself: it dies once the inode is made, before the entry. (Once the
    // mount killed above is taken for gone: krgd lends nothing to a node
    // with two mounts.)
    fs::create_dir(m.join("L2")).unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    client_crash(&mut c, "create-entry", |m| fs::write(m.join("L2/s9"), "x"));

    // The damage, as users see it: a name that answers ENOENT.
    let names: Vec<String> = fs::read_dir(m.join("R"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert!(names.contains(&"s1".to_string()), "{names:?}");
    assert!(fs::metadata(m.join("R/s1")).is_err());

    // Offline: fsck refuses a store in use, then checks the stopped stores.
    let busy = run(Command::new(fsck_bin()).arg(&c.nodes[0].store));
    assert_eq!(busy.status.code(), Some(8));
    assert!(String::from_utf8_lossy(&busy.stderr).contains("is in use"));
    c.stop_all();
    let human = run(Command::new(fsck_bin())
        .arg(&c.nodes[0].store)
        .arg(&c.nodes[1].store));
    let human = String::from_utf8_lossy(&human.stdout).to_string();
    eprintln!("{human}");
    assert!(
        human.ends_with("fsck.kdfs: 17 problem(s) left\n"),
        "{human}"
    );
    let (code, kinds, text) = fsck(&c, "-n");
    assert_eq!(code, 4, "{text}");
    let want: BTreeMap<String, usize> = [
        ("dangling-entry", 3), // R/s1, R/d6, R/c5
        ("orphan", 6),         // s2, f5, s8, c1, c3, s9
        ("link-count", 5),     // f3 (+R/l3), f4 (+R/f4), c6 (+R/c6); c2, c4 (one too high)
        ("second-name", 1),    // d7
        ("subdir-count", 2),   // R (d6, c5 gone), L (d7 gone)
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(kinds, want, "{text}");
    let (code, kinds, text) = fsck(&c, "-y");
    assert_eq!((code, kinds), (1, want), "{text}");
    let (code, _, text) = fsck(&c, "-n");
    assert_eq!(code, 0, "{text}");
    // Nothing with data was deleted: the orphans are in node 1's lost+found.
    let lf = c.nodes[0].store.join("lost+found");
    let mut kept: Vec<Vec<u8>> = fs::read_dir(&lf)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| fs::read(p).unwrap())
        .collect();
    kept.sort();
    assert_eq!(kept, [&b""[..], b"", b"", b"c3", b"five"]);

    // Served and mounted again: the namespace is what the operations that
    // completed, and fsck, make it.
    c.start_all();
    let f = |n: u64, s: &str| ('f', n, s.as_bytes().to_vec());
    let want: BTreeMap<String, (char, u64, Vec<u8>)> = [
        ("L", ('d', 2, vec![])),
        ("L2", ('d', 2, vec![])),
        ("L/f3", f(2, "three")),
        ("L/f4", f(2, "four")),
        ("L/p1", f(1, "probe 1")),
        ("L/c2", f(1, "c2")),
        ("L/c4b", f(1, "c4")),
        ("L/c6", f(2, "c6")),
        ("R/c6", f(2, "c6")),
        ("R/p2", f(1, "probe 2")),
        ("R", ('d', 3, vec![])),
        ("R/l3", f(2, "three")),
        ("R/f4", f(2, "four")),
        ("R/d7", ('d', 2, vec![])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for i in 0..2 {
        wait_until("both nodes", Duration::from_secs(30), || {
            fs::read_dir(c.mnt(i).join("R")).is_ok()
        });
        assert_eq!(tree(c.mnt(i)), want, "through node {}'s mount", i + 1);
    }
    assert_eq!(fs::metadata(c.mnt(0)).unwrap().nlink(), 5, "root: R, L, L2");
}
