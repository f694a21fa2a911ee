//! This node's record of migrations: the images being received, the
//! processes and `krg run` jobs that migrated in (for `krg ps`, balancing's
//! `min_residency`), and the page servers still filling the memory of
//! processes restored lazily (a process is not moved on before its memory
//! is all in).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::NodeId;

use super::super::state::ProcState;
use super::{err, incoming, restore, serving};

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
    pub transfers: incoming::Transfers,
    /// Images kept for the targets of post-copy migrations.
    pub serving: serving::Serving,
    /// Processes that migrated in and still run, by PID.
    pub adopted: Mutex<HashMap<i32, Adopted>>,
    /// When each `krg run` job that migrated in arrived, by job number.
    pub jobs_arrived: Mutex<HashMap<u64, Instant>>,
    /// Page servers still bringing in the memory of processes that
    /// migrated in (server PID → those processes).
    pub filling: Mutex<HashMap<i32, Vec<i32>>>,
}

/// How long a migration waits for the memory of a process that just
/// arrived to be all in before it moves it on.
const FILL_WAIT: Duration = Duration::from_secs(10);

/// `server` brings in the memory of `pids` (restored lazily); it is
/// reaped here when it is done.
pub fn filling(st: &Arc<ProcState>, server: i32, pids: &[i32]) {
    crate::sync::lock(&st.migration.filling).insert(server, pids.to_vec());
    let st = st.clone();
    tokio::spawn(async move {
        restore::reap_server(server).await;
        crate::sync::lock(&st.migration.filling).remove(&server);
    });
}

/// Wait until no page server fills the memory of any of `pids` (a dump
/// must not race the server for the pages it has not brought in yet).
pub(super) async fn wait_filled(st: &ProcState, pids: &[i32]) -> Result<(), AdminError> {
    let deadline = Instant::now() + FILL_WAIT;
    loop {
        let busy = crate::sync::lock(&st.migration.filling)
            .iter()
            .find(|(_, p)| p.iter().any(|x| pids.contains(x)))
            .map(|(s, _)| *s);
        let Some(server) = busy else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(err(
                ErrorKind::Unavailable,
                format!("process {} arrived here a moment ago and its memory is still coming in (page server {server}): retry", pids[0]),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Start time of `pid` (field 22 of its stat).
pub fn start_ticks(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    checkpoint::procfs::parse_stat(&s).ok().map(|s| s.field(22))
}

/// PIDs of the processes that migrated in and still run (the same processes).
pub fn adopted(st: &ProcState) -> Vec<i32> {
    let mut a = crate::sync::lock(&st.migration.adopted);
    a.retain(|&p, x| start_ticks(p) == Some(x.start));
    let mut v: Vec<i32> = a.keys().copied().collect();
    v.sort_unstable();
    v
}

/// When process `pid` migrated in, if it did and still runs (a process
/// of a job that migrated in: when its job did).
pub fn arrived(st: &ProcState, pid: i32) -> Option<Instant> {
    {
        let a = crate::sync::lock(&st.migration.adopted);
        if let Some(x) = a.get(&pid) {
            return (start_ticks(pid) == Some(x.start)).then_some(x.at);
        }
    }
    let ns = super::super::procfs::pid_ns_inode(pid)?;
    let job = st.table.jobs().into_iter().find(|j| j.ns_ino == ns)?;
    crate::sync::lock(&st.migration.jobs_arrived)
        .get(&job.id)
        .copied()
}

/// Job `id` (of this node's table) migrated in now.
pub fn arrived_job(st: &ProcState, id: u64) {
    let live: std::collections::HashSet<u64> = st.table.jobs().iter().map(|j| j.id).collect();
    let mut a = crate::sync::lock(&st.migration.jobs_arrived);
    a.retain(|k, _| live.contains(k));
    a.insert(id, Instant::now());
}
