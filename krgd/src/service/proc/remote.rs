//! The origin's side of a session on another node: a dedicated,
//! authenticated TCP connection to the target's krgd carrying the
//! session stream (see `krg_proto::proc`), seen by the caller as a
//! [`Session`] just like a local one.
//!
//! - [`input`] — the input, on every stream of the session
//! - [`reading`] — the events, one reader per stream; a job that moves on
//!   is joined where it runs next (*Splicing* in `krg_proto::proc`)
//!
//! A target that stops answering ends its jobs with [`Down::Lost`]: when
//! the connection breaks (its krgd died or restarted), or when the
//! membership service marks the node failed (a silent node: within the
//! failure detection time). Dropping the input closes the connection, and
//! the target kills the session's jobs.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::auth::client_handshake;
use krg_proto::migrate::PhaseTime;
use krg_proto::peer::{PeerBody, PeerMessage, PeerRequest, PeerResponse};
use krg_proto::proc::{
    Credentials, Down, JobCaps, JobSpec, PeerSession, ProcPeerReply, ProcPeerRequest, Up,
    SESSION_VERSION,
};
use krg_proto::seal::FrameKeys;
use krg_proto::{NodeId, ProtoError};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::context::NodeContext;

use super::liveness::{until_gone, CutOff};
pub use super::migrate::registry::RunsOn;
use super::sealed::{self, Outgoing};
use super::session::Session;
use super::state::ProcState;

mod input;
mod reading;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

fn unavailable(node: NodeId, what: impl std::fmt::Display) -> AdminError {
    AdminError::new(ErrorKind::Unavailable, format!("node {node}: {what}"))
}

