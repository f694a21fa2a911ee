//! The input side of a session carried on a stream: frames into the
//! session until the origin leaves or fails. A session of one job (here:
//! one that moved in) may be spliced: its `Up::Splice` goes to the carrier's loop, and once that
//! old path ended (its `Up::PathEnd`, or its end) the reader says how
//! many bytes of stdin it brought and goes on with the joined stream.

use std::sync::Arc;

use krg_proto::cluster::NodeState;
use krg_proto::proc::Up;
use krg_proto::NodeId;
use tokio::sync::{mpsc, oneshot};

use super::super::sealed::{drain, Incoming};
use super::super::state::ProcState;

/// The joined stream's input, and who joined.
pub type Switch = (Incoming<Up>, NodeId);

/// How the old path of a spliced session ended.
#[derive(Debug, Clone, Copy)]
pub struct OldPath {
    /// Bytes of stdin it brought in all.
    pub stdin: u64,
    /// Whether it ended with its relay's `PathEnd` (else its stream broke:
    /// what the relay still held is lost).
    pub clean: bool,
}

pub struct Reader {
    /// The node.
    pub st: Arc<ProcState>,
    /// The session's input.
    pub input: mpsc::Sender<Up>,
    /// Whose stream it reads.
    pub origin: NodeId,
    /// Whether `origin` is a node whose failure ends the session.
    pub watching: bool,
    /// How many jobs the session has.
    pub jobs: u32,
    /// Where a splice asked for goes (None: not this session).
    pub splice: Option<mpsc::Sender<(u64, NodeId)>>,
    /// The joined stream, once there is one.
    pub switch: Option<oneshot::Receiver<Switch>>,
    /// Told how the old path ended, when it did.
    pub old_end: Option<oneshot::Sender<OldPath>>,
}

impl Reader {
    /// Read until the end: true when the origin is gone, false when the
    /// session ended.
    pub async fn run(mut self, mut up: Incoming<Up>) -> bool {
        let mut view = self.st.ctx.watch_view();
        let mut spliced = false;
        let mut stdin_in = 0u64;
        // the carrier said its last word here for every job (they moved
        // on and it joined them there): its stream's end is no origin lost
        let mut farewells = std::collections::BTreeSet::new();
        let mut farewell = false;
        loop {
            tokio::select! {
                frame = up.frames.recv() => {
                    // Some(whether it ended with its last word) once the
                    // old path is over
                    if let Some(Ok(f @ (Up::Splice { .. } | Up::PathEnd { .. }))) = &frame {
                        tracing::debug!(?f, spliced, origin = self.origin, "a carried session's marker");
                    }
                    let old_path_over = match frame {
                        Some(Ok(Up::Splice { token, joiner })) => {
                            if let Some(tx) = self.splice.take() {
                                spliced = tx.send((token, joiner)).await.is_ok();
                            }
                            // (the session records its next carrier)
                            if self.input.send(Up::Splice { token, joiner }).await.is_err() {
                                drain(up).await;
                                return false;
                            }
                            None
                        }
                        // the end of the path through the relay of the
                        // node the job left; not spliced here, the
                        // carrier's last word to a job that moved on
                        Some(Ok(Up::PathEnd { .. })) if spliced => Some(true),
                        Some(Ok(frame)) => {
                            match &frame {
                                Up::Stdin(data) => stdin_in += data.len() as u64,
                                Up::PathEnd { job } => {
                                    farewells.insert(*job);
                                    farewell = farewells.len() as u32 >= self.jobs;
                                }
                                _ => {}
                            }
                            if self.input.send(frame).await.is_err() {
                                // the session ended: the origin closes
                                // once it read that end
                                drain(up).await;
                                return false;
                            }
                            None
                        }
                        // the node it left may die once it passed the
                        // job on: the joined stream goes on
                        Some(Err(_)) | None if spliced => Some(false),
                        Some(Err(_)) | None => return !farewell,
                    };
                    if let Some(clean) = old_path_over {
                        if let Some(told) = self.old_end.take() {
                            let _ = told.send(OldPath { stdin: stdin_in, clean });
                        }
                        let Some(switch) = self.switch.take() else { return true };
                        let Ok((joined, node)) = switch.await else { return true };
                        (up, self.origin, spliced) = (joined, node, false);
                    }
                }
                changed = view.changed(), if self.watching => {
                    if changed.is_err() {
                        self.watching = false;
                        continue;
                    }
                    let failed = matches!(
                        view.borrow_and_update().node(self.origin).map(|n| n.state),
                        Some(NodeState::Failed)
                    );
                    if failed && !spliced && !farewell {
                        tracing::info!(origin = self.origin, "origin node failed: ending its session");
                        return true;
                    }
                }
            }
        }
    }
}
