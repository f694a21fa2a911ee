//! This node's record of migrations, as data: the images being received
//! ([`Transfers`]) and served ([`Serving`]), the processes and `krg run`
//! jobs that migrated in (for `krg ps`, balancing's `min_residency`), the
//! page servers still filling the memory of processes restored lazily, and
//! what processes that moved from here left: their output's sinks, their
//! stand-ins.
//! What is done with it is in [`incoming`](super::incoming),
//! [`serving`](super::serving) and [`arrivals`](super::arrivals); this file
//! depends on no other part of the process service, so the service's state
//! can hold it.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use krg_proto::admin::AdminError;
use krg_proto::proc::{Down, Up};
use krg_proto::NodeId;
use tokio::sync::{mpsc, oneshot};

use super::entry::Entry;

/// A process that migrated in.
#[derive(Debug, Clone, Copy)]
pub struct Adopted {
    /// Its start time (clock ticks after boot): a recycled PID is another process.
    pub start: u64,
    /// The node it came from.
    pub from: NodeId,
    /// When it arrived (balancing leaves it here for `min_residency`).
    pub at: Instant,
}

/// This node's migrations.
#[derive(Default)]
pub struct Registry {
    /// Images being received.
    pub transfers: Transfers,
    /// Images kept for the targets of post-copy migrations.
    pub serving: Serving,
    /// Processes that migrated in and still run, by PID.
    pub adopted: Mutex<HashMap<i32, Adopted>>,
    /// When each `krg run` job that migrated in arrived, by job number.
    pub jobs_arrived: Mutex<HashMap<u64, Instant>>,
    /// Page servers still bringing in the memory of processes that
    /// migrated in (server PID → those processes).
    pub filling: Mutex<HashMap<i32, Vec<i32>>>,
    /// Where the output of processes that moved from here goes.
    pub outputs: Kept,
    /// The stand-ins of processes that moved from here.
    pub standins: StandIns,
}

/// The files a moved process's stdout and stderr led to here (see
/// [`super::stdio`]).
#[derive(Default, Clone)]
pub struct Sinks {
    pub(super) stdout: Option<Arc<OwnedFd>>,
    pub(super) stderr: Option<Arc<OwnedFd>>,
}

/// The sinks of the processes that moved from here, by (target, transfer).
#[derive(Default)]
pub struct Kept(Mutex<HashMap<(NodeId, u64), Sinks>>);

impl Kept {
    pub(super) fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(NodeId, u64), Sinks>> {
        crate::sync::lock(&self.0)
    }
}

/// A moved process's session, as its stand-in drives it: input towards
/// the process, events from it.
pub type StandInStream = (mpsc::Sender<Up>, mpsc::Receiver<Down>);

/// A stand-in made and not connected yet.
pub struct PendingStandIn {
    /// Its PID (the moved process's on this node).
    pub pid: i32,
    /// Told once it connected.
    pub claimed: oneshot::Sender<()>,
    /// The moved process's session once it runs (or why it does not).
    pub session: oneshot::Receiver<Result<StandInStream, AdminError>>,
}

/// Where the job of a session of one job runs now, kept as it moves on
/// (a remote session's reader follows it, `remote::reading`): a
/// stand-in's record of where its process runs ([`StandIns`]).
#[derive(Clone, Debug)]
pub struct RunsOn(Arc<AtomicU32>);

impl RunsOn {
    pub fn new(node: NodeId) -> Self {
        RunsOn(Arc::new(AtomicU32::new(node)))
    }

    pub fn get(&self) -> NodeId {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, node: NodeId) {
        self.0.store(node, Ordering::Relaxed);
    }
}

/// Stand-ins of processes that moved from here ([`super::standin`]).
#[derive(Default)]
pub struct StandIns {
    /// Not connected yet, by token.
    pub pending: Mutex<HashMap<u64, PendingStandIn>>,
    /// Connected, by PID: its start time, and where its process runs.
    pub active: Mutex<HashMap<i32, (u64, RunsOn)>>,
}

impl StandIns {
    /// How many stand-ins are connected and alive.
    pub fn live(&self) -> usize {
        let mut active = crate::sync::lock(&self.active);
        active.retain(|&pid, &mut (start, _)| start_ticks(pid) == Some(start));
        active.len()
    }

    /// The node where the process `pid` stands in for runs, if `pid` is a
    /// live stand-in.
    pub fn runs_on(&self, pid: i32) -> Option<NodeId> {
        let active = crate::sync::lock(&self.active);
        let (start, node) = active.get(&pid)?;
        (start_ticks(pid) == Some(*start)).then(|| node.get())
    }

    /// The process of stand-in `pid` (if `pid` is one here whose process
    /// ran on `from`, this node) moved on to `to`.
    pub fn moved(&self, pid: i32, from: NodeId, to: NodeId) {
        if let Some((_, node)) = crate::sync::lock(&self.active).get(&pid) {
            if node.get() == from {
                node.set(to);
            }
        }
    }
}

impl Registry {
    /// PIDs of the processes that migrated in and still run (the same
    /// processes: a recycled PID is not counted).
    pub fn adopted_pids(&self) -> Vec<i32> {
        let mut a = crate::sync::lock(&self.adopted);
        a.retain(|&p, x| start_ticks(p) == Some(x.start));
        let mut v: Vec<i32> = a.keys().copied().collect();
        v.sort_unstable();
        v
    }
}

/// One image being received.
pub struct Receiving {
    pub(super) started: Instant,
    pub(super) root: PathBuf,
    /// The application's directory under `root` (where the files are).
    pub(super) dir: PathBuf,
    pub(super) owner: u32,
    pub(super) gid: u32,
    pub(super) app: i32,
    pub(super) sn: u32,
    pub(super) pids: Vec<i32>,
    /// Every file offered so far, by index (a removed one stays, `None`).
    pub(super) files: Vec<Option<Entry>>,
    /// Post-copy: the memory files' page data may be missing at `Commit`.
    pub(super) postcopy: bool,
}

/// Transfers in progress, by (origin node, transfer id).
#[derive(Default)]
pub struct Transfers(pub(super) Mutex<HashMap<(NodeId, u64), Receiving>>);

/// One image being served.
pub struct Served {
    /// The only node that may pull it.
    pub(super) to: NodeId,
    /// Its directory, removed at the end.
    pub(super) root: PathBuf,
    /// Its files, by the index the target knows them by (`None`: a file
    /// offered early and gone since).
    pub(super) files: Vec<Option<Arc<File>>>,
}

/// Images served to targets, by transfer id.
#[derive(Default)]
pub struct Serving(pub(super) Mutex<HashMap<u64, Served>>);

/// Start time of `pid` (field 22 of its stat).
pub fn start_ticks(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    checkpoint::procfs::parse_stat(&s).ok().map(|s| s.field(22))
}
