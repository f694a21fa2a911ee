//! Striped files on three real krgds and mounts (loopback): `kdfsctl
//! stripe` on a directory, a file made in it cut over the three nodes'
//! stores and read whole from every mount, inheritance, truncation and
//! removal reaching the other holders, and the refusals.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{as_tests_user, wait_until, Cluster};

const UNIT: usize = 64 << 10;

fn kdfsctl(args: &[&Path]) -> Output {
    Command::new(PathBuf::from(env!("CARGO_BIN_EXE_kdfsctl")))
        .arg("stripe")
        .args(args)
        .output()
        .unwrap()
}

fn out(o: &Output) -> String {
    assert!(
        o.status.success(),
        "kdfsctl failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A refusal: exit 1 and one line on stderr containing `why`.
fn refused(o: &Output, why: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "not refused: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(why), "{why:?} not in {err:?}");
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

/// Node `i`'s copy of another node's striped file `ino`.
fn copy_of(c: &Cluster, i: usize, ino: u64) -> PathBuf {
    c.nodes[i].store.join("stripes").join(format!("{ino:016x}"))
}

#[test]
fn a_striped_file_is_spread_over_the_nodes_and_read_whole_from_any() {
    common::ensure_binaries();
    let mut c = Cluster::with_kdfs(3);
    let big = c.mnt(0).join("big");
    fs::create_dir(&big).unwrap();
    let set = kdfsctl(&[Path::new("64K:3"), &big]);
    assert!(out(&set).contains("striped 64K:3"), "{}", out(&set));
    // Seen from another node's mount.
    let seen = out(&kdfsctl(&[&c.mnt(1).join("big")]));
    assert!(seen.trim_end().ends_with(": 64K:3"), "{seen}");

    // Written through node 1: unit i is on node (i % 3) + 1.
    let data = pattern(16 * UNIT + 1000);
    let f = big.join("f");
    fs::write(&f, &data).unwrap();
    let ino = fs::metadata(&f).unwrap().ino();
    let layout = out(&kdfsctl(&[&f]));
    assert!(layout.contains("64K:3 on nodes 1,2,3"), "{layout}");
    for i in 0..3 {
        let back = fs::read(c.mnt(i).join("big/f")).unwrap();
        assert!(back == data, "node {} read back other bytes", i + 1);
    }
    // Node 2 holds units 1, 4, 7…, not unit 0; node 1's object has the size.
    let two = fs::File::open(copy_of(&c, 1, ino)).unwrap();
    let mut unit = vec![0u8; UNIT];
    two.read_exact_at(&mut unit, UNIT as u64).unwrap();
    assert!(unit[..] == data[UNIT..2 * UNIT]);
    two.read_exact_at(&mut unit, 0).unwrap();
    assert!(unit.iter().all(|&b| b == 0), "node 2 holds unit 0's bytes");
    assert!(copy_of(&c, 2, ino).exists());
    assert_eq!(fs::metadata(&f).unwrap().len(), data.len() as u64);

    // A write through node 3 across two units, with an fsync.
    let w = fs::OpenOptions::new()
        .write(true)
        .open(c.mnt(2).join("big/f"))
        .unwrap();
    w.write_all_at(b"XYZ", (2 * UNIT - 1) as u64).unwrap();
    w.sync_all().unwrap();
    drop(w);
    let back = fs::read(&f).unwrap();
    assert_eq!(&back[2 * UNIT - 1..2 * UNIT + 2], b"XYZ");

    // fallocate would reserve or punch the owner's units only: refused.
    let fa = fs::OpenOptions::new().write(true).open(&f).unwrap();
    // SAFETY: fallocate(2) on an open descriptor, plain integers.
    let r = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&fa), 0, 0, 4096) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EOPNOTSUPP)
    );
    drop(fa);

    // A subdirectory made through node 2 inherits the policy; a file made
    // there starts at node 2.
    let sub = c.mnt(1).join("big/sub");
    fs::create_dir(&sub).unwrap();
    assert!(out(&kdfsctl(&[&sub])).trim_end().ends_with(": 64K:3"));
    fs::write(sub.join("g"), pattern(3 * UNIT)).unwrap();
    let layout = out(&kdfsctl(&[&sub.join("g")]));
    assert!(layout.contains("on nodes 2,3,1"), "{layout}");
    assert!(fs::read(c.mnt(0).join("big/sub/g")).unwrap() == pattern(3 * UNIT));

    // Cut through node 3, grown again through node 2: zeros past the cut,
    // on every holder.
    let t = fs::OpenOptions::new()
        .write(true)
        .open(c.mnt(2).join("big/f"))
        .unwrap();
    t.set_len(100_000).unwrap();
    drop(t);
    assert!(fs::metadata(copy_of(&c, 2, ino)).unwrap().len() <= 100_000);
    let g = fs::OpenOptions::new()
        .write(true)
        .open(c.mnt(1).join("big/f"))
        .unwrap();
    g.set_len(data.len() as u64).unwrap();
    drop(g);
    let back = fs::read(&f).unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back[..100_000] == data[..100_000]);
    assert!(
        back[100_000..].iter().all(|&b| b == 0),
        "old bytes came back after a truncate"
    );

    // Rewritten with O_TRUNC through the owner's node: only the new bytes.
    fs::write(&f, b"short").unwrap();
    assert_eq!(fs::read(c.mnt(2).join("big/f")).unwrap(), b"short");
    assert!(fs::metadata(copy_of(&c, 1, ino)).unwrap().len() <= 5);

    // Removed through node 2: the other holders drop their copies.
    fs::remove_file(c.mnt(1).join("big/f")).unwrap();
    wait_until(
        "the copies of a removed striped file go",
        Duration::from_secs(5),
        || !copy_of(&c, 1, ino).exists() && !copy_of(&c, 2, ino).exists(),
    );

    // A holder down: reading its units fails (never zeros in their place);
    // back, the file reads whole again.
    c.kill_krgd(2);
    let g = c.mnt(0).join("big/sub/g");
    assert!(
        fs::read(&g).is_err(),
        "read a striped file with a holder down"
    );
    c.start_krgd(2);
    wait_until("the holder serves again", Duration::from_secs(10), || {
        fs::read(&g).is_ok_and(|d| d == pattern(3 * UNIT))
    });

    // Files made before a policy, and after it is cleared, are not striped.
    assert!(out(&kdfsctl(&[Path::new("off"), &big])).contains("not striped"));
    fs::write(big.join("plain"), b"x").unwrap();
    assert!(out(&kdfsctl(&[&big.join("plain")])).contains("not striped"));
}

