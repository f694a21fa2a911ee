//! Processes that just arrived: when each came (balancing leaves it for
//! `min_residency`), and the page servers still bringing in the memory of
//! those restored lazily (a process is not moved on before its memory is
//! all in).

use std::sync::Arc;
use std::time::{Duration, Instant};

use krg_proto::admin::{AdminError, ErrorKind};

use super::super::state::ProcState;
use super::registry::start_ticks;
use super::{err, restore};

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
/// must not race the server for the pages it has not brought in yet: a
/// migration's, or a checkpoint's).
pub async fn wait_filled(st: &ProcState, pids: &[i32]) -> Result<(), AdminError> {
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
