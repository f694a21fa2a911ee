//! Randomized operation sequences applied both to a 2-node kDFS (alternating
//! between the two nodes' mounts) and to a local directory: every result
//! (success or errno) and the final trees must be the same. With crash
//! points: krgds killed at random steps of the operations, fsck.kdfs, and
//! the same comparison for everything the interrupted operation did not
//! touch.
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
    /// (the wide set: [`random_op_wide`])
    Symlink(&'static str, &'static str),
    /// `renameat2` with `RENAME_EXCHANGE` or `RENAME_NOREPLACE`.
    Rename2(&'static str, &'static str, u32),
    CreateExcl(&'static str),
}

/// Symlink targets: a name, one up, one down, none.
const TARGETS: [&str; 4] = ["a", "../b", "d/x", "nowhere"];

fn pick<T: Copy>(rng: &mut StdRng, xs: &[T]) -> T {
    xs[rng.random_range(0..xs.len())]
}

/// [`random_op`] or, one time in three, a symlink, an exchange or
/// no-replace rename, or an exclusive create.
fn random_op_wide(rng: &mut StdRng) -> Op {
    let any: Vec<&'static str> = NAMES.iter().chain(DIRS.iter()).copied().collect();
    match rng.random_range(0..15) {
        0 | 1 => Op::Symlink(pick(rng, &TARGETS), pick(rng, &NAMES)),
        2 => Op::Rename2(pick(rng, &any), pick(rng, &any), libc::RENAME_EXCHANGE),
        3 => Op::Rename2(pick(rng, &any), pick(rng, &any), libc::RENAME_NOREPLACE),
        4 => Op::CreateExcl(pick(rng, &NAMES)),
        _ => random_op(rng),
    }
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
        Op::Symlink(target, a) => std::os::unix::fs::symlink(target, p(a))
            .map(|_| vec![])
            .map_err(e),
        Op::Rename2(a, b, flags) => rename2(&p(a), &p(b), *flags).map(|_| vec![]).map_err(e),
        Op::CreateExcl(a) => OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p(a))
            .map(|_| vec![])
            .map_err(e),
    }
}

/// Whether kDFS may have refused `op` where the local directory would
/// not, as docs/kdfs.md's Limits say: an exchange across nodes (EINVAL).
/// It is then not applied to the local directory (whose own answer may be
/// EINVAL too: an exchange of a directory with what is under it).
fn refused_across_nodes(op: &Op, got: &Result<Vec<u8>, i32>) -> bool {
    matches!(op, Op::Rename2(_, _, libc::RENAME_EXCHANGE)) && *got == Err(libc::EINVAL)
}

/// `renameat2(2)` with `flags`.
fn rename2(a: &Path, b: &Path, flags: u32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes()).unwrap();
    let b = std::ffi::CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
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
            } else if m.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                use std::os::unix::ffi::OsStrExt;
                let target = target.as_os_str().as_bytes().to_vec();
                out.insert(rel, (false, m.mode(), m.len(), m.nlink(), target));
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
        check_counts(&c.mnt(0).join(&base));
    }
}

/// The same with the operations in bursts on one mount (1 to 30 in a
/// row, then the other's): each node's mount borrows the directories of
/// its store (*Directories lent to the sole mount*), makes and removes
/// files there itself for a while, and the other mount's first touch
/// recalls the loan — every answer and the trees as in a local directory.
#[test]
fn random_operations_in_bursts_on_one_mount_match_a_local_directory() {
    let c = common::Cluster::with_kdfs(2);
    let local = tempfile::tempdir().unwrap();
    for seed in 10..14u64 {
        let base = format!("run{seed}");
        fs::create_dir(local.path().join(&base)).unwrap();
        fs::create_dir(c.mnt(0).join(&base)).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut turns = Turns::bursts();
        for step in 0..300 {
            let on = turns.next(&mut rng);
            let op = random_op_wide(&mut rng);
            let got = apply(&c.mnt(on).join(&base), &op);
            if refused_across_nodes(&op, &got) {
                continue;
            }
            let want = apply(&local.path().join(&base), &op);
            assert_eq!(got, want, "seed {seed} step {step} on mount {on}: {op:?}");
        }
        let want = snapshot(&local.path().join(&base));
        assert_eq!(
            want,
            snapshot(&c.mnt(0).join(&base)),
            "seed {seed}: mount 0"
        );
        assert_eq!(
            want,
            snapshot(&c.mnt(1).join(&base)),
            "seed {seed}: mount 1"
        );
        check_counts(&c.mnt(0).join(&base));
    }
    // (not a test without loans)
    assert!(c.served(0, &["lend"]) + c.served(1, &["lend"]) >= 2.0);
}

