//! The events side of a session on other nodes: one reader per stream,
//! each passing its jobs' events on (numbered as the session numbers
//! them) until every job it carries ended or moved on, or its node is
//! lost — which ends only its own jobs ([`Down::Lost`]).
//!
//! A job that moves on from the node a stream reaches ([`Down::Rejoin`])
//! is joined where it runs now: a stream that carried it alone is
//! replaced by the joined one; a stream of several jobs goes on with the
//! others, and the joined stream gets a reader of its own.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use krg_proto::peer::{PeerBody, PeerMessage, PeerRequest, PeerResponse};
use krg_proto::proc::{Down, ProcPeerReply, ProcPeerRequest};
use krg_proto::{NodeId, ProtoError};
use tokio::sync::mpsc;

use super::super::liveness::is_alive;
use super::super::sealed::{self, drain, Incoming, Outgoing};
use super::input::{PathId, Switch};
use super::RunsOn;
use super::{connect, OPEN_TIMEOUT};
use crate::context::NodeContext;

/// What the readers of one session share.
#[derive(Clone)]
pub struct Shared {
    pub ctx: Arc<NodeContext>,
    /// This node's sessions waiting to be joined (a job came back).
    pub splices: Arc<crate::service::proc::splice::waiting::Waiting>,
    pub events: mpsc::Sender<Down>,
    pub switch: mpsc::Sender<Switch>,
    /// Held by the reader that switches the input to a joined stream,
    /// from its `PathEnd` to the joined stream (the input side waits for
    /// that reader's stream meanwhile).
    pub rejoining: Arc<tokio::sync::Mutex<()>>,
    /// Where the session's job runs (of a session of one job).
    pub runs_on: RunsOn,
    /// The next stream's id.
    pub next_path: Arc<AtomicU32>,
}

/// The reader of one stream.
pub struct Reading {
    pub shared: Shared,
    /// The node the stream reaches.
    pub node: NodeId,
    pub path: PathId,
    /// The session's number of each job of the stream (by its number
    /// there).
    pub jobs: Vec<u32>,
}

