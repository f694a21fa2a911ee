//! The one thread that writes a node's Raft state to disk ([`disk`](super::disk)
//! formats). Every write goes through its queue, so writes reach the disk in
//! the order openraft issued them (its storage contract: vote and log I/O
//! are serialised). Log appends queued together share one `fdatasync`
//! (group commit); each append is acknowledged to openraft only after it.
//! It also knows how far the snapshot on disk reaches (the "floor" that a
//! purge of the log must not pass, see [`store`](super::store)).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use openraft::storage::LogFlushed;
use tokio::sync::{oneshot, watch};

use super::disk::{self, SmallFile, COMMITTED_FILE, LOG_FILE};
use super::raft_types::TypeConfig;
use crate::sync;

type Done = oneshot::Sender<io::Result<()>>;

/// A log fsync at least this long is logged (debug): on a shared or busy
/// disk it is what delays commits.
const SLOW_SYNC: Duration = Duration::from_millis(20);

enum Io {
    /// Append records to the log; `flushed` is told once they are durable.
    Append {
        bytes: Vec<u8>,
        flushed: Option<LogFlushed<TypeConfig>>,
    },
    /// Replace the whole log file (compaction).
    Rewrite { bytes: Vec<u8>, done: Done },
    /// Replace a small file.
    Small {
        kind: SmallFile,
        bytes: Vec<u8>,
        done: Option<Done>,
    },
    /// Finish what is queued, then stop.
    Close { done: Done },
}

/// Handle on the writer thread of one Raft directory.
pub struct Writer {
    tx: Mutex<Option<mpsc::Sender<Io>>>,
    /// Last log index covered by the snapshot file on disk (durable).
    snapshot_floor: watch::Sender<Option<u64>>,
}

fn closed() -> io::Error {
    io::Error::other("the Raft state directory is closed")
}

impl Writer {
    /// Start the thread for `dir` (which holds a valid log file); `synced`
    /// says whether the directory and its log are known to be on disk (read
    /// back at start-up) or were just created; `snapshot_floor` is the last
    /// log index the snapshot on disk covers.
    pub fn start(dir: PathBuf, synced: bool, snapshot_floor: Option<u64>) -> io::Result<Self> {
        let log = OpenOptions::new().append(true).open(dir.join(LOG_FILE))?;
        let (tx, rx) = mpsc::channel();
        let st = State {
            dir,
            log,
            synced,
            broken: None,
        };
        std::thread::Builder::new()
            .name("krgd-raft-disk".into())
            .spawn(move || run(st, rx))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            snapshot_floor: watch::Sender::new(snapshot_floor),
        })
    }

    /// A snapshot covering the log up to `index` is durable on disk (its
    /// [`write`](Self::write) returned).
    pub fn snapshot_durable(&self, index: u64) {
        self.snapshot_floor.send_if_modified(|floor| {
            let raise = floor.is_none_or(|f| f < index);
            if raise {
                *floor = Some(index);
            }
            raise
        });
    }

    /// Wait (at most `wait`) until a durable snapshot covers the log up to
    /// `index`; whether one does.
    pub async fn snapshot_covers(&self, index: u64, wait: Duration) -> bool {
        let mut rx = self.snapshot_floor.subscribe();
        let covered = tokio::time::timeout(wait, rx.wait_for(|f| f.is_some_and(|f| f >= index)))
            .await
            .is_ok_and(|r| r.is_ok());
        covered
    }

    fn send(&self, io: Io) -> Result<(), Io> {
        match sync::lock(&self.tx).as_ref() {
            Some(tx) => tx.send(io).map_err(|e| e.0),
            None => Err(io),
        }
    }

    /// Queue records for the log; `flushed` is called once they are on disk.
    pub fn append(&self, bytes: Vec<u8>, flushed: Option<LogFlushed<TypeConfig>>) {
        if let Err(Io::Append {
            flushed: Some(cb), ..
        }) = self.send(Io::Append { bytes, flushed })
        {
            cb.log_io_completed(Err(closed()));
        }
    }

    /// Replace the log file with `bytes` and wait until that is durable.
    pub async fn rewrite(&self, bytes: Vec<u8>) -> io::Result<()> {
        let (done, rx) = oneshot::channel();
        self.send(Io::Rewrite { bytes, done })
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Replace a small file and wait until that is durable.
    pub async fn write(&self, kind: SmallFile, bytes: Vec<u8>) -> io::Result<()> {
        let (done, rx) = oneshot::channel();
        self.send(Io::Small {
            kind,
            bytes,
            done: Some(done),
        })
        .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Replace a small file without waiting (its order among writes is kept).
    pub fn write_later(&self, kind: SmallFile, bytes: Vec<u8>) {
        let _ = self.send(Io::Small {
            kind,
            bytes,
            done: None,
        });
    }

    /// Let every queued write finish, then stop the thread: nothing is
    /// written to the directory afterwards.
    pub async fn close(&self) {
        let tx = sync::lock(&self.tx).take();
        if let Some(tx) = tx {
            let (done, rx) = oneshot::channel();
            if tx.send(Io::Close { done }).is_ok() {
                let _ = rx.await;
            }
        }
    }
}

/// What the thread keeps between batches.
struct State {
    dir: PathBuf,
    log: File,
    /// The log file and the directory entries leading to it are durable.
    synced: bool,
    /// Set after a failed write: the file may hold a partial record, so
    /// every later write fails too (openraft then stops this Raft instance).
    broken: Option<String>,
}

impl State {
    /// Fail if an earlier write failed; else make sure the directory made
    /// by the welcome is durable before anything is acknowledged.
    fn check(&mut self) -> io::Result<()> {
        if let Some(why) = &self.broken {
            return Err(io::Error::other(why.clone()));
        }
        if !self.synced {
            self.log.sync_all()?;
            disk::sync_dir(&self.dir)?;
            if let Some(parent) = self.dir.parent() {
                disk::sync_dir(parent)?;
            }
            self.synced = true;
        }
        Ok(())
    }

    fn fail(&mut self, e: io::Error) -> io::Error {
        tracing::error!(dir = %self.dir.display(), error = %e, "writing the Raft state failed");
        self.broken = Some(format!(
            "an earlier write to {} failed: {e}",
            self.dir.display()
        ));
        e
    }
}

fn run(mut st: State, rx: mpsc::Receiver<Io>) {
    // A fresh directory is synced at once, while the leader is still busy
    // with the other newcomers, rather than on the first append.
    if let Err(e) = st.check() {
        st.fail(e);
    }
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let mut waiting: Vec<LogFlushed<TypeConfig>> = Vec::new();
        let mut appended = false;
        // The committed log id queued last in this batch: written once, after
        // the batch's appends are durable (so never ahead of the log here).
        let mut committed: Option<Vec<u8>> = None;
        for io in batch {
            match io {
                Io::Small {
                    kind: SmallFile::Committed,
                    bytes,
                    done: None,
                } => committed = Some(bytes),
                Io::Append { bytes, flushed } => {
                    let r = match st.broken.as_ref() {
                        Some(why) => Err(io::Error::other(why.clone())),
                        None => st.log.write_all(&bytes),
                    };
                    if let Err(e) = r {
                        let e = st.fail(e);
                        finish(&mut waiting, Err(io::Error::new(e.kind(), e.to_string())));
                        if let Some(cb) = flushed {
                            cb.log_io_completed(Err(e));
                        }
                        continue;
                    }
                    appended = true;
                    waiting.extend(flushed);
                }
                other => {
                    // Earlier appends are durable before anything after them.
                    flush(&mut st, &mut waiting, &mut appended);
                    if let Io::Close { done } = other {
                        write_committed(&mut st, committed.take());
                        let _ = done.send(Ok(()));
                        return;
                    }
                    other_io(&mut st, other);
                }
            }
        }
        flush(&mut st, &mut waiting, &mut appended);
        write_committed(&mut st, committed);
    }
}

