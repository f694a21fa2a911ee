//! What the origin checks before it stops anything: the process exists,
//! the caller may move it, it holds CAN_MIGRATE, its children go with it
//! (`--tree`) or it has none, it has no socket, and the files it uses are
//! listed with their identity for the target to compare.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::migrate::FileIdentity;
use krg_proto::proc::Credentials;
use krg_proto::NodeId;

use super::super::procfs;

/// What a migration moves.
#[derive(Debug)]
pub struct Plan {
    /// The tree, root first.
    pub pids: Vec<i32>,
    /// Its owner (real uid of the root).
    pub owner: u32,
    /// Files that must be the same on the target.
    pub identities: Vec<FileIdentity>,
}

fn refuse(kind: ErrorKind, msg: String) -> AdminError {
    AdminError::new(kind, msg)
}

/// The process and its descendants, root first.
pub fn tree(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while let Some(&p) = out.get(i) {
        i += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("children");
            let kids = std::fs::read_to_string(path).unwrap_or_default();
            out.extend(
                kids.split_whitespace()
                    .filter_map(|k| k.parse::<i32>().ok()),
            );
        }
        if out.len() > 4096 {
            break;
        }
    }
    out
}

/// Check everything that can be checked while the process runs. `stdio`:
/// regular files (device, inode) that stand for stdio leading out of the
/// tree on fds 0-2 (a detached job's output files): they stay here.
pub fn plan(
    node: NodeId,
    pid: i32,
    with_tree: bool,
    in_job: bool,
    who: &Credentials,
    can_migrate: impl Fn(i32) -> bool,
    stdio: &[(u64, u64)],
) -> Result<Plan, AdminError> {
    let me = std::process::id() as i32;
    let Some(ids) = (pid > 1 && pid != me).then(|| procfs::uids(pid)).flatten() else {
        return Err(refuse(
            ErrorKind::NotFound,
            format!("no process {pid} on node {node}"),
        ));
    };
    if who.uid != 0 && ids.iter().any(|&u| u != who.uid) {
        return Err(refuse(
            ErrorKind::PermissionDenied,
            format!(
                "process {pid} belongs to uid {} (uids {ids:?}); only its owner or root may migrate it",
                ids[0]
            ),
        ));
    }
    if !in_job && procfs::pid_ns_inode(pid) != procfs::pid_ns_inode(me) {
        return Err(refuse(
            ErrorKind::InvalidArgument,
            format!("process {pid} runs in a PID namespace this node's krgd did not make (not a krg run job of this node)"),
        ));
    }
    if !can_migrate(pid) {
        return Err(refuse(
            ErrorKind::PermissionDenied,
            format!("process {pid} is not CAN_MIGRATE (run krgcapset -d +CAN_MIGRATE in the shell that starts it, or that runs krg run)"),
        ));
    }
    let pids = tree(pid);
    if !with_tree && pids.len() > 1 {
        let kids: Vec<String> = pids[1..].iter().take(8).map(i32::to_string).collect();
        return Err(refuse(
            ErrorKind::InvalidArgument,
            format!(
                "process {pid} has children ({}): give --tree to move them with it",
                kids.join(", ")
            ),
        ));
    }
    let mut files = BTreeMap::new();
    for &p in &pids {
        if who.uid != 0 && procfs::uids(p).is_some_and(|u| u.iter().any(|&x| x != who.uid)) {
            return Err(refuse(
                ErrorKind::PermissionDenied,
                format!("process {p} of the tree is not entirely uid {}'s", who.uid),
            ));
        }
        fds(p, &mut files, stdio)?;
        mapped(p, &mut files);
    }
    Ok(Plan {
        pids,
        owner: ids[0],
        identities: files.into_values().collect(),
    })
}

/// Open files of `p`: sockets refused, regular files listed (but those
/// `stdio` names, on fds 0-2).
fn fds(
    p: i32,
    files: &mut BTreeMap<String, FileIdentity>,
    stdio: &[(u64, u64)],
) -> Result<(), AdminError> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{p}/fd")) else {
        return Ok(());
    };
    for e in dir.flatten() {
        let fd: i32 = e
            .file_name()
            .to_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1);
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        let text = link.to_string_lossy().into_owned();
        if text.starts_with("socket:") && fd > 2 {
            return Err(refuse(
                ErrorKind::InvalidArgument,
                format!("process {p}: fd {fd} is a socket ({text}): sockets do not migrate (it keeps running here)"),
            ));
        }
        if !text.starts_with('/') || text.starts_with("/dev/") {
            continue;
        }
        if fd <= 2 && is_stdio_file(&e.path(), stdio) {
            continue;
        }
        let flags = std::fs::read_to_string(format!("/proc/{p}/fdinfo/{fd}"))
            .ok()
            .and_then(|i| {
                i.lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0);
        let writing = flags & (libc::O_WRONLY | libc::O_RDWR) as u32 != 0;
        add(files, &text, !writing);
    }
    Ok(())
}

fn is_stdio_file(fd: &std::path::Path, stdio: &[(u64, u64)]) -> bool {
    !stdio.is_empty()
        && std::fs::metadata(fd).is_ok_and(|m| m.is_file() && stdio.contains(&(m.dev(), m.ino())))
}

/// Files `p` maps (its executable and libraries): they must be the same there.
fn mapped(p: i32, files: &mut BTreeMap<String, FileIdentity>) {
    let maps = std::fs::read_to_string(format!("/proc/{p}/maps")).unwrap_or_default();
    for line in maps.lines() {
        if let Some(path) = line.split_whitespace().nth(5) {
            if path.starts_with('/') && !line.ends_with("(deleted)") {
                add(files, path, true);
            }
        }
    }
}

fn add(files: &mut BTreeMap<String, FileIdentity>, path: &str, fixed: bool) {
    if let Some(f) = files.get_mut(path) {
        f.fixed &= fixed;
        return;
    }
    // A file that cannot be looked at here (deleted...) is the engine's to refuse.
    if let Ok(m) = std::fs::metadata(path) {
        files.insert(
            path.to_string(),
            FileIdentity {
                path: path.to_string(),
                ino: m.ino(),
                size: m.size(),
                mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
                fixed,
            },
        );
    }
}

/// The target's side: every file is there under the same path, the same
/// file (inode; size and mtime too when the process does not write it).
pub fn same_files(node: NodeId, ids: &[FileIdentity]) -> Result<(), AdminError> {
    for f in ids {
        let m = std::fs::metadata(&f.path).map_err(|e| {
            refuse(
                ErrorKind::NotFound,
                format!("file {} is not reachable on node {node}: {e}", f.path),
            )
        })?;
        let mtime = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
        let same = m.ino() == f.ino && (!f.fixed || (m.size() == f.size && mtime == f.mtime_ns));
        if !same {
            return Err(refuse(
                ErrorKind::Conflict,
                format!("file {} on node {node} is not the same file (inode, size or mtime differ): only files on a file system every node shares (kDFS, the nfsroot image) may be open", f.path),
            ));
        }
    }
    Ok(())
}

/// Let stopped processes run again (the origin keeps them).
pub fn resume(pids: &[i32]) {
    for &p in pids {
        // SAFETY: plain kill(2) with SIGCONT.
        unsafe { libc::kill(p, libc::SIGCONT) };
    }
}
