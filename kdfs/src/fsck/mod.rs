//! fsck.kdfs: check (and repair) kDFS stores offline.
//!
//! * `scan`: one store read into a model, nothing changed;
//! * `check`: the findings, each with its repair;
//! * `repair`: carrying the repairs out (`-y`);
//! * `stripes`: striped files' holders and the copies of `DIR/stripes/`;
//! * this file: [`run`] — scan, check, repair, check again — and the
//!   [`Report`] with its e2fsck-like exit code; [`export`] of a store's
//!   model, for the other nodes' runs (`--export`, `--with`).
//!
//! A store is checked only while nothing uses it: krgd and mount.kdfs hold
//! a shared `flock` on it, fsck an exclusive one. Repairs never delete an
//! inode's data: whatever might still be wanted (orphans, strays, entries
//! the store did not write) is moved to `DIR/lost+found`; what is removed
//! is only what can be proved wrong (an entry naming an inode that does not
//! exist — inode numbers are never reused —, the older name of a directory
//! named twice, temporary entries).

mod check;
mod repair;
mod scan;
mod stripes;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;

use krg_proto::kdfs::{inode_node, InodeId};
use serde::Serialize;

use crate::KdfsError;
use scan::Scanned;

/// What is wrong, by kind (the `--json` output names them so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Problem {
    /// `DIR` or `DIR/inodes` reachable by other users.
    NotPrivate,
    /// A `.tmp-*` entry symlink an interrupted replace left in `inodes/`.
    Temporary,
    /// A file in `inodes/` that is no object kDFS makes.
    Stray,
    /// An object that cannot be examined (I/O error).
    Unreadable,
    /// `ino.next` unreadable, or not above every object.
    Allocator,
    /// The root meta-file unreadable, or naming no root directory.
    Root,
    /// An entry the store did not write, or whose kind is not its inode's.
    BadEntry,
    /// An entry naming an inode that does not exist.
    DanglingEntry,
    /// A directory named twice (an interrupted rename across nodes).
    SecondName,
    /// A link count other than the number of names.
    LinkCount,
    /// A directory's subdirectory count other than its subdirectories.
    SubdirCount,
    /// An inode with no name.
    Orphan,
    /// A copy of a striped file's units whose file is gone.
    OrphanCopy,
}

/// How a finding is repaired (store-relative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// fsck cannot repair it.
    None,
    MakePrivate,
    RemoveTemp(OsString),
    /// Move a name of `inodes/` to `lost+found/`.
    ObjectToLostFound(OsString),
    /// Move entry (directory, name) to `lost+found/entries-<dir>/`.
    EntryToLostFound(InodeId, OsString),
    RemoveEntry(InodeId, OsString),
    /// (local inode number, link count).
    SetNlink(u64, u64),
    /// (local inode number, subdirectory count).
    SetNsub(u64, u64),
    SetInoNext(u64),
    WriteRootMeta(InodeId),
    /// Remove a name of `stripes/`.
    RemoveCopy(OsString),
}

/// One finding of the checks.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Index of the store it is in.
    pub store: usize,
    pub problem: Problem,
    pub message: String,
    pub fix: Fix,
}

/// What fsck.kdfs was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// Stores to check: one, or every store of the file system.
    pub dirs: Vec<PathBuf>,
    /// Other nodes' stores as they exported them (checked along, not
    /// repaired here).
    pub with: Vec<PathBuf>,
    /// Repair (`-y`); else check only (`-n`).
    pub repair: bool,
}

/// A finding as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Reported {
    pub store: PathBuf,
    pub problem: Problem,
    pub message: String,
    /// Repaired (None: check only), or why not.
    pub repaired: Option<Result<String, String>>,
}

/// One store checked.
#[derive(Debug, Clone, Serialize)]
pub struct StoreSummary {
    pub path: PathBuf,
    pub node: u32,
    pub objects: usize,
    pub entries: usize,
}

/// What fsck found and did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub stores: Vec<StoreSummary>,
    /// Whether every store of the file system was given (orphans and
    /// cross-node names checked).
    pub complete: bool,
    pub findings: Vec<Reported>,
    /// Problems still there at the end (after repair, as found again).
    pub left: Vec<Reported>,
    pub notes: Vec<String>,
}

/// e2fsck's exit codes.
pub const EXIT_CLEAN: i32 = 0;
pub const EXIT_FIXED: i32 = 1;
pub const EXIT_LEFT: i32 = 4;
pub const EXIT_OPERATIONAL: i32 = 8;

impl Report {
    /// 0: clean; 1: every problem repaired; 4: problems left.
    pub fn exit_code(&self) -> i32 {
        if !self.left.is_empty() {
            EXIT_LEFT
        } else if self.findings.is_empty() {
            EXIT_CLEAN
        } else {
            EXIT_FIXED
        }
    }

    /// The findings of one kind.
    pub fn count(&self, p: Problem) -> usize {
        self.findings.iter().filter(|f| f.problem == p).count()
    }
}

