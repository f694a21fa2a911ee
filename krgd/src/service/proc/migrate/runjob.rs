//! The origin's side of moving a `krg run` job (its program and the
//! program's descendants, which all live in the job's PID namespace).
//!
//! `migrate NODE:PID TO` names the job's program as `krg ps` shows it (its
//! PID in the job's namespace), or by its PID in krgd's. The dump and the
//! transfer are a process's ([`super::move_here`]); the handover differs:
//! the job keeps its PIDs in a new namespace on the target ([`super::adopt`]),
//! and its session on this node goes on through [`super::relay`], so its
//! user sees its output, its input, its signals and its exit status as if
//! it had never moved (bproc's ghost, here the session itself).

use std::sync::Arc;
use std::time::Duration;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::migrate::{AdoptJob, JobTerminal, PhaseTime};
use krg_proto::proc::SESSION_VERSION;
use krg_proto::NodeId;
use tokio::sync::{mpsc, oneshot};

use super::super::procfs;
use super::super::pty::Pty;
use super::super::session::{self, Session};
use super::super::state::ProcState;
use super::super::table::{JobEntry, Moved};
use super::adopt::{self, JobImage};
use super::relay::{self, Ends, Held};
use super::restore::Lazy;
use super::{check, Clock};

/// How long the target may take to restore a job.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(150);

/// A job whose program is to move.
pub struct JobTarget {
    /// Its entry in this node's table.
    pub entry: Arc<JobEntry>,
    /// Its program's PID in krgd's namespace.
    pub host_pid: i32,
}

fn refuse(kind: ErrorKind, msg: String) -> AdminError {
    AdminError::new(kind, msg)
}

/// The job `pid` names on this node, if it names one: the PID of a job's
/// process as `krg ps` shows it, or the PID in krgd's namespace of a
/// process in a job's namespace. Only the job's program may be named.
pub fn find(st: &ProcState, pid: i32) -> Result<Option<JobTarget>, AdminError> {
    let jobs = st.table.jobs();
    let found = procfs::scan(&jobs);
    let mut hits: Vec<&procfs::Found> = found.iter().filter(|f| f.pid == pid).collect();
    if hits.is_empty() {
        hits = found.iter().filter(|f| f.host_pid == pid).collect();
    }
    let hit = match hits.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        _ => {
            return Err(refuse(
                ErrorKind::InvalidArgument,
                format!(
                "PID {pid} names processes of {} jobs here: name it by its PID in krgd's namespace",
                hits.len()
            ),
            ))
        }
    };
    if hit.pid != hit.job.pid {
        return Err(refuse(
            ErrorKind::InvalidArgument,
            format!(
                "process {} belongs to a krg run job: only the job's program (PID {}) moves, with its descendants",
                hit.pid, hit.job.pid
            ),
        ));
    }
    let entry = hit.job.clone();
    // every process of the namespace but the init must go with the
    // program — and a page server still bringing its memory in (the job
    // moved here by post-copy), which goes once it is done: the
    // migration waits for that
    let tree = check::tree(hit.host_pid);
    let servers: Vec<i32> = crate::sync::lock(&st.migration.filling)
        .keys()
        .copied()
        .collect();
    let stray: Vec<i32> = found
        .iter()
        .filter(|f| Arc::ptr_eq(&f.job, &entry) && !tree.contains(&f.host_pid))
        .filter(|f| !servers.contains(&f.host_pid))
        .map(|f| f.pid)
        .collect();
    if !stray.is_empty() {
        return Err(refuse(
            ErrorKind::InvalidArgument,
            format!("job {} has processes outside its program's tree ({stray:?}, orphans re-parented to its init): they could not move with it", entry.pid),
        ));
    }
    Ok(Some(JobTarget {
        host_pid: hit.host_pid,
        entry,
    }))
}

impl JobTarget {
    /// A detached job's output files (device, inode): its fds 1 and 2
    /// lead to them, and they stay here, fed by the relay.
    pub fn stdio_files(&self) -> Vec<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let Some(out) = &self.entry.output else {
            return Vec::new();
        };
        [&out.stdout, &out.stderr]
            .iter()
            .filter_map(|f| f.metadata().ok())
            .map(|m| (m.dev(), m.ino()))
            .collect()
    }
}

/// Every PID and TID of the stopped tree, with its number in the job's
/// namespace (the job's init is 1 there).
fn pid_map(entry: &JobEntry, tasks: &[i32]) -> Result<Vec<(i32, i32)>, AdminError> {
    let mut map = vec![(entry.init_pid, 1)];
    for &p in tasks {
        let tids: Vec<i32> = std::fs::read_dir(format!("/proc/{p}/task"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                    .collect()
            })
            .unwrap_or_else(|_| vec![p]);
        for t in tids.into_iter().chain(std::iter::once(p)) {
            let inner = procfs::ns_pid(t).ok_or_else(|| {
                refuse(
                    ErrorKind::Internal,
                    format!("cannot read the job's PID of process {t}"),
                )
            })?;
            if !map.contains(&(t, inner)) {
                map.push((t, inner));
            }
        }
    }
    Ok(map)
}

/// A job ready to be handed over: its stdio taken from the stopped
/// program, its session told that it moves.
pub struct Prepared {
    entry: Arc<JobEntry>,
    held: Held,
    ends: Ends,
    map: Vec<(i32, i32)>,
    terminal: Option<JobTerminal>,
}