impl Reading {
    /// Read `down` (boxed: a reader starts the reader of a joined stream,
    /// a recursion the compiler cannot see `Send` through).
    pub fn run(self, down: Incoming<Down>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self.read(down))
    }

    async fn read(mut self, down: Incoming<Down>) {
        let (down, lost) = self.follow(down).await;
        tokio::spawn(drain(down));
        if let Some((reason, jobs)) = lost {
            for job in jobs {
                self.lost(job, reason.clone()).await;
            }
        }
    }

    /// Pass the stream's events on until its jobs ended or moved on (None),
    /// or it failed: why, and the session's jobs it leaves lost. The stream
    /// it ends on, to be drained (see [`drain`]).
    async fn follow(
        &mut self,
        mut down: Incoming<Down>,
    ) -> (Incoming<Down>, Option<(String, Vec<u32>)>) {
        let mut view = self.shared.ctx.watch_view();
        // jobs of this stream that ended, or that another stream carries
        let mut done = BTreeSet::new();
        let mut watching = true;
        let count = self.jobs.len() as u32;
        let reason = loop {
            tokio::select! {
                frame = down.frames.recv() => match frame.unwrap_or(Err(ProtoError::Closed)) {
                    Ok(Down::Rejoin { job, node, token }) if job < count => {
                        if count == 1 {
                            match self.rejoin(job, node, token, Some(self.path)).await {
                                Ok((_, joined)) => {
                                    tokio::spawn(drain(std::mem::replace(&mut down, joined)));
                                    self.node = node;
                                    self.shared.runs_on.set(node);
                                }
                                Err(why) => {
                                    self.node = node;
                                    break why;
                                }
                            }
                            continue;
                        }
                        done.insert(job);
                        self.split_off(job, node, token).await;
                        if done.len() as u32 == count {
                            return (down, None);
                        }
                    }
                    Ok(d) if d.job() < count => {
                        let here = d.job();
                        if d.ends_job() {
                            done.insert(here);
                        }
                        let d = d.renumbered(self.jobs[here as usize]);
                        if self.shared.events.send(d).await.is_err() || done.len() as u32 == count {
                            return (down, None);
                        }
                    }
                    Ok(d) => break format!("sent an event for job {} of {count}", d.job()),
                    Err(ProtoError::Closed) => break "its krgd closed the session (krgd stopped or restarted); the job was killed with it".to_string(),
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
        let left = (0..count).filter(|j| !done.contains(j));
        let jobs = left.map(|j| self.jobs[j as usize]).collect();
        (down, Some((reason, jobs)))
    }

    async fn lost(&self, job: u32, reason: String) {
        let node = self.node;
        let _ = self
            .shared
            .events
            .send(Down::Lost { job, node, reason })
            .await;
    }

    /// Job `here` of a stream of several moved on to `node`: join it there
    /// on a stream of its own, read by a reader of its own; the others
    /// stay on this one.
    async fn split_off(&self, here: u32, node: NodeId, token: u64) {
        let job = self.jobs[here as usize];
        match self.rejoin(here, node, token, None).await {
            Ok((path, joined)) => {
                let reading = Reading {
                    shared: self.shared.clone(),
                    node,
                    path,
                    jobs: vec![job],
                };
                tokio::spawn(reading.run(joined));
            }
            Err(why) => self.lost(job, why).await,
        }
    }

    /// Job `here` moved on to `node`: end its path through this stream
    /// (its last input), join its session there, and send the input on
    /// the joined stream from then on — in the place of stream `replaces`,
    /// or beside the others.
    async fn rejoin(
        &self,
        here: u32,
        node: NodeId,
        token: u64,
        replaces: Option<PathId>,
    ) -> Result<(PathId, Incoming<Down>), String> {
        let _one_at_a_time = self.shared.rejoining.lock().await;
        let (sent_tx, sent) = tokio::sync::oneshot::channel();
        let end = Switch::PathEnd {
            path: self.path,
            job: here,
            sent: sent_tx,
        };
        let _ = self.shared.switch.send(end).await;
        let sent = sent
            .await
            .map_err(|_| "the session ended as it moved on".to_string())?;
        // from here on the input waits for Joined or Failed
        let (rd, out) = match self.join(node, token, sent).await {
            Ok(joined) => joined,
            Err(why) => {
                let _ = self.shared.switch.send(Switch::Failed).await;
                return Err(why);
            }
        };
        let id = match replaces {
            Some(id) => id,
            None => self.shared.next_path.fetch_add(1, Ordering::SeqCst),
        };
        let out = Box::new(out);
        self.shared
            .switch
            .send(Switch::Joined { id, out, replaces })
            .await
            .map_err(|_| "the session ended as it was joined".to_string())?;
        tracing::debug!(
            from = self.node,
            to = node,
            "joined a moved job's session where it runs now"
        );
        Ok((id, rd))
    }

    /// A stream to `node` that joined the session `token` names, having
    /// sent `sent` bytes of stdin on the old path.
    async fn join(
        &self,
        node: NodeId,
        token: u64,
        sent: u64,
    ) -> Result<(Incoming<Down>, Outgoing), String> {
        let ctx = &self.shared.ctx;
        let (mut stream, mut keys) = if node == ctx.me.node {
            crate::service::proc::splice::join_here(self.shared.splices.clone(), ctx.me)
                .await
                .map_err(|e| format!("the job came back; joining it here failed: {e}"))?
        } else {
            tokio::time::timeout(OPEN_TIMEOUT, connect(ctx, node))
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
        let (rd, wr) = stream.into_split();
        let joined = sealed::incoming::<Down>(rd, keys.opener);
        Ok((joined, Outgoing::new(wr, keys.sealer)))
    }
}