/// Whether `stores` are every store of their file system, and refusals of
/// stores that cannot be checked together.
fn completeness(stores: &[Scanned]) -> Result<(bool, Option<String>), KdfsError> {
    let mut nodes = BTreeSet::new();
    for s in stores {
        if !nodes.insert(s.node()) {
            return Err(KdfsError::Invalid(format!(
                "two stores of node {} given ({} is one)",
                s.node(),
                s.path().display()
            )));
        }
    }
    let first = &stores[0].sb;
    for s in &stores[1..] {
        let ids = (first.fs_id, s.sb.fs_id);
        if s.sb.root_node != first.root_node || (ids.0 != ids.1 && ids.0 != 0 && ids.1 != 0) {
            return Err(KdfsError::Invalid(format!(
                "{} and {} belong to different file systems",
                stores[0].path().display(),
                s.path().display()
            )));
        }
    }
    let referenced: BTreeSet<u32> = stores
        .iter()
        .flat_map(|s| s.entries.iter().map(|e| inode_node(e.entry.ino)))
        .chain([first.root_node])
        .collect();
    let missing: Vec<String> = referenced
        .difference(&nodes)
        .map(|n| n.to_string())
        .collect();
    if let Some(s) = stores.iter().find(|s| !s.unreadable.is_empty()) {
        // Names in an unreadable directory are unknown: nothing could be
        // called an orphan.
        let note = format!(
            "{} has unreadable objects: orphans and names across nodes are not checked",
            s.path().display()
        );
        return Ok((false, Some(note)));
    }
    let root = stores.iter().find(|s| s.node() == first.root_node);
    if missing.is_empty() && root.is_some_and(|s| s.root().is_some()) {
        return Ok((true, None));
    }
    if missing.is_empty() {
        let note = "no root directory found: orphans and names across nodes are not checked";
        return Ok((false, Some(note.to_string())));
    }
    let note = format!(
        "the stores of node(s) {} were not given: orphans and names across nodes are not checked",
        missing.join(", ")
    );
    Ok((false, Some(note)))
}

/// What `--export` writes: a store's model, named so that nothing else
/// is taken for one.
#[derive(Serialize, serde::Deserialize)]
struct Exported {
    kdfs_fsck_export: u32,
    model: scan::Model,
}

const EXPORT_VERSION: u32 = 1;

/// Write the model of the store at `dir` (offline, as for a check) to
/// `out`, for the runs of fsck.kdfs on the other nodes (`--with`).
pub fn export(dir: &std::path::Path, out: &std::path::Path) -> Result<usize, KdfsError> {
    let s = scan::scan(dir)?;
    let e = Exported {
        kdfs_fsck_export: EXPORT_VERSION,
        model: s.model,
    };
    let bytes = serde_json::to_vec(&e).map_err(|e| KdfsError::Invalid(e.to_string()))?;
    std::fs::write(out, bytes).map_err(|e| KdfsError::io(out, e))?;
    Ok(e.model.entries.len())
}

fn import(path: &std::path::Path) -> Result<Scanned, KdfsError> {
    let bytes = std::fs::read(path).map_err(|e| KdfsError::io(path, e))?;
    let e: Exported = serde_json::from_slice(&bytes).map_err(|e| {
        KdfsError::Invalid(format!(
            "{}: not a store exported by fsck.kdfs --export ({e})",
            path.display()
        ))
    })?;
    if e.kdfs_fsck_export != EXPORT_VERSION {
        return Err(KdfsError::Invalid(format!(
            "{}: export format {}, this fsck.kdfs reads {EXPORT_VERSION}",
            path.display(),
            e.kdfs_fsck_export
        )));
    }
    Ok(Scanned {
        model: e.model,
        live: None,
    })
}

fn scan_all(opts: &Options) -> Result<Vec<Scanned>, KdfsError> {
    if opts.dirs.is_empty() {
        return Err(KdfsError::Invalid("no store given".into()));
    }
    let live = opts.dirs.iter().map(|d| scan::scan(d));
    live.chain(opts.with.iter().map(|p| import(p))).collect()
}

/// Findings in the stores checked here (the others' are for their runs).
fn local(stores: &[Scanned], findings: Vec<Finding>) -> Vec<Finding> {
    findings
        .into_iter()
        .filter(|f| stores[f.store].live.is_some())
        .collect()
}

/// Check (and with `opts.repair` repair) the stores; an `Err` is an
/// operational error (exit 8): not a store, in use, unreadable.
pub fn run(opts: &Options) -> Result<Report, KdfsError> {
    let stores = scan_all(opts)?;
    let (complete, note) = completeness(&stores)?;
    let (findings, mut notes) = check::check(&stores, complete);
    let findings = local(&stores, findings);
    notes.extend(note);
    let summaries = stores
        .iter()
        .filter(|s| s.live.is_some())
        .map(|s| StoreSummary {
            path: s.path().to_path_buf(),
            node: s.node(),
            objects: s.objects.len(),
            entries: s.entries.len(),
        })
        .collect();
    let report_of = |stores: &[Scanned], f: &Finding, repaired| Reported {
        store: stores[f.store].path().to_path_buf(),
        problem: f.problem,
        message: f.message.clone(),
        repaired,
    };
    if !opts.repair || findings.is_empty() {
        let reported: Vec<Reported> = findings
            .iter()
            .map(|f| report_of(&stores, f, None))
            .collect();
        return Ok(Report {
            stores: summaries,
            complete,
            left: reported.clone(),
            findings: reported,
            notes,
        });
    }
    let done = repair::repair(&stores, &findings);
    let reported: Vec<Reported> = findings
        .iter()
        .zip(done)
        .map(|(f, r)| report_of(&stores, f, Some(r)))
        .collect();
    // Check again, from scratch, what the repairs left (the locks are
    // released first: fsck's own would refuse the second scan).
    drop(stores);
    let stores = scan_all(opts)?;
    let (again, _) = check::check(&stores, complete);
    let again = local(&stores, again);
    let left = again.iter().map(|f| report_of(&stores, f, None)).collect();
    Ok(Report {
        stores: summaries,
        complete,
        findings: reported,
        left,
        notes,
    })
}

#[cfg(test)]
mod tests;
