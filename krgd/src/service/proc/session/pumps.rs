//! A session's pumps: each job's output into events, its queued input
//! into its stdin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use krg_proto::proc::Down;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use super::super::fdio::read_now;
use super::super::heldio::{FlushRequest, StdinCtl};
use super::super::pty::Pty;
use super::super::table::JobEntry;

/// Read a pipe until its end (or until told to close it) into events;
/// asked to flush ([`FlushRequest`]), send on what it holds now first.
pub(super) async fn pump_out(
    job: u32,
    mut from: pipe::Receiver,
    events: mpsc::Sender<Down>,
    mut close: Option<oneshot::Receiver<()>>,
    stdout: bool,
    mut flush: mpsc::UnboundedReceiver<FlushRequest>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let event = |data: &[u8]| {
        let data = data.to_vec();
        if stdout {
            Down::Stdout { job, data }
        } else {
            Down::Stderr { job, data }
        }
    };
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => r,
            // dropping `from` closes the pipe: the job's next write gets SIGPIPE
            _ = told_to_close(&mut close) => return,
            Some(done) = flush.recv() => {
                let ended = loop {
                    match read_now(&from, &mut buf) {
                        Ok(0) => break true,
                        Ok(n) => {
                            if events.send(event(&buf[..n])).await.is_err() {
                                break true;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break e.kind() != std::io::ErrorKind::WouldBlock,
                    }
                };
                let _ = done.send(());
                if ended {
                    return;
                }
                continue;
            }
        };
        let n = match n {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if events.send(event(&buf[..n])).await.is_err() {
            return;
        }
    }
}

/// Resolves when `close` is told (or its sender dropped); never without one.
async fn told_to_close(close: &mut Option<oneshot::Receiver<()>>) {
    match close {
        Some(c) => {
            let _ = c.await;
        }
        None => std::future::pending().await,
    }
}

/// Read a job's terminal into events until it ends, or until told to
/// close it, or — told to flush (its job moved on and its relay here wrote
/// its last output) — until it holds nothing more.
pub(super) async fn pump_pty(
    job: u32,
    pty: Arc<Pty>,
    events: mpsc::Sender<Down>,
    mut close: oneshot::Receiver<()>,
    mut flush: oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut flushing, mut waiting) = (false, true);
    loop {
        let n = if flushing {
            // WouldBlock: nothing more
            pty.read_now(&mut buf)
        } else {
            tokio::select! {
                r = pty.read(&mut buf) => r,
                _ = &mut close => return,
                told = &mut flush, if waiting => {
                    (waiting, flushing) = (false, told.is_ok());
                    continue;
                }
            }
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if events
                    .send(Down::Stdout {
                        job,
                        data: buf[..n].to_vec(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Start the thread that writes a push job's stdin (see `pushfile`);
/// false if it could not start (the job then sees its stdin end at once).
pub(super) fn push_stdin(
    job: u32,
    sock: std::os::unix::net::UnixStream,
    entry: &JobEntry,
    chunks: mpsc::UnboundedReceiver<Bytes>,
    queued: &Arc<AtomicU64>,
    events: &mpsc::Sender<Down>,
) -> bool {
    let started =
        super::super::pushfile::writer::start(super::super::pushfile::writer::PushStdin {
            job,
            sock,
            uid: entry.uid,
            gid: entry.gid,
            chunks,
            queued: queued.clone(),
            events: events.clone(),
        });
    if let Err(e) = &started {
        tracing::warn!(error = %e, "cannot start a push job's writer");
    }
    started.is_ok()
}

pub(super) enum Sink {
    Pipe(tokio::net::unix::pipe::Sender),
    Pty(Arc<Pty>),
}

/// Write queued stdin into the job, acknowledging every chunk (also those
/// dropped because the job closed its stdin, so the sender's window moves).
/// What was queued is written even once nobody reads the acknowledgements
/// (the session ended): a job that moved on is joined where it runs, and
/// its relay here passes on what its carrier sent before (see `splice`).
/// `ctl` puts bytes in first that were acknowledged already (a held
/// part's unread input, given back) and answers when all queued so far
/// is written (see `heldio`).
pub(super) async fn pump_in(
    job: u32,
    sink: Sink,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    mut ctl: mpsc::UnboundedReceiver<StdinCtl>,
    queued: Arc<AtomicU64>,
    events: mpsc::Sender<Down>,
) {
    let mut sink = Some(sink);
    let mut total = 0u64;
    loop {
        let chunk = tokio::select! {
            biased;
            Some(c) = ctl.recv() => match c {
                StdinCtl::Refill(data) => {
                    write_in(&mut sink, &data).await;
                    continue;
                }
                StdinCtl::Drain(done) => {
                    // (only what is queued now: more may come meanwhile)
                    for _ in 0..rx.len() {
                        let Ok(chunk) = rx.try_recv() else { break };
                        queued.fetch_sub(chunk.len() as u64, Ordering::SeqCst);
                        write_in(&mut sink, &chunk).await;
                        total = acknowledged(job, chunk.len(), total, &events).await;
                    }
                    let _ = done.send(());
                    continue;
                }
            },
            c = rx.recv() => match c {
                Some(c) => c,
                None => return,
            },
        };
        queued.fetch_sub(chunk.len() as u64, Ordering::SeqCst);
        write_in(&mut sink, &chunk).await;
        total = acknowledged(job, chunk.len(), total, &events).await;
    }
}

/// Write `data` into the job's stdin, unless it is closed (then from now
/// on nothing is).
async fn write_in(sink: &mut Option<Sink>, data: &[u8]) {
    let ok = match sink {
        Some(Sink::Pipe(w)) => w.write_all(data).await.is_ok(),
        Some(Sink::Pty(p)) => p.write_all(data).await.is_ok(),
        None => true,
    };
    if !ok {
        *sink = None;
    }
}

/// `len` more bytes taken: the new total, told to the sender.
async fn acknowledged(job: u32, len: usize, total: u64, events: &mpsc::Sender<Down>) -> u64 {
    let total = total + len as u64;
    let _ = events.send(Down::StdinAck { job, bytes: total }).await;
    total
}
