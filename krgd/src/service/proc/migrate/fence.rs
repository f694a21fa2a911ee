//! The handover fence: a migrated process runs only on the node the
//! cluster placed it on.
//!
//! After the handover two nodes could run the process: the target, which
//! restores it, and the origin, which takes it back when the target
//! fails. A partition can leave each believing the other failed. So:
//!
//! - the target restores the process held (`restart --gate-fd`) and lets
//!   it run only once the cluster's Raft log says the transfer runs here
//!   ([`runs_here`]);
//! - the origin takes it back only once the log says it runs on the
//!   origin ([`decide`] after the target failed).
//!
//! The first of the two records committed wins (see
//! `cluster::placements`); a node cut off in the minority gets nothing
//! committed, so it waits — its copy held, never run — until it hears the
//! decision, and then runs its copy or drops it.
//!
//! One exception at the origin ([`back_here`]): when the target's host
//! refuses connections to its krgd (the host is up, its krgd is not), a
//! copy restored as a job there died with that krgd (a job's init has the
//! parent-death signal), so the origin takes it back without waiting for
//! a decision a cluster of two could not make with one node down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::NodeId;

use super::restore::Decision;
use crate::service::proc::state::ProcState;

/// How often an undecided placement is asked again.
const RETRY: Duration = Duration::from_millis(200);
/// How often a placement still undecided is logged.
const SAY_EVERY: Duration = Duration::from_secs(5);

/// Ask the cluster to place transfer `xfer` on this node, until it
/// decides: the node that runs the process (this one, or the one placed
/// first).
pub async fn decide(st: &ProcState, xfer: u64) -> NodeId {
    loop {
        // nothing is final for the origin: it holds the only image
        if let Ok(on) = ask(st, xfer, |_| false).await {
            return on;
        }
    }
}

/// [`decide`], except that an error `stop` says is final ends the asking.
async fn ask(
    st: &ProcState,
    xfer: u64,
    stop: impl Fn(&AdminError) -> bool,
) -> Result<NodeId, AdminError> {
    let me = st.node();
    let asked = Instant::now();
    let mut said = asked;
    loop {
        match st.placement.place(xfer, me).await {
            Ok(on) => {
                let waited = asked.elapsed();
                let metrics = &st.ctx.metrics;
                metrics
                    .migration_placement_seconds
                    .observe(waited.as_secs_f64());
                tracing::debug!(xfer, on, ms = waited.as_millis() as u64, "placed");
                return Ok(on);
            }
            Err(e) if stop(&e) => return Err(e),
            Err(e) => {
                if said.elapsed() >= SAY_EVERY {
                    tracing::warn!(
                        xfer,
                        error = %e.message,
                        waited_s = asked.elapsed().as_secs(),
                        "where a migrated process runs is not decided yet (this node cannot reach a majority?): asking again"
                    );
                    said = Instant::now();
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// The origin, after the target failed following the handover: the node
/// that runs the process — this one (take it back) or the target. With
/// `dies_with_krgd` (the target restored it as a job), a target whose
/// krgd is down is proof enough that nothing runs there.
pub async fn back_here(st: &ProcState, xfer: u64, to: NodeId, dies_with_krgd: bool) -> NodeId {
    let me = st.node();
    let Some(addr) = st.ctx.peers.address(to).filter(|_| dies_with_krgd) else {
        return decide(st, xfer).await;
    };
    tokio::select! {
        on = decide(st, xfer) => on,
        () = krgd_down(addr) => {
            tracing::warn!(xfer, to, "the target's krgd is down (its host refuses connections): its copy died with it; taking the process back without the cluster's decision");
            me
        }
    }
}

/// Return once a connection to `addr` is refused (its host answers, no
/// krgd listens); a timeout proves nothing (a partition looks the same).
async fn krgd_down(addr: std::net::SocketAddr) {
    loop {
        let tried = tokio::time::timeout(RETRY * 5, tokio::net::TcpStream::connect(addr)).await;
        if let Ok(Err(e)) = tried {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                return;
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The target's gate for transfer `xfer` of node `from`: its restored
/// copy runs if the cluster places the transfer here; otherwise why not.
pub fn runs_here(st: Arc<ProcState>, xfer: u64, from: NodeId) -> Decision {
    Box::pin(async move {
        if let Some(hold) = kdfs::store::crash::pause("krgd-fence") {
            tokio::time::sleep(hold).await;
        }
        // A node outside the cluster (or refused) is never placed: it
        // drops its copy rather than hold it for ever.
        let last =
            |e: &AdminError| matches!(e.kind, ErrorKind::NotFound | ErrorKind::PermissionDenied);
        match ask(&st, xfer, last).await.map_err(|e| e.message)? {
            on if on == st.node() => Ok(()),
            on if on == from => Err(format!(
                "node {from} took the process back (the cluster decided so before this node asked): this copy was not let run"
            )),
            on => Err(format!(
                "the cluster placed the process on node {on}: this copy was not let run"
            )),
        }
    })
}
