//! `kdfsctl replicas N`: every member's store keeps N copies of its files
//! from now on — a single-copy file system converted to `--replicas 2`,
//! each store's full copy made by its krgd in the background (`kdfsctl
//! status` shows it). Each member's krgd converts its own store; a mount
//! of its node stops writing it in place first, and the files that mount
//! opened before with passthrough are closed first (the conversion then
//! goes on in the background: `Converted::Later`).
//!
//! `kdfsctl replicas N DIR`: a directory's tree keeps N copies, and what
//! is made in it from now on too (its policy, inherited by the
//! directories made in it), through the mount's `kdfs.replicas` and
//! `kdfs.replicas.new` attributes (`vattr`); the directories above it
//! keep at least N (else its path could not be followed while the nodes
//! keeping them are down). The mirrors copy what they gain in the
//! background.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use krg_proto::kdfs::{KdfsRequest, KdfsResponse};
use krg_proto::NodeId;

use crate::error::KdfsError;
use crate::format::MAX_REPLICAS;
use crate::vattr::{self, check_on_kdfs, Wording};

/// An inode's count, and a directory's policy (virtual attributes).
const COUNT: &str = "kdfs.replicas";
const POLICY: &str = "kdfs.replicas.new";
const WORDS: Wording = Wording {
    owner: "its owner",
    not_dir: "not a directory",
};

/// How long a member may take to convert its store (the copy itself is
/// made afterwards, in the background).
const CONVERT_WAIT: Duration = Duration::from_secs(10);

/// What one member did: converted, or why not, in words.
pub type Outcome = Result<Converted, String>;

/// When a member's store keeps the copies asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Converted {
    /// Now.
    Now,
    /// Once the files a mount of its node opened before with passthrough
    /// are closed (its krgd converts it then).
    Later,
}

/// Have every member (the local krgd at `socket` names them; the cluster
/// key is in `keyfile`) keep `copies` copies of its store.
pub async fn set(
    socket: &Path,
    keyfile: &Path,
    copies: u8,
) -> Result<Vec<(NodeId, Outcome)>, KdfsError> {
    if copies == 0 || copies > MAX_REPLICAS {
        return Err(KdfsError::Invalid(format!(
            "{copies} copies: a store keeps 1 to {MAX_REPLICAS}"
        )));
    }
    let m = crate::members::connect(socket, keyfile, None).await?;
    let mut out = Vec::new();
    for n in &m.members {
        let outcome = if n.failed {
            Err("down (the cluster counts it failed): run this again once it is back".into())
        } else {
            let asked = m
                .cluster
                .call_within(n.id, KdfsRequest::SetReplicas { copies }, CONVERT_WAIT)
                .await;
            outcome(asked)
        };
        out.push((n.id, outcome));
    }
    Ok(out)
}

/// A member's answer, in words (the connection gives its `Errno` as an
/// error).
fn outcome(asked: Result<KdfsResponse, i32>) -> Outcome {
    match asked {
        Ok(KdfsResponse::Done) => Ok(Converted::Now),
        Ok(other) => Err(format!("answered out of turn: {other:?}")),
        Err(libc::EINPROGRESS) => Ok(Converted::Later),
        Err(libc::ENOTSUP) => Err("it keeps more copies already (fewer is not supported)".into()),
        Err(e) => Err(std::io::Error::from_raw_os_error(e).to_string()),
    }
}

/// How many nodes keep `path`'s inode, and (a directory) how many the
/// inodes made in it get (`None`: the file system's count).
pub fn show(path: &Path) -> Result<(u8, Option<u8>), KdfsError> {
    check_on_kdfs(path)?;
    let own = read_count(path, COUNT)?.ok_or_else(|| {
        KdfsError::Invalid(format!("{}: the mount gave no count", path.display()))
    })?;
    let policy = if std::fs::symlink_metadata(path)
        .map_err(|e| KdfsError::io(path, e))?
        .is_dir()
    {
        read_count(path, POLICY)?
    } else {
        None
    };
    Ok((own, policy))
}

fn read_count(path: &Path, name: &str) -> Result<Option<u8>, KdfsError> {
    match vattr::get(path, name)? {
        Ok(None) => Ok(None),
        Ok(Some(v)) => String::from_utf8_lossy(&v)
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| {
                KdfsError::Invalid(format!(
                    "{}: the mount gave a count that is not one",
                    path.display()
                ))
            }),
        Err(e) => Err(vattr::refused(path, "read its count of copies", &e, &WORDS)),
    }
}

fn write(path: &Path, name: &str, copies: u8) -> Result<(), KdfsError> {
    let why = |e: std::io::Error| {
        let e = if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            std::io::Error::other(
                "a single-copy kDFS: convert it first (kdfsctl replicas 2, kdfs unmounted everywhere)",
            )
        } else {
            e
        };
        vattr::refused(path, &format!("give it {copies} copies"), &e, &WORDS)
    };
    vattr::set(path, name, Some(copies.to_string().as_bytes()))?.map_err(why)
}

/// What [`set_tree`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TreeChange {
    /// Inodes of the tree given the count.
    pub inodes: u64,
    /// Directories above it whose count was raised.
    pub above: u64,
}

/// Have `path` (and, a directory, everything under it and made in it from
/// now on) keep `copies` copies, and the directories above it on the same
/// mount at least as many.
pub fn set_tree(path: &Path, copies: u8) -> Result<TreeChange, KdfsError> {
    if copies == 0 || copies > MAX_REPLICAS {
        return Err(KdfsError::Invalid(format!(
            "{copies} copies: an inode keeps 1 to {MAX_REPLICAS}"
        )));
    }
    check_on_kdfs(path)?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| KdfsError::io(path, e))?;
    let mut change = TreeChange::default();
    if meta.is_dir() {
        // The policy first: what is made during the walk gets it.
        write(path, POLICY, copies)?;
    }
    walk(path, meta.dev(), copies, &mut change)?;
    raise_above(path, meta.dev(), copies, &mut change)?;
    Ok(change)
}

/// Give `path` and what is under it on the same mount (`dev`) `copies`.
fn walk(path: &Path, dev: u64, copies: u8, change: &mut TreeChange) -> Result<(), KdfsError> {
    let mut todo = vec![path.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            // (gone meanwhile)
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(KdfsError::io(&p, e)),
        };
        if meta.dev() != dev {
            continue; // another file system mounted inside
        }
        write(&p, COUNT, copies)?;
        change.inodes += 1;
        if !meta.is_dir() {
            continue;
        }
        if p != path {
            write(&p, POLICY, copies)?;
        }
        for entry in std::fs::read_dir(&p).map_err(|e| KdfsError::io(&p, e))? {
            todo.push(entry.map_err(|e| KdfsError::io(&p, e))?.path());
        }
    }
    Ok(())
}

/// Raise the directories above `path`, up to its mount's root, to
/// `copies` where they keep fewer.
fn raise_above(
    path: &Path,
    dev: u64,
    copies: u8,
    change: &mut TreeChange,
) -> Result<(), KdfsError> {
    let full = std::fs::canonicalize(path).map_err(|e| KdfsError::io(path, e))?;
    for dir in full.ancestors().skip(1) {
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.dev() == dev => {}
            _ => break,
        }
        if read_count(dir, COUNT)?.is_some_and(|n| n < copies) {
            write(dir, COUNT, copies)?;
            change.above += 1;
        }
    }
    Ok(())
}
