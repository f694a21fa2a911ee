//! The PID namespace of a tree that runs below checkpoint's (a `krg run`
//! job, or a process moved with a stand-in): every PID the image records
//! is checkpoint's, and restart needs each one's number in the tree's own
//! namespace to give it back (`GlobalImage::pidns`).
//!
//! Read while the tree is frozen, so no thread comes or goes between the
//! map and the image. Only one level below checkpoint's namespace is
//! saved, and never that namespace's init: restart makes a new namespace
//! whose init is krgd's, and the tree takes its own numbers under it.

use std::os::unix::fs::MetadataExt;

use crate::error::{ChkptError, Result};
use crate::procfs;

/// The inode of `pid`'s PID namespace (None when it cannot be read: a
/// zombie's namespace links are gone).
fn ns_inode(pid: i32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|m| m.ino())
}

/// `NSpid` of task or thread `tid`: its PID in each namespace from
/// checkpoint's down to its own.
fn ns_pids(tid: i32) -> Result<Vec<i32>> {
    let status = procfs::read_to_string(format!("/proc/{tid}/status"))
        .map_err(|_| ChkptError::NoSuchProcess(tid))?;
    let field = procfs::status_field(&status, "NSpid")
        .ok_or_else(|| ChkptError::Inconsistent(format!("no NSpid line in /proc/{tid}/status")))?;
    field
        .split_whitespace()
        .map(|n| {
            n.parse::<i32>()
                .map_err(|_| ChkptError::Inconsistent(format!("bad NSpid of {tid}: {field}")))
        })
        .collect()
}

/// (PID in checkpoint's namespace, PID in the tree's) of every task and
/// thread of the frozen `tree`, rooted at `root`; empty when the tree
/// runs in checkpoint's own namespace.
pub(super) fn map(root: i32, tree: &[(i32, i32)]) -> Result<Vec<(i32, i32)>> {
    let ours = ns_inode(std::process::id() as i32);
    let theirs = ns_inode(root);
    if theirs.is_none() || theirs == ours {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for &(pid, _) in tree {
        if pid != root && ns_inode(pid).is_some_and(|ns| Some(ns) != theirs) {
            return Err(ChkptError::unsupported(
                pid,
                "a process in another PID namespace than the root of the tree",
                "only a tree whose processes share one namespace is saved",
            ));
        }
        let tids = procfs::threads(pid).unwrap_or_else(|_| vec![pid]);
        for tid in tids.into_iter().chain(std::iter::once(pid)) {
            let pair = inner(tid)?;
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
    }
    Ok(out)
}

/// Task `tid`'s pair of the map: it must sit exactly one namespace below
/// checkpoint's, and not be that namespace's init.
fn inner(tid: i32) -> Result<(i32, i32)> {
    match ns_pids(tid)?.as_slice() {
        [_, 1] => Err(ChkptError::unsupported(
            tid,
            "the init of a PID namespace (PID 1 there)",
            "restart gives the namespace an init of its own: checkpoint a process under it",
        )),
        &[here, there] => Ok((here, there)),
        more if more.len() > 2 => Err(ChkptError::unsupported(
            tid,
            "a process in a PID namespace nested in another",
            "only one level below checkpoint's namespace is saved",
        )),
        _ => Err(ChkptError::Inconsistent(format!(
            "process {tid} is in another PID namespace but NSpid shows one"
        ))),
    }
}