#[test]
fn stripe_refuses_bad_shapes_other_users_and_other_file_systems() {
    common::ensure_binaries();
    let c = Cluster::with_kdfs(2);
    let dir = c.mnt(0).join("d");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    refused(&kdfsctl(&[Path::new("4M:1"), &dir]), "between 2 and 64");
    refused(&kdfsctl(&[Path::new("4M"), &dir]), "UNIT:COUNT");
    refused(&kdfsctl(&[Path::new("1000:2"), &dir]), "multiple of 4K");
    refused(
        &kdfsctl(&[Path::new("4M:2"), Path::new("/tmp")]),
        "not on a kDFS mount",
    );
    fs::write(dir.join("file"), b"x").unwrap();
    refused(
        &kdfsctl(&[Path::new("4M:2"), &dir.join("file")]),
        "not a directory",
    );
    // Another user, even with write permission on the directory.
    let o = as_tests_user(env!("CARGO_BIN_EXE_kdfsctl"))
        .args(["stripe", "4M:2"])
        .arg(&dir)
        .output()
        .unwrap();
    refused(&o, "only root or the directory's owner");
    assert!(out(&kdfsctl(&[&dir])).contains("not striped"));
}

/// `--replicas 2`: a holder's units of another node's striped file are
/// mirrored with its store. While the holder is down its mirror serves
/// them — reads at once, then a write and a truncate — and the holder,
/// back, takes them back as they are now.
#[test]
fn a_failed_holder_s_units_are_served_by_its_mirror() {
    common::ensure_binaries();
    let mut c = Cluster::with_kdfs_formatted(3, &["--replicas", "2"]);
    let big = c.mnt(0).join("big");
    fs::create_dir(&big).unwrap();
    out(&kdfsctl(&[Path::new("64K:3"), &big]));
    let mut data = pattern(16 * UNIT + 1000);
    let f = big.join("f");
    fs::write(&f, &data).unwrap();
    let ino = fs::metadata(&f).unwrap().ino();
    assert!(out(&kdfsctl(&[&f])).contains("on nodes 1,2,3"));
    // Node 2 holds units 1, 4, 7…; node 3 mirrors node 2's store.
    let on_mirror = c.nodes[2]
        .store
        .join(format!("mirrors/2/stripes/{ino:016x}"));
    wait_until(
        "node 2's units on its mirror",
        Duration::from_secs(30),
        || {
            c.mirrored(1)
                && fs::read(&on_mirror).is_ok_and(|b| {
                    b.len() > 5 * UNIT && b[4 * UNIT..5 * UNIT] == data[4 * UNIT..5 * UNIT]
                })
        },
    );

    c.kill_krgd(1);
    assert!(fs::read(&f).unwrap() == data, "read whole with node 2 down");
    let patch = vec![0xab_u8; UNIT];
    let w = fs::OpenOptions::new().write(true).open(&f).unwrap();
    w.write_all_at(&patch, 4 * UNIT as u64).unwrap();
    w.sync_all().unwrap();
    data[4 * UNIT..5 * UNIT].copy_from_slice(&patch);
    let cut = 5 * UNIT + 10;
    w.set_len(cut as u64).unwrap();
    drop(w);
    data.truncate(cut);
    assert!(
        fs::read(c.mnt(2).join("big/f")).unwrap() == data,
        "node 3 reads node 2's units as written while it is down"
    );

    c.start_krgd(1);
    wait_until("node 2 has its store back", Duration::from_secs(30), || {
        let log = fs::read_to_string(c.nodes[1].data.join("krgd.log")).unwrap_or_default();
        log.contains("took the store back")
    });
    let two = fs::read(copy_of(&c, 1, ino)).unwrap();
    assert!(
        two.len() <= cut,
        "node 2's copy was cut: {} bytes",
        two.len()
    );
    assert!(
        two[4 * UNIT..5 * UNIT] == patch[..],
        "node 2 has the write made meanwhile"
    );
    wait_until("node 2 serves its units", Duration::from_secs(10), || {
        fs::read(c.mnt(1).join("big/f")).is_ok_and(|b| b == data)
    });
}