/// Replace the committed log id (a hint, see [`disk`]): one fsync, no
/// directory fsync, so that it costs the appends behind it little.
fn write_committed(st: &mut State, bytes: Option<Vec<u8>>) {
    let Some(bytes) = bytes else {
        return;
    };
    let r = st
        .check()
        .and_then(|()| disk::write_replace(&st.dir, SmallFile::Committed.name(), &bytes));
    if let Err(e) = r {
        tracing::error!(dir = %st.dir.display(), file = COMMITTED_FILE, error = %e,
            "writing the Raft state failed");
    }
}

fn flush(st: &mut State, waiting: &mut Vec<LogFlushed<TypeConfig>>, appended: &mut bool) {
    if !std::mem::take(appended) {
        return finish(waiting, Ok(()));
    }
    let started = std::time::Instant::now();
    let r = st.check().and_then(|()| st.log.sync_data());
    let took = started.elapsed();
    // A follower answers AppendEntries only after this: past a Raft
    // heartbeat, the leader sends them again (see `network::retry_now`).
    if took >= SLOW_SYNC {
        tracing::debug!(?took, dir = %st.dir.display(), "slow fdatasync of the Raft log");
    }
    match r {
        Ok(()) => finish(waiting, Ok(())),
        Err(e) => {
            let e = st.fail(e);
            finish(waiting, Err(e));
        }
    }
}

fn finish(waiting: &mut Vec<LogFlushed<TypeConfig>>, r: io::Result<()>) {
    for cb in waiting.drain(..) {
        let r = match &r {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        cb.log_io_completed(r);
    }
}

fn other_io(st: &mut State, io: Io) {
    match io {
        Io::Rewrite { bytes, done } => {
            let r = st.check().and_then(|()| rewrite(st, &bytes));
            let r = r.map_err(|e| st.fail(e));
            let _ = done.send(r);
        }
        Io::Small { kind, bytes, done } => {
            let r = st
                .check()
                .and_then(|()| disk::write_atomic(&st.dir, kind.name(), &bytes));
            if let Err(e) = &r {
                tracing::error!(dir = %st.dir.display(), file = kind.name(), error = %e,
                    "writing the Raft state failed");
            }
            if let Some(done) = done {
                let _ = done.send(r);
            }
        }
        Io::Append { .. } | Io::Close { .. } => {}
    }
}

fn rewrite(st: &mut State, bytes: &[u8]) -> io::Result<()> {
    disk::write_atomic(&st.dir, LOG_FILE, bytes)?;
    st.log = OpenOptions::new()
        .append(true)
        .open(st.dir.join(LOG_FILE))?;
    Ok(())
}
