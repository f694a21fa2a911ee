//! Seeded random operations for differential tests: the same sequence
//! applied to kDFS and to a local directory must give the same answers and
//! trees (`tests/random_ops.rs`, `tests/random_mirrored.rs`).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const NAMES: [&str; 6] = ["a", "b", "c", "d/x", "d/y", "e/d/z"];
pub const DIRS: [&str; 3] = ["d", "e", "e/d"];

#[derive(Debug, Clone)]
pub enum Op {
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
    /// `user.k` set to 1 to 7 bytes of the given one, read, or removed.
    SetXattr(&'static str, u8),
    GetXattr(&'static str),
    RemoveXattr(&'static str),
}

/// Symlink targets: a name, one up, one down, none.
pub const TARGETS: [&str; 4] = ["a", "../b", "d/x", "nowhere"];

pub fn pick<T: Copy>(rng: &mut StdRng, xs: &[T]) -> T {
    xs[rng.random_range(0..xs.len())]
}

/// [`random_op`] or, about one time in two, a symlink, an exchange or
/// no-replace rename, an exclusive create, or an extended attribute set,
/// read or removed.
pub fn random_op_wide(rng: &mut StdRng) -> Op {
    let any: Vec<&'static str> = NAMES.iter().chain(DIRS.iter()).copied().collect();
    match rng.random_range(0..18) {
        15 => Op::SetXattr(pick(rng, &any), rng.random()),
        16 => Op::GetXattr(pick(rng, &any)),
        17 => Op::RemoveXattr(pick(rng, &any)),
        0 | 1 => Op::Symlink(pick(rng, &TARGETS), pick(rng, &NAMES)),
        2 => Op::Rename2(pick(rng, &any), pick(rng, &any), libc::RENAME_EXCHANGE),
        3 => Op::Rename2(pick(rng, &any), pick(rng, &any), libc::RENAME_NOREPLACE),
        4 => Op::CreateExcl(pick(rng, &NAMES)),
        _ => random_op(rng),
    }
}

pub fn random_op(rng: &mut StdRng) -> Op {
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
pub fn apply(root: &Path, op: &Op) -> Result<Vec<u8>, i32> {
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
        Op::SetXattr(a, b) => {
            let value = vec![*b; usize::from(*b % 7) + 1];
            super::xattrs::set(&p(a), "user.k", &value, 0).map(|()| vec![])
        }
        Op::GetXattr(a) => super::xattrs::get(&p(a), "user.k", 64),
        Op::RemoveXattr(a) => super::xattrs::remove(&p(a), "user.k").map(|()| vec![]),
    }
}

/// Whether kDFS may have refused `op` where the local directory would
/// not, as docs/kdfs.md's Limits say: an exchange across nodes (EINVAL).
/// It is then not applied to the local directory (whose own answer may be
/// EINVAL too: an exchange of a directory with what is under it).
pub fn refused_across_nodes(op: &Op, got: &Result<Vec<u8>, i32>) -> bool {
    matches!(op, Op::Rename2(_, _, libc::RENAME_EXCHANGE)) && *got == Err(libc::EINVAL)
}

/// `renameat2(2)` with `flags`.
pub fn rename2(a: &Path, b: &Path, flags: u32) -> std::io::Result<()> {
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
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, (bool, u32, u64, u64, Vec<u8>)> {
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

/// Which mount issues each operation: the two in turn, or in bursts of 1
/// to 30 on one.
pub struct Turns {
    bursts: bool,
    on: usize,
    left: u32,
}

impl Turns {
    pub fn alternating() -> Self {
        Turns {
            bursts: false,
            on: 1,
            left: 0,
        }
    }

    pub fn bursts() -> Self {
        Turns {
            bursts: true,
            ..Self::alternating()
        }
    }

    /// The mount index of the next operation.
    pub fn next(&mut self, rng: &mut StdRng) -> usize {
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

/// What a repaired namespace must be: every file's link count is its
/// number of names, every directory's 2 + its subdirectories.
pub fn check_counts(root: &Path) {
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

/// Make `to` a copy of tree `from` (hard links kept, modes and the
/// operations' extended attribute too).
pub fn copy_tree(from: &Path, to: &Path) {
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
                copy_xattr(&from.join(&r), &to.join(&r));
                fs::set_permissions(to.join(&r), fs::Permissions::from_mode(m.mode())).unwrap();
                first.insert(m.ino(), r);
            }
        }
    }
    for (r, mode) in dirs {
        copy_xattr(&from.join(&r), &to.join(&r));
        fs::set_permissions(to.join(r), fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// The operations' extended attribute (`user.k`) of `from`, if any, on `to`.
fn copy_xattr(from: &Path, to: &Path) {
    if let Ok(v) = super::xattrs::get(from, "user.k", 64) {
        super::xattrs::set(to, "user.k", &v, 0).unwrap();
    }
}

/// Which mount issues each operation, and which operations.
#[derive(Clone, Copy)]
pub struct Mix {
    pub turns: fn() -> Turns,
    pub op: fn(&mut StdRng) -> Op,
}

/// The two mounts in turn, the first set of operations.
pub const ALTERNATING: Mix = Mix {
    turns: Turns::alternating,
    op: random_op,
};

/// Bursts of 1 to 30 on one mount, the wide set (symlinks, renameat2,
/// exclusive creates).
pub const BURSTS: Mix = Mix {
    turns: Turns::bursts,
    op: random_op_wide,
};

/// `run<seed>` made in `local` and through `mount`: its name.
pub fn fresh_base(mount: &Path, local: &Path, seed: u64) -> String {
    let base = format!("run{seed}");
    fs::create_dir(local.join(&base)).unwrap();
    fs::create_dir(mount.join(&base)).unwrap();
    base
}

/// Seed `seed`'s operations of `mix` on the two `mounts`, under `base`
/// there and in `local`: every answer, then both mounts' trees and their
/// link counts, as in the local directory.
pub fn compare(mix: Mix, mounts: [&Path; 2], local: &Path, base: &str, seed: u64) {
    operate(mix, mounts, local, base, seed);
    same_trees(mounts, local, base, seed);
}

/// The operations of [`compare`], every answer compared.
pub fn operate(mix: Mix, mounts: [&Path; 2], local: &Path, base: &str, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut turns = (mix.turns)();
    for step in 0..300 {
        let on = turns.next(&mut rng);
        let op = (mix.op)(&mut rng);
        let got = apply(&mounts[on].join(base), &op);
        if refused_across_nodes(&op, &got) {
            continue;
        }
        let want = apply(&local.join(base), &op);
        assert_eq!(got, want, "seed {seed} step {step} on mount {on}: {op:?}");
    }
}

/// The trees of [`compare`] compared.
pub fn same_trees(mounts: [&Path; 2], local: &Path, base: &str, seed: u64) {
    let want = snapshot(&local.join(base));
    for (i, m) in mounts.iter().enumerate() {
        assert_eq!(want, snapshot(&m.join(base)), "seed {seed}: mount {i}");
    }
    check_counts(&mounts[0].join(base));
}
