//! Parts of an application held stopped while the rest of it is saved
//! (`CheckpointAt::hold`, `ProcRequest::ReleaseHeld`).
//!
//! `checkpoint PID` of a tree some of whose processes moved to other
//! nodes has each of those nodes save its part first. A part that ran on
//! after its save could send its stand-in output the tree then reads and
//! saves, and the restarted part would send it again: the saves would
//! not be of one moment. So the node leaves the part stopped once saved
//! (SIGSTOP, as a migration leaves its origin copy) and lets it run on
//! when `checkpoint` says the tree is saved too, or after
//! [`HOLD_LIMIT_SECS`] whatever happens to `checkpoint` (killed, its node
//! gone, a tree whose save takes longer). Processes that job control had
//! stopped before the save stay stopped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::peer::PeerRequest;
use krg_proto::proc::{Credentials, ProcPeerReply, ProcPeerRequest, ReleaseHeld, HOLD_LIMIT_SECS};

use super::creds::Origin;
use super::heldio::HeldStdio;
use super::heldparts::{run_on, HeldPart};
use super::migrate::registry::start_ticks;
use super::state::ProcState;
use crate::caller::Caller;

/// How long the node that holds a part may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The processes of the part saved as SN `sn` of `app` (`dumped`, left
/// stopped) are held for `uid` until released or the limit passes.
pub fn hold(
    st: &Arc<ProcState>,
    app: i32,
    sn: u32,
    uid: u32,
    dumped: &checkpoint::dump::DumpReport,
) {
    let pids = dumped
        .tasks
        .iter()
        .filter(|p| !dumped.stopped_before.contains(p))
        .map(|&p| (p, start_ticks(p)))
        .collect();
    let serial = st.held.next.fetch_add(1, Ordering::Relaxed);
    let part = HeldPart {
        uid,
        pids,
        serial,
        since: dumped.frozen_at,
        stdio: None,
    };
    crate::sync::lock(&st.held.parts).insert((app, sn), part);
    let st = st.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(HOLD_LIMIT_SECS)).await;
        if let Some(part) = st.held.take(app, sn, serial) {
            tracing::warn!(
                app,
                sn,
                "a part of an application held stopped for its checkpoint runs on: nobody released it within the hold limit"
            );
            run_on(&part);
        }
    });
}

/// The held part `app` (SN `sn`) has its stdio held too: `unread` is
/// given back and its reader resumed when it runs on — now, if it
/// already did.
pub fn attach_stdio(st: &ProcState, app: i32, sn: u32, stdio: Arc<HeldStdio>, unread: Bytes) {
    let mut parts = crate::sync::lock(&st.held.parts);
    match parts.get_mut(&(app, sn)) {
        Some(part) => part.stdio = Some((stdio, unread)),
        None => {
            stdio.give_back(unread);
            stdio.resume();
        }
    }
}

/// On the node asked: have the node that holds the part let it run on.
pub async fn release_asked(
    st: &Arc<ProcState>,
    caller: &Caller,
    req: ReleaseHeld,
) -> Result<Option<u64>, AdminError> {
    let creds = super::creds::of_caller(caller);
    if req.node == st.node() {
        return release_here(st, req, creds, Origin::Local);
    }
    let node = req.node;
    let ask = PeerRequest::Proc(ProcPeerRequest::ReleaseHeld { req, creds });
    let got = st.ctx.peers.call(node, ask, TIMEOUT).await;
    super::reply::answer(node, got, |r| match r {
        ProcPeerReply::HeldReleased { stopped_us } => Ok(stopped_us),
        other => Err(other),
    })
}

/// On the node that holds the part: let it run on, for the user who had
/// it saved or root from this node or a member; how long it was stopped
/// in all, in microseconds (None: it was not held any more).
pub fn release_here(
    st: &ProcState,
    req: ReleaseHeld,
    creds: Credentials,
    origin: Origin,
) -> Result<Option<u64>, AdminError> {
    if creds.uid == 0 && matches!(origin, Origin::Outsider(_)) {
        return Err(AdminError::new(
            ErrorKind::PermissionDenied,
            "root's releases are taken only from members of the cluster",
        ));
    }
    let mut held = crate::sync::lock(&st.held.parts);
    let key = (req.app, req.sn);
    match held.get(&key) {
        None => Ok(None),
        Some(part) if creds.uid != 0 && creds.uid != part.uid => Err(AdminError::new(
            ErrorKind::PermissionDenied,
            format!(
                "SN {} of {} on node {} was saved for another user",
                req.sn,
                req.app,
                st.node()
            ),
        )),
        Some(_) => Ok(held.remove(&key).map(|part| {
            run_on(&part);
            part.since.elapsed().as_micros() as u64
        })),
    }
}
