//! A session's pumps: each job's output into events, its queued input
//! into its stdin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use krg_proto::proc::Down;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::super::pty::Pty;
use super::super::table::JobEntry;

/// Read a pipe until its end (or until told to close it) into events.
pub(super) async fn pump_out(
    job: u32,
    mut from: impl AsyncRead + Unpin,
    events: mpsc::Sender<Down>,
    close: Option<oneshot::Receiver<()>>,
    stdout: bool,
) {
    let mut close = close;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match &mut close {
            Some(c) => tokio::select! {
                r = from.read(&mut buf) => r,
                _ = c => return, // dropping `from` closes the pipe: the job's next write gets SIGPIPE
            },
            None => from.read(&mut buf).await,
        };
        let n = match n {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let data = buf[..n].to_vec();
        let ev = if stdout {
            Down::Stdout { job, data }
        } else {
            Down::Stderr { job, data }
        };
        if events.send(ev).await.is_err() {
            return;
        }
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
pub(super) async fn pump_in(
    job: u32,
    sink: Sink,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicU64>,
    events: mpsc::Sender<Down>,
) {
    let mut sink = Some(sink);
    let mut total = 0u64;
    while let Some(chunk) = rx.recv().await {
        queued.fetch_sub(chunk.len() as u64, Ordering::SeqCst);
        let ok = match &mut sink {
            Some(Sink::Pipe(w)) => w.write_all(&chunk).await.is_ok(),
            Some(Sink::Pty(p)) => p.write_all(&chunk).await.is_ok(),
            None => true,
        };
        if !ok {
            sink = None;
        }
        total += chunk.len() as u64;
        let _ = events.send(Down::StdinAck { job, bytes: total }).await;
    }
}