/// Which mount issues each operation: the two in turn, or in bursts of 1
/// to 30 on one.
struct Turns {
    bursts: bool,
    on: usize,
    left: u32,
}

impl Turns {
    fn alternating() -> Self {
        Turns {
            bursts: false,
            on: 1,
            left: 0,
        }
    }

    fn bursts() -> Self {
        Turns {
            bursts: true,
            ..Self::alternating()
        }
    }

    /// The mount index of the next operation.
    fn next(&mut self, rng: &mut StdRng) -> usize {
        if self.left == 0 {
            self.on = 1 - self.on;
            self.left = if self.bursts {
                rng.random_range(1..=30)
            } else {
                1
            };
        }
        self.left -= 1;
        self.on
    }
}

/// krgd's crash points (`kdfs::store::crash`) an operation may reach.
fn points(op: &Op) -> &'static [&'static str] {
    match op {
        Op::Write { .. } | Op::Mkdir(_) | Op::Symlink(..) | Op::CreateExcl(_) => {
            &["make-inode", "create-entry", "add-entry"]
        }
        Op::Unlink(_) => &["remove-entry"],
        Op::Rmdir(_) => &["remove-dir", "remove-entry"],
        Op::Rename(..) | Op::Rename2(..) => &["add-entry", "remove-entry", "rename"],
        Op::Link(..) => &["inc-link", "add-entry"],
        Op::Truncate { .. } | Op::Chmod(..) | Op::Read(_) => &[],
    }
}

/// The paths an operation may change (and what is under them).
fn touched(op: &Op) -> Vec<&'static str> {
    match op {
        Op::Write { path, .. } | Op::Truncate { path, .. } => vec![path],
        Op::Unlink(a)
        | Op::Mkdir(a)
        | Op::Rmdir(a)
        | Op::Read(a)
        | Op::Chmod(a, _)
        | Op::Symlink(_, a)
        | Op::CreateExcl(a) => vec![a],
        Op::Rename(a, b) | Op::Link(a, b) | Op::Rename2(a, b, _) => vec![a, b],
    }
}

/// The tree without link counts (a second name fsck kept changes them)
/// and without the paths `skip` (and what is under them).
fn names_but(root: &Path, skip: &[&str]) -> BTreeMap<PathBuf, (bool, u32, Vec<u8>)> {
    snapshot(root)
        .into_iter()
        .filter(|(p, _)| !skip.iter().any(|s| p.starts_with(s)))
        .map(|(p, (dir, mode, _, _, data))| (p, (dir, mode, data)))
        .collect()
}

/// What a repaired namespace must be: every file's link count is its
/// number of names, every directory's 2 + its subdirectories.
fn check_counts(root: &Path) {
    let mut names: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let mut subdirs = 0;
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                subdirs += 1;
                todo.push(p);
            } else {
                names.entry(m.ino()).or_insert((m.nlink(), 0)).1 += 1;
            }
        }
        let n = fs::metadata(&d).unwrap().nlink();
        assert_eq!(n, 2 + subdirs, "{}: link count", d.display());
    }
    for (ino, (nlink, seen)) in names {
        assert_eq!(nlink, seen, "inode {ino:x}: link count vs names");
    }
}