/// An authenticated connection to `node`'s krgd. A connection that breaks
/// during the handshake is tried once more (as the peer pool does).
async fn connect(ctx: &NodeContext, node: NodeId) -> Result<(TcpStream, FrameKeys), AdminError> {
    let addr = ctx
        .peers
        .address(node)
        .ok_or_else(|| unavailable(node, "no known address"))?;
    let mut last = None;
    for _ in 0..2 {
        let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                unavailable(
                    node,
                    format!("no answer from {addr} within {CONNECT_TIMEOUT:?}"),
                )
            })?
            .map_err(|e| unavailable(node, format!("cannot connect to {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        super::fdio::keepalive(&stream, ctx.config.failure_timeout, ctx.config.heartbeat, 3);
        match client_handshake(&mut stream, &ctx.key, ctx.me).await {
            Ok(auth) if auth.peer.node == node => return Ok((stream, auth.keys)),
            Ok(auth) => {
                return Err(unavailable(
                    node,
                    format!("{addr} answered as node {}", auth.peer.node),
                ))
            }
            Err(e @ (ProtoError::Io(_) | ProtoError::Closed)) => last = Some(e),
            Err(e) => return Err(unavailable(node, e)),
        }
    }
    Err(unavailable(
        node,
        last.map(|e| e.to_string()).unwrap_or_default(),
    ))
}

/// Open a session of `count` copies of `spec` on `node`.
pub async fn open(
    st: &ProcState,
    node: NodeId,
    spec: JobSpec,
    creds: Credentials,
    count: u32,
    caps: JobCaps,
) -> Result<Session, AdminError> {
    let first = ProcPeerRequest::Session(PeerSession {
        version: SESSION_VERSION,
        spec,
        creds,
        count,
        caps,
    });
    open_with(st, node, first, count, OPEN_TIMEOUT)
        .await
        .map(|(s, _, _)| s)
}

/// Hand a migrating `krg run` job to `node`: it restores the job (an
/// image it holds) and carries its session stream back; with the
/// target's phases, and where the job runs as it moves on.
pub async fn open_adopted(
    st: &ProcState,
    node: NodeId,
    adopt: krg_proto::migrate::AdoptJob,
    timeout: Duration,
) -> Result<(Session, Vec<PhaseTime>, RunsOn), AdminError> {
    open_with(st, node, ProcPeerRequest::AdoptJob(adopt), 1, timeout).await
}

/// A session connection to `node` that has a part of an application it
/// saved run again there (see [`crate::service::proc::parts`]).
pub async fn open_adopted_saved(
    st: &ProcState,
    node: NodeId,
    adopt: krg_proto::proc::AdoptSaved,
    timeout: Duration,
) -> Result<(Session, Vec<PhaseTime>, RunsOn), AdminError> {
    open_with(st, node, ProcPeerRequest::AdoptSaved(adopt), 1, timeout).await
}

/// A session connection to `node` whose first message is `first`, answered
/// by a session of `count` jobs within `timeout`; with the target's
/// phases when it took a job over, and where its job runs (of a session
/// of one: kept as the job moves on).
async fn open_with(
    st: &ProcState,
    node: NodeId,
    first: ProcPeerRequest,
    count: u32,
    timeout: Duration,
) -> Result<(Session, Vec<PhaseTime>, RunsOn), AdminError> {
    let (mut stream, mut keys) = tokio::time::timeout(OPEN_TIMEOUT, connect(&st.ctx, node))
        .await
        .map_err(|_| unavailable(node, format!("no session within {OPEN_TIMEOUT:?}")))??;
    // A partition breaks no connection: give up once the membership says
    // `node` failed, not at `timeout` (a migration's handover waits here,
    // and gives up too when this node is the one cut off).
    let cut_off = match first {
        ProcPeerRequest::AdoptJob(_) | ProcPeerRequest::AdoptSaved(_) => CutOff::Ends,
        _ => CutOff::Ignored,
    };
    let mut view = st.ctx.watch_view();
    let opened = tokio::time::timeout(timeout, async {
        let open = PeerMessage {
            id: 0,
            body: PeerBody::Request(PeerRequest::Proc(first)),
        };
        keys.sealer
            .write(&mut stream, &open)
            .await
            .map_err(|e| unavailable(node, e))?;
        let answer: PeerMessage = keys
            .opener
            .read(&mut stream)
            .await
            .map_err(|e| unavailable(node, e))?;
        match answer.body {
            PeerBody::Response(PeerResponse::Proc(ProcPeerReply::Session { jobs }))
                if jobs == count =>
            {
                Ok(Vec::new())
            }
            PeerBody::Response(PeerResponse::Proc(ProcPeerReply::Adopted { phases }))
                if count == 1 =>
            {
                Ok(phases)
            }
            PeerBody::Response(PeerResponse::Error(e)) => Err(e),
            other => Err(unavailable(node, format!("unexpected answer {other:?}"))),
        }
    });
    let opened = tokio::select! {
        r = opened => r,
        why = until_gone(&mut view, node, cut_off) => {
            Ok(Err(AdminError::new(ErrorKind::Unavailable, why)))
        }
    };
    let opened = opened.map_err(|_| unavailable(node, format!("no session within {timeout:?}")))?;
    let phases = opened?;
    let (in_tx, in_rx) = mpsc::channel::<Up>(256);
    let (ev_tx, ev_rx) = mpsc::channel::<Down>(64);
    let (switch_tx, switch_rx) = mpsc::channel(1);
    let (rd, wr) = stream.into_split();
    let down = sealed::incoming::<Down>(rd, keys.opener);
    tokio::spawn(input::write_up(
        Outgoing::new(wr, keys.sealer),
        in_rx,
        switch_rx,
    ));
    let shared = reading::Shared {
        ctx: st.ctx.clone(),
        splices: st.splices.clone(),
        events: ev_tx,
        switch: switch_tx,
        rejoining: Arc::default(),
        next_path: Arc::new(AtomicU32::new(1)),
        runs_on: RunsOn::new(node),
    };
    let runs_on = shared.runs_on.clone();
    let reading = reading::Reading {
        shared,
        node,
        path: 0,
        jobs: (0..count).collect(),
    };
    tokio::spawn(reading.run(down));
    let session = Session {
        jobs: count,
        input: in_tx,
        events: ev_rx,
    };
    Ok((session, phases, runs_on))
}
