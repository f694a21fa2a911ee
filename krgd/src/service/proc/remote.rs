//! The origin's side of a session on another node: a dedicated,
//! authenticated TCP connection to the target's krgd carrying the
//! session stream (see `krg_proto::proc`), seen by the caller as a
//! [`Session`] just like a local one.
//!
//! A target that stops answering ends its jobs with [`Down::Lost`]: when
//! the connection breaks (its krgd died or restarted), or when the
//! membership service marks the node failed (a silent node: within the
//! failure detection time). Dropping the input closes the connection, and
//! the target kills the session's jobs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::auth::client_handshake;
use krg_proto::cluster::NodeState;
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

use super::migrate::CutOff;
use super::sealed::{self, Incoming, Outgoing};
use super::session::Session;
use super::state::ProcState;

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
        .map(|(s, _)| s)
}

/// Hand a migrating `krg run` job to `node`: it restores the job (an
/// image it holds) and carries its session stream back.
pub async fn open_adopted(
    st: &ProcState,
    node: NodeId,
    adopt: krg_proto::migrate::AdoptJob,
    timeout: Duration,
) -> Result<(Session, Vec<PhaseTime>), AdminError> {
    open_with(st, node, ProcPeerRequest::AdoptJob(adopt), 1, timeout).await
}