/// Make `to` a copy of tree `from` (hard links kept, modes too).
fn copy_tree(from: &Path, to: &Path) {
    fs::remove_dir_all(to).unwrap();
    fs::create_dir(to).unwrap();
    let mut first: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut dirs = vec![];
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in fs::read_dir(from.join(&rel)).unwrap() {
            let r = rel.join(e.unwrap().file_name());
            let m = fs::symlink_metadata(from.join(&r)).unwrap();
            if m.is_dir() {
                fs::create_dir(to.join(&r)).unwrap();
                dirs.push((r.clone(), m.mode()));
                todo.push(r);
            } else if let Some(p) = first.get(&m.ino()) {
                fs::hard_link(to.join(p), to.join(&r)).unwrap();
            } else if m.file_type().is_symlink() {
                let target = fs::read_link(from.join(&r)).unwrap();
                std::os::unix::fs::symlink(target, to.join(&r)).unwrap();
                first.insert(m.ino(), r);
            } else {
                fs::write(to.join(&r), fs::read(from.join(&r)).unwrap()).unwrap();
                fs::set_permissions(to.join(&r), fs::Permissions::from_mode(m.mode())).unwrap();
                first.insert(m.ino(), r);
            }
        }
    }
    for (r, mode) in dirs {
        fs::set_permissions(to.join(r), fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// fsck.kdfs on every store; its exit code and output.
fn fsck_all(c: &common::Cluster, flag: &str) -> (i32, String) {
    let mut cmd = std::process::Command::new(common::fsck_bin());
    cmd.arg(flag);
    for n in &c.nodes {
        cmd.arg(&n.store);
    }
    let out = common::run(&mut cmd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Random operations through both nodes' mounts and on a local directory,
/// with krgd crash points armed at random steps on a random node: an
/// operation that killed a krgd is followed by fsck.kdfs -y of the stopped
/// stores, a restart, and a comparison: every path the operation did not
/// touch is as in the local directory, link counts are the names', and
/// the local directory then takes kDFS's state of the touched paths.
/// Returns how many crashes happened.
fn crash_campaign(
    seeds: std::ops::Range<u64>,
    steps: usize,
    max_crashes: usize,
    make_turns: fn() -> Turns,
    make_op: fn(&mut StdRng) -> Op,
) -> usize {
    let mut c = common::Cluster::with_kdfs(2);
    let local = tempfile::tempdir().unwrap();
    let mut crashes = 0;
    for seed in seeds {
        let base = format!("run{seed}");
        let lbase = local.path().join(&base);
        fs::create_dir(&lbase).unwrap();
        fs::create_dir(c.mnt(0).join(&base)).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut turns = make_turns();
        for step in 0..steps {
            let on = turns.next(&mut rng);
            let op = make_op(&mut rng);
            let arm = crashes < max_crashes && !points(&op).is_empty();
            let armed = (arm && rng.random_range(0..3) == 0).then(|| {
                let node = rng.random_range(0..2);
                let file = c.nodes[node].data.join("crash-at");
                fs::write(&file, pick(&mut rng, points(&op))).unwrap();
                file
            });
            let k = c.mnt(on).join(&base);
            let got = apply(&k, &op);
            let fired = armed.is_some_and(|f| fs::remove_file(f).is_err());
            if fired {
                eprintln!("seed {seed} step {step}: {op:?} killed a krgd ({got:?})");
            }
            if !fired {
                if !refused_across_nodes(&op, &got) {
                    assert_eq!(got, apply(&lbase, &op), "seed {seed} step {step}: {op:?}");
                }
                continue;
            }
            crashes += 1;
            c.stop_all();
            let (code, text) = fsck_all(&c, "-y");
            assert!(
                code == 0 || code == 1,
                "seed {seed} step {step} {op:?}: {text}"
            );
            let (code, text) = fsck_all(&c, "-n");
            assert_eq!(code, 0, "seed {seed} step {step} {op:?}: after -y: {text}");
            c.start_all();
            let kbase = c.mnt(0).join(&base);
            check_counts(c.mnt(0));
            let skip = touched(&op);
            assert_eq!(
                names_but(&kbase, &skip),
                names_but(&lbase, &skip),
                "seed {seed} step {step}: {op:?} crashed; fsck: {text}"
            );
            assert_eq!(snapshot(&kbase), snapshot(&c.mnt(1).join(&base)));
            copy_tree(&kbase, &lbase);
        }
        assert_eq!(
            snapshot(&lbase),
            snapshot(&c.mnt(1).join(&base)),
            "seed {seed}: final trees differ"
        );
        check_counts(c.mnt(0));
    }
    crashes
}

#[test]
fn random_operations_with_krgd_crashes_are_repaired_by_fsck() {
    // These seeds reach 7 crash points (creates, mkdirs, a link, an rmdir).
    let crashes = crash_campaign(0..3, 60, usize::MAX, Turns::alternating, random_op);
    assert!(crashes >= 3, "only {crashes} crash points were reached");
}

/// The long campaign: `cargo test -p kdfs --test random_ops -- --ignored`.
#[test]
#[ignore]
fn random_operations_with_krgd_crashes_campaign() {
    let crashes = crash_campaign(100..116, 300, usize::MAX, Turns::alternating, random_op);
    eprintln!("{crashes} crashes");
    assert!(crashes >= 20, "only {crashes} crash points were reached");
    // in bursts, with symlinks and renameat2: directories lent to a mount
    // when its krgd dies
    let crashes = crash_campaign(200..216, 300, usize::MAX, Turns::bursts, random_op_wide);
    eprintln!("{crashes} crashes in bursts");
    assert!(
        crashes >= 20,
        "only {crashes} crash points were reached in bursts"
    );
}
