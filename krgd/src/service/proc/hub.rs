//! A run as its origin sees it: place the jobs, open one session per node
//! (here, or over a session connection to the node's krgd), and join them
//! into one [`Session`] whose jobs are numbered across nodes. This is the
//! one entry point of `krg run` (admin socket) and of XCPU sessions (the
//! /krg tree).

use std::sync::Arc;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::proc::{Credentials, Down, JobCaps, RunRequest, Up};
use krg_proto::NodeId;
use tokio::sync::mpsc;

use super::creds::{self, Origin};
use super::place;
use super::remote;
use super::session::{self, Params, Session};
use super::state::{ProcState, MAX_PER_NODE};
use crate::caller::Caller;
use crate::service::sched::SchedService;

/// Start a run for `creds`; the node of each job, and the joined session.
pub async fn open(
    st: &Arc<ProcState>,
    sched: &SchedService,
    caller: &Caller,
    req: RunRequest,
    creds: Credentials,
) -> Result<(Vec<NodeId>, Session), AdminError> {
    let me = st.node();
    if req.per_node == 0 || req.per_node > MAX_PER_NODE {
        return Err(AdminError::new(
            ErrorKind::InvalidArgument,
            format!(
                "{} copies per node; 1 to {MAX_PER_NODE} are allowed",
                req.per_node
            ),
        ));
    }
    super::job::validate(&req.spec, me)?;
    let nodes = place::nodes(st, sched, caller, &req.placement, creds.uid).await?;
    let count = req.per_node;
    // The user's shell made its children CAN_MIGRATE or CHECKPOINTABLE:
    // its jobs are too.
    let caps = JobCaps {
        can_migrate: caller.pid.is_some_and(|p| st.caps.can_migrate(p)),
        checkpointable: caller.pid.is_some_and(|p| st.caps.is_checkpointable(p)),
    };
    let opens = nodes.iter().map(|&node| {
        let (spec, creds) = (req.spec.clone(), creds.clone());
        async move {
            if node == me {
                st.check_available()?;
                creds::check(&creds, st.policy, Origin::Local, me)?;
                Ok(session::spawn(
                    st.clone(),
                    Params {
                        spec,
                        creds,
                        count,
                        origin: me,
                        caps,
                    },
                ))
            } else {
                remote::open(st, node, spec, creds, count, caps).await
            }
        }
    });
    let parts: Vec<Result<Session, AdminError>> = futures::future::join_all(opens).await;
    // A run where no node could start anything is an error, with the
    // first node's reason; otherwise failed nodes' jobs are refused.
    if parts.iter().all(Result::is_err) {
        if let Some(Err(e)) = parts.into_iter().next() {
            return Err(e);
        }
        return Err(AdminError::new(ErrorKind::Internal, "no node to run on"));
    }
    let jobs: Vec<NodeId> = nodes
        .iter()
        .flat_map(|&n| std::iter::repeat_n(n, count as usize))
        .collect();
    Ok((jobs.clone(), join(parts, &nodes, count)))
}

/// One session out of several: events renumbered by node order, input
/// copied to every part.
fn join(parts: Vec<Result<Session, AdminError>>, nodes: &[NodeId], count: u32) -> Session {
    let total = count * nodes.len() as u32;
    let (ev_tx, ev_rx) = mpsc::channel::<Down>(64);
    let (in_tx, mut in_rx) = mpsc::channel::<Up>(256);
    let mut inputs = Vec::new();
    for (i, (part, &node)) in parts.into_iter().zip(nodes).enumerate() {
        let first = i as u32 * count;
        let ev = ev_tx.clone();
        match part {
            Ok(sess) => {
                inputs.push(sess.input);
                let mut events = sess.events;
                tokio::spawn(async move {
                    while let Some(d) = events.recv().await {
                        let job = first + d.job();
                        if ev.send(d.renumbered(job)).await.is_err() {
                            return;
                        }
                    }
                });
            }
            Err(error) => {
                tokio::spawn(async move {
                    for j in 0..count {
                        let refused = Down::Refused {
                            job: first + j,
                            node,
                            error: error.clone(),
                        };
                        if ev.send(refused).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    }
    drop(ev_tx);
    tokio::spawn(async move {
        while let Some(up) = in_rx.recv().await {
            // Parts whose jobs all ended dropped their input: skip them.
            inputs.retain(|i| !i.is_closed());
            for i in &inputs {
                let _ = i.send(up.clone()).await;
            }
        }
        // Dropping every part's input ends (and kills) what still runs.
    });
    Session {
        jobs: total,
        input: in_tx,
        events: ev_rx,
    }
}