/// A session connection to `node` whose first message is `first`, answered
/// by a session of `count` jobs within `timeout`; with the target's
/// phases when it took a job over.
async fn open_with(
    st: &ProcState,
    node: NodeId,
    first: ProcPeerRequest,
    count: u32,
    timeout: Duration,
) -> Result<(Session, Vec<PhaseTime>), AdminError> {
    let (mut stream, mut keys) = tokio::time::timeout(OPEN_TIMEOUT, connect(&st.ctx, node))
        .await
        .map_err(|_| unavailable(node, format!("no session within {OPEN_TIMEOUT:?}")))??;
    // A partition breaks no connection: give up once the membership says
    // `node` failed, not at `timeout` (a migration's handover waits here,
    // and gives up too when this node is the one cut off).
    let cut_off = match first {
        ProcPeerRequest::AdoptJob(_) => CutOff::Ends,
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
        why = super::migrate::until_gone(&mut view, node, cut_off) => {
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
    tokio::spawn(write_up(Outgoing::new(wr, keys.sealer), in_rx, switch_rx));
    let reading = Reading {
        ctx: st.ctx.clone(),
        splices: st.splices.clone(),
        node,
        count,
        events: ev_tx,
        switch: switch_tx,
    };
    tokio::spawn(reading.run(down));
    let session = Session {
        jobs: count,
        input: in_tx,
        events: ev_rx,
    };
    Ok((session, phases))
}

/// A change of path for the input, from [`Reading`]: the last word on
/// the old stream, then the joined one.
enum Switch {
    /// Send `PathEnd`, and say how many bytes of stdin went out so far.
    PathEnd(tokio::sync::oneshot::Sender<u64>),
    To(Box<Outgoing>),
}

async fn write_up(
    mut wr: Outgoing,
    mut rx: mpsc::Receiver<Up>,
    mut switch: mpsc::Receiver<Switch>,
) {
    let mut switching = true;
    // (on every path: the count a splice's target rebases on)
    let mut stdin_sent = 0u64;
    loop {
        tokio::select! {
            biased;
            sw = switch.recv(), if switching => match sw {
                Some(Switch::PathEnd(count)) => {
                    let _ = wr.send(&Up::PathEnd).await;
                    let _ = count.send(stdin_sent);
                    // what comes meanwhile waits for the joined stream
                    let Some(Switch::To(joined)) = switch.recv().await else {
                        break;
                    };
                    std::mem::replace(&mut wr, *joined).shutdown().await;
                }
                Some(Switch::To(_)) => {}
                None => switching = false,
            },
            up = rx.recv() => match up {
                Some(up) => {
                    if let Up::Stdin(data) = &up {
                        stdin_sent += data.len() as u64;
                    }
                    if wr.send(&up).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
        }
    }
    // Input gone: the session is abandoned, and the target kills its jobs.
    wr.shutdown().await;
}

/// Whether `node` is, in this node's view, a member that answers.
/// Is `node` still a member in good standing? Err says why not.
pub(super) fn is_alive(view: &crate::context::ClusterView, node: NodeId) -> Result<(), String> {
    if view.epoch == 0 {
        return Ok(()); // no cluster: nothing watches liveness, the connection does
    }
    match view.node(node).map(|n| n.state) {
        Some(NodeState::Online) | Some(NodeState::Leaving) => Ok(()),
        Some(NodeState::Failed) => Err(format!(
            "node {node} failed (silent for longer than the failure timeout)"
        )),
        Some(NodeState::Present) | None => Err(format!("node {node} left the cluster")),
    }
}

/// The events side of a session on another node: frames to the caller
/// until every job ended or the node is lost. A session of one job
/// follows the job when it moves on ([`Down::Rejoin`]).
struct Reading {
    ctx: Arc<NodeContext>,
    /// This node's sessions waiting to be joined (the job came back).
    splices: Arc<super::splice::Waiting>,
    node: NodeId,
    count: u32,
    events: mpsc::Sender<Down>,
    switch: mpsc::Sender<Switch>,
}

impl Reading {
    async fn run(mut self, mut down: Incoming<Down>) {
        let mut view = self.ctx.watch_view();
        let mut ended = BTreeSet::new();
        let mut watching = true;
        let count = self.count;
        let reason = loop {
            tokio::select! {
                frame = down.frames.recv() => match frame.unwrap_or(Err(ProtoError::Closed)) {
                    Ok(Down::Rejoin { job: 0, node, token }) if count == 1 => {
                        match self.rejoin(node, token).await {
                            Ok(joined) => down = joined,
                            Err(why) => break why,
                        }
                    }
                    Ok(d) if d.job() < count => {
                        if d.ends_job() {
                            ended.insert(d.job());
                        }
                        if self.events.send(d).await.is_err() {
                            return;
                        }
                        if ended.len() as u32 == count {
                            return;
                        }
                    }
                    Ok(d) => break format!("sent an event for job {} of {count}", d.job()),
                    Err(krg_proto::ProtoError::Closed) => break "its krgd closed the session (krgd stopped or restarted); the job was killed with it".to_string(),
                    Err(e) => break format!("connection to its krgd lost ({e})"),
                },
                changed = view.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                        continue;
                    }
                    let check = is_alive(&view.borrow_and_update(), self.node);
                    if let Err(why) = check {
                        break why;
                    }
                }
            }
        };
        for job in (0..count).filter(|j| !ended.contains(j)) {
            let lost = Down::Lost {
                job,
                node: self.node,
                reason: reason.clone(),
            };
            if self.events.send(lost).await.is_err() {
                return;
            }
        }
    }

    /// The job moved on to `node`: end the old path (its last input),
    /// join the job's session there, and carry it from then on.
    async fn rejoin(&mut self, node: NodeId, token: u64) -> Result<Incoming<Down>, String> {
        let from = self.node;
        let (count_tx, count) = tokio::sync::oneshot::channel();
        let _ = self.switch.send(Switch::PathEnd(count_tx)).await;
        let sent = count
            .await
            .map_err(|_| "the session ended as it moved on".to_string())?;
        self.node = node;
        let (mut stream, mut keys) = if node == self.ctx.me.node {
            super::splice::join_here(self.splices.clone(), self.ctx.me)
                .await
                .map_err(|e| format!("the job came back; joining it here failed: {e}"))?
        } else {
            tokio::time::timeout(OPEN_TIMEOUT, connect(&self.ctx, node))
                .await
                .map_err(|_| {
                    format!("the job moved on to node {node}, which did not answer within {OPEN_TIMEOUT:?}")
                })?
                .map_err(|e| format!("the job moved on, and joining it there failed: {}", e.message))?
        };
        let join = PeerMessage {
            id: 0,
            body: PeerBody::Request(PeerRequest::Proc(ProcPeerRequest::JoinSession {
                token,
                sent,
            })),
        };
        let answer = async {
            keys.sealer.write(&mut stream, &join).await?;
            keys.opener.read::<PeerMessage, _>(&mut stream).await
        };
        let answer = tokio::time::timeout(OPEN_TIMEOUT, answer)
            .await
            .map_err(|_| {
                format!("node {node} did not take the job's session within {OPEN_TIMEOUT:?}")
            })?
            .map_err(|e| format!("joining the job's session on node {node}: {e}"))?;
        match answer.body {
            PeerBody::Response(PeerResponse::Proc(ProcPeerReply::Joined)) => {}
            PeerBody::Response(PeerResponse::Error(e)) => return Err(e.message),
            other => return Err(format!("node {node} answered {other:?} to a join")),
        }
        tracing::debug!(
            from,
            to = node,
            "joined a moved job's session where it runs now"
        );
        let (rd, wr) = stream.into_split();
        let joined = sealed::incoming::<Down>(rd, keys.opener);
        self.switch
            .send(Switch::To(Box::new(Outgoing::new(wr, keys.sealer))))
            .await
            .map_err(|_| "the session ended as it was joined".to_string())?;
        Ok(joined)
    }
}