/// The terminal of a job on a terminal, read from the stopped tree
/// before its copy here is killed: its settings and size for the new one,
/// and its foreground process group (`tpgid` of the program).
fn terminal_of(pty: &Pty, program: i32, map: &[(i32, i32)]) -> std::io::Result<JobTerminal> {
    let fg = procfs::foreground_group(program).unwrap_or(0);
    Ok(JobTerminal {
        winsize: pty.winsize()?,
        settings: pty.settings()?,
        // a group outside the job (none) is no group to hand it to
        fg_pgid: if map.iter().any(|&(host, _)| host == fg) {
            fg
        } else {
            0
        },
    })
}

/// Before the stopped copy is killed: the PID map, the stdio ends, and the
/// job marked as moving (its local init's report of the kill is not its end).
pub fn prepare(st: &ProcState, job: &JobTarget, tasks: &[i32]) -> Result<Prepared, AdminError> {
    let map = pid_map(&job.entry, tasks)?;
    let io_err =
        |what: &str, e: std::io::Error| refuse(ErrorKind::Internal, format!("{what}: {e}"));
    let terminal = match &job.entry.tty {
        Some(pty) => Some(
            terminal_of(pty, job.host_pid, &map)
                .map_err(|e| io_err("cannot read the job's terminal", e))?,
        ),
        None => None,
    };
    let held = match (&job.entry.output, &job.entry.tty) {
        (Some(out), _) => Held::files(out)
            .map_err(|e| io_err("cannot keep the detached job's output files", e))?,
        (None, Some(pty)) => {
            Held::terminal(pty).map_err(|e| io_err("cannot keep the job's terminal", e))?
        }
        (None, None) => Held::take(job.host_pid),
    };
    let (sig_tx, sig_rx) = mpsc::unbounded_channel();
    let (resize_tx, resize_rx) = mpsc::unbounded_channel();
    let (exit_tx, exit_rx) = oneshot::channel();
    *crate::sync::lock(&job.entry.moved) = Some(Moved {
        to: 0,
        signals: sig_tx,
        resize: resize_tx,
        exit: Some(exit_rx),
    });
    st.table.remove(job.entry.id);
    Ok(Prepared {
        entry: job.entry.clone(),
        held,
        ends: Ends {
            signals: sig_rx,
            resize: resize_rx,
            exit: exit_tx,
        },
        map,
        terminal,
    })
}

/// Hand the prepared job to `to` (which holds image `xfer`); the relay
/// runs once it took it. On failure the job is given back for
/// [`take_back`]. `checkpointable`: its processes (PIDs of the image)
/// that held CHECKPOINTABLE.
pub async fn to_target(
    st: &ProcState,
    p: Prepared,
    to: NodeId,
    xfer: u64,
    checkpointable: &[i32],
) -> Result<Vec<PhaseTime>, (String, Prepared)> {
    let adopt = AdoptJob {
        version: SESSION_VERSION,
        xfer,
        pid: p.entry.pid,
        map: p.map.clone(),
        terminal: p.terminal.clone(),
        checkpointable: checkpointable.to_vec(),
        detached: p.entry.detached,
    };
    match super::super::remote::open_adopted(st, to, adopt, ADOPT_TIMEOUT).await {
        Ok((sess, phases, _)) => {
            // its stand-in here, if it has one, knows where it went (a
            // stand-in elsewhere learns it from its session's reader)
            st.migration.standins.moved(p.entry.pid, st.node(), to);
            // the node whose stream carries the job's session here may
            // join it on the target instead (see `relay`)
            let joiner = *crate::sync::lock(&p.entry.carrier);
            start_relay(p, sess, to, joiner);
            Ok(phases)
        }
        Err(e) => Err((e.message, p)),
    }
}

/// The job's image on this node, to take it back from.
pub struct Saved<'a> {
    /// Directory of the image.
    pub root: &'a std::path::Path,
    /// Application id.
    pub app: i32,
    /// SN.
    pub sn: u32,
    /// Its processes (PIDs of the image) that held CHECKPOINTABLE.
    pub checkpointable: &'a [i32],
}

/// The target failed after the handover: restore the job here, in a new
/// namespace, and relay to it as to a remote one.
pub async fn take_back(st: &Arc<ProcState>, p: Prepared, saved: Saved<'_>) -> Result<(), String> {
    let img = JobImage {
        root: saved.root,
        app: saved.app,
        sn: saved.sn,
        checkpointable: saved.checkpointable.to_vec(),
        detached: p.entry.detached,
        output_here: false,
        fence: None,
        pid: p.entry.pid,
        map: p.map.clone(),
        uid: p.entry.uid,
        gid: p.entry.gid,
        origin: p.entry.origin,
        terminal: p.terminal.clone(),
    };
    let mut clock = Clock::new();
    match adopt::start(st, img, &mut clock, Lazy::No).await {
        Ok(job) => {
            let sess = session::spawn_started(st.clone(), job, None);
            start_relay(p, sess, st.node(), None);
            Ok(())
        }
        Err(e) => {
            // Nothing runs any more: the session reports the job killed.
            drop(p);
            Err(e.message)
        }
    }
}

fn start_relay(p: Prepared, sess: Session, to: NodeId, joiner: Option<NodeId>) {
    if let Some(m) = crate::sync::lock(&p.entry.moved).as_mut() {
        m.to = to;
    }
    relay::spawn(sess, p.held, p.ends, to, joiner);
}
