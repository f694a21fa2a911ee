//! Randomized operation sequences applied both to a 2-node kDFS (alternating
//! between the two nodes' mounts) and to a local directory: every result
//! (success or errno) and the final trees must be the same.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NAMES: [&str; 6] = ["a", "b", "c", "d/x", "d/y", "e/d/z"];
const DIRS: [&str; 3] = ["d", "e", "e/d"];

#[derive(Debug, Clone)]
enum Op {
    Write {
        path: &'static str,
        off: u64,
        len: usize,
        byte: u8,
    },
    Truncate {
        path: &'static str,
        len: u64,
    },
    Unlink(&'static str),
    Mkdir(&'static str),
    Rmdir(&'static str),
    Rename(&'static str, &'static str),
    Link(&'static str, &'static str),
    Chmod(&'static str, u32),
    Read(&'static str),
}

fn pick<T: Copy>(rng: &mut StdRng, xs: &[T]) -> T {
    xs[rng.random_range(0..xs.len())]
}

fn random_op(rng: &mut StdRng) -> Op {
    let any: Vec<&'static str> = NAMES.iter().chain(DIRS.iter()).copied().collect();
    match rng.random_range(0..10) {
        0 | 1 => Op::Write {
            path: pick(rng, &NAMES),
            off: rng.random_range(0..5000),
            len: rng.random_range(0..3000),
            byte: rng.random(),
        },
        2 => Op::Truncate {
            path: pick(rng, &NAMES),
            len: rng.random_range(0..6000),
        },
        3 => Op::Unlink(pick(rng, &NAMES)),
        4 => Op::Mkdir(pick(rng, &DIRS)),
        5 => Op::Rmdir(pick(rng, &DIRS)),
        6 => Op::Rename(pick(rng, &any), pick(rng, &any)),
        7 => Op::Link(pick(rng, &NAMES), pick(rng, &NAMES)),
        8 => Op::Chmod(pick(rng, &NAMES), pick(rng, &[0o600, 0o644, 0o755, 0o4755])),
        _ => Op::Read(pick(rng, &NAMES)),
    }
}

/// Apply `op` under `root`; the outcome is the data read or the errno.
fn apply(root: &Path, op: &Op) -> Result<Vec<u8>, i32> {
    let p = |s: &str| root.join(s);
    let e = |r: std::io::Error| r.raw_os_error().unwrap_or(-1);
    match op {
        Op::Write {
            path,
            off,
            len,
            byte,
        } => {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(p(path))
                .map_err(e)?;
            f.seek(SeekFrom::Start(*off)).map_err(e)?;
            f.write_all(&vec![*byte; *len]).map_err(e)?;
            Ok(vec![])
        }
        Op::Truncate { path, len } => OpenOptions::new()
            .write(true)
            .open(p(path))
            .and_then(|f| f.set_len(*len))
            .map(|_| vec![])
            .map_err(e),
        Op::Unlink(a) => fs::remove_file(p(a)).map(|_| vec![]).map_err(e),
        Op::Mkdir(a) => fs::create_dir(p(a)).map(|_| vec![]).map_err(e),
        Op::Rmdir(a) => fs::remove_dir(p(a)).map(|_| vec![]).map_err(e),
        Op::Rename(a, b) => fs::rename(p(a), p(b)).map(|_| vec![]).map_err(e),
        Op::Link(a, b) => fs::hard_link(p(a), p(b)).map(|_| vec![]).map_err(e),
        Op::Chmod(a, m) => fs::set_permissions(p(a), fs::Permissions::from_mode(*m))
            .map(|_| vec![])
            .map_err(e),
        Op::Read(a) => {
            let mut v = vec![];
            fs::File::open(p(a))
                .and_then(|mut f| f.read_to_end(&mut v))
                .map_err(e)?;
            Ok(v)
        }
    }
}

/// Everything observable of a tree: per path, kind, mode, size, links, content.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (bool, u32, u64, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let m = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if m.is_dir() {
                stack.push(path.clone());
                out.insert(rel, (true, m.mode(), 0, m.nlink(), vec![]));
            } else {
                out.insert(
                    rel,
                    (
                        false,
                        m.mode(),
                        m.len(),
                        m.nlink(),
                        fs::read(&path).unwrap(),
                    ),
                );
            }
        }
    }
    out
}

#[test]
fn random_operation_sequences_match_a_local_directory() {
    let c = common::Cluster::with_kdfs(2);
    let local = tempfile::tempdir().unwrap();
    for seed in 0..4u64 {
        let base = format!("run{seed}");
        fs::create_dir(local.path().join(&base)).unwrap();
        fs::create_dir(c.mnt(0).join(&base)).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        for step in 0..300 {
            let op = random_op(&mut rng);
            // Alternate the node the operation is issued on.
            let k = c.mnt(step % 2).join(&base);
            let want = apply(&local.path().join(&base), &op);
            let got = apply(&k, &op);
            assert_eq!(got, want, "seed {seed} step {step}: {op:?}");
        }
        let (a, b) = (
            snapshot(&local.path().join(&base)),
            snapshot(&c.mnt(1).join(&base)),
        );
        assert_eq!(a, b, "seed {seed}: final trees differ");
    }
}
