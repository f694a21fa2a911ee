//! The input side of a session on other nodes: every [`Up`] frame goes
//! out on each of the session's streams — the one it opened with, and
//! one per job joined where it moved on (see *Splicing* in
//! `krg_proto::proc`). A job takes the stream's stdin whichever way it
//! comes, so each stream carries all of it.

use krg_proto::proc::Up;
use tokio::sync::{mpsc, oneshot};

use super::super::sealed::Outgoing;

/// Names one of a session's streams (0: the one it opened with).
pub type PathId = u32;

/// A change of path for the input, from a stream's reader (one at a time:
/// see [`super::reading::Reading`]): the last word on the old stream for
/// a job, then the job's joined stream.
pub enum Switch {
    /// Send `PathEnd { job }` on stream `path`, and say how many bytes of
    /// stdin went out so far. Nothing more goes out until the joined
    /// stream comes ([`Switch::Joined`]) or does not ([`Switch::Failed`]).
    PathEnd {
        path: PathId,
        job: u32,
        sent: oneshot::Sender<u64>,
    },
    /// The job's joined stream, `id`. It replaces stream `replaces` (which
    /// carried that job alone), or goes beside the others.
    Joined {
        id: PathId,
        out: Box<Outgoing>,
        replaces: Option<PathId>,
    },
    /// The job could not be joined: its old stream no longer carries it.
    Failed,
}

/// Send the session's input on every stream until it is dropped (then
/// close them all: the targets kill the session's jobs) or every stream
/// broke.
pub async fn write_up(
    first: Outgoing,
    mut rx: mpsc::Receiver<Up>,
    mut switch: mpsc::Receiver<Switch>,
) {
    let mut paths: Vec<(PathId, Outgoing)> = vec![(0, first)];
    let mut switching = true;
    // (on every stream alike: the count a splice's target rebases on)
    let mut stdin_sent = 0u64;
    loop {
        tokio::select! {
            biased;
            sw = switch.recv(), if switching => match sw {
                Some(Switch::PathEnd { path, job, sent }) => {
                    if let Some((_, wr)) = paths.iter_mut().find(|(id, _)| *id == path) {
                        let r = wr.send(&Up::PathEnd { job }).await;
                        tracing::debug!(path, job, ok = r.is_ok(), "the last word on a stream for a job");
                    }
                    let _ = sent.send(stdin_sent);
                    // what comes meanwhile waits for the joined stream
                    match switch.recv().await {
                        Some(Switch::Joined { id, out, replaces }) => {
                            if let Some(i) = paths.iter().position(|(p, _)| Some(*p) == replaces) {
                                paths.swap_remove(i).1.shutdown().await;
                            }
                            paths.push((id, *out));
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
                Some(_) => {}
                None => switching = false,
            },
            up = rx.recv() => match up {
                Some(up) => {
                    if let Up::Stdin(data) = &up {
                        stdin_sent += data.len() as u64;
                    }
                    if !send_on_all(&mut paths, &up).await {
                        return;
                    }
                }
                None => break,
            },
        }
    }
    // Input gone: the session is abandoned, and the targets kill its jobs.
    for (_, wr) in paths {
        wr.shutdown().await;
    }
}

/// Send `up` on every stream; a stream that broke is dropped (its reader
/// reports its jobs lost). False once none is left.
async fn send_on_all(paths: &mut Vec<(PathId, Outgoing)>, up: &Up) -> bool {
    let mut i = 0;
    while i < paths.len() {
        if paths[i].1.send(up).await.is_err() {
            paths.swap_remove(i);
        } else {
            i += 1;
        }
    }
    !paths.is_empty()
}
