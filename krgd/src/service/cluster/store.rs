//! Raft storage for the cluster state: the log, vote and committed index
//! on disk under `<data-dir>/raft/` ([`disk`](super::disk) formats, written
//! by one [`Writer`] thread), mirrored in memory for reads; the state
//! machine in memory, made durable by snapshots.
//!
//! At start-up the state machine is the last snapshot, and openraft
//! re-applies the log up to the saved committed index: a node that restarts
//! reports its cluster's members and epoch at once, and votes only in terms
//! after the one it saved.
//!
//! # Durability order
//!
//! The invariant, true after a `kill -9` at any point: every log index below
//! the first entry in the `log` file is covered by the `snapshot` file
//! (and `committed` never names an entry that is in neither). It holds
//! because the writes reach the disk in this order:
//!
//! 1. A snapshot is durable (temp file, fsync, rename, directory fsync)
//!    before the log it covers is purged. openraft 0.9 does not order the
//!    two: on a follower it hands the leader's snapshot to the state-machine
//!    task and issues the purge of the log it covers at once, without
//!    waiting. So [`LogStore::purge`] waits until the [`Writer`] reports a
//!    durable snapshot reaching the purged index (written by
//!    [`StateMachine`]'s build or install), and only then queues the
//!    `Purged` record (or the compacted log). openraft's core waits for the
//!    purge, so no entry after the purged range is queued before it.
//! 2. An append must continue the log: its first entry follows the last
//!    entry held (or the purged index). A batch that would leave a hole is
//!    refused before anything is written (openraft checks this only with
//!    debug assertions; a leader whose log store skipped purged entries once
//!    shipped such a batch to a node that had lost its log).
//! 3. Reads return only a run of entries starting at the index asked for:
//!    never entries after a purged hole.
//! 4. Appends are acknowledged after their `fdatasync`; `committed` is
//!    written after the appends queued with it are durable; a vote is
//!    durable before it is answered.
//!
//! A directory that breaks the invariant anyway (written by an older krgd)
//! is refused at start-up with one line saying what to do
//! ([`disk::load`]).

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::disk::{self, LogImage, LogRecord, SmallFile, StoredSnapshot};
use super::raft_types::{RaftNodeId, TypeConfig};
use super::state::{ClusterState, CommandResult};
use super::writer::Writer;
use crate::sync;

type StorageResult<T> = Result<T, StorageError<RaftNodeId>>;

/// How long a purge waits for the snapshot that covers it to be durable
/// (the state-machine task writes it; that takes milliseconds).
const PURGE_WAIT: Duration = Duration::from_secs(20);

fn io_error(
    subject: ErrorSubject<RaftNodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<RaftNodeId> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

struct LogData {
    vote: Option<Vote<RaftNodeId>>,
    committed: Option<LogId<RaftNodeId>>,
    log: LogImage,
}

/// The Raft log. Cloning shares the same log (the reader handed to
/// replication tasks is a clone).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogData>>,
    disk: Arc<Writer>,
    /// The cluster's uid, which heads the log file.
    uid: u64,
}

impl LogStore {
    /// The log as read back from disk (or empty), written through `disk`.
    pub fn new(
        disk: Arc<Writer>,
        uid: u64,
        vote: Option<Vote<RaftNodeId>>,
        committed: Option<LogId<RaftNodeId>>,
        log: LogImage,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LogData {
                vote,
                committed,
                log,
            })),
            disk,
            uid,
        }
    }

    /// Check that `entries` continue the log (durability order (2)), apply
    /// them in memory and return their records, ready to append.
    fn stage_append(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> Result<Vec<u8>, Box<StorageError<RaftNodeId>>> {
        let mut data = sync::lock(&self.inner);
        let mut bytes = Vec::new();
        let mut staged = Vec::new();
        for (next, e) in (data.log.next_index()..).zip(entries) {
            if e.log_id.index != next {
                tracing::error!(
                    entry = e.log_id.index,
                    expected = next,
                    "refusing entries that would leave a hole in the Raft log; \
                     stopping this Raft instance"
                );
                return Err(Box::new(io_error(
                    ErrorSubject::Log(e.log_id),
                    ErrorVerb::Write,
                    std::io::Error::other(format!(
                        "refusing to append entry {} where entry {next} belongs: \
                         the log would have a hole that no snapshot covers",
                        e.log_id.index
                    )),
                )));
            }
            let record = disk::encode_entry(&e)
                .map_err(|err| io_error(ErrorSubject::Logs, ErrorVerb::Write, err))?;
            bytes.extend(record);
            staged.push(e);
        }
        for e in staged {
            data.log.apply(LogRecord::Entry(e));
        }
        Ok(bytes)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let data = sync::lock(&self.inner);
        Ok(data.log.run(range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let data = sync::lock(&self.inner);
        let last = data
            .log
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(data.log.last_purged);
        Ok(LogState {
            last_purged_log_id: data.log.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftNodeId>) -> StorageResult<()> {
        let bytes = disk::small_file(SmallFile::Vote, vote)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        // Durable before openraft answers with this vote.
        self.disk
            .write(SmallFile::Vote, bytes)
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        sync::lock(&self.inner).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<RaftNodeId>>> {
        Ok(sync::lock(&self.inner).vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<RaftNodeId>>) -> StorageResult<()> {
        // The file holds a log id (what `disk::load` reads back): nothing
        // committed yet is no file.
        let Some(log_id) = committed else {
            return Ok(());
        };
        let bytes = disk::small_file(SmallFile::Committed, &log_id)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        // Queued after the appends it covers, so the file never names an
        // entry that is not durable; a crash before it is written only makes
        // the restarted node re-learn the commit index from the leader.
        self.disk.write_later(SmallFile::Committed, bytes);
        sync::lock(&self.inner).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<RaftNodeId>>> {
        Ok(sync::lock(&self.inner).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
    {
        let bytes = self.stage_append(entries).map_err(|e| *e)?;
        // Readable now; acknowledged to openraft once fdatasync'ed.
        self.disk.append(bytes, Some(callback));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<RaftNodeId>) -> StorageResult<()> {
        let rec = LogRecord::Truncate(log_id.index);
        let bytes = disk::encode_record(&rec)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        sync::lock(&self.inner).log.apply(rec);
        // Durable with the append that always follows a truncation.
        self.disk.append(bytes, None);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<RaftNodeId>) -> StorageResult<()> {
        // Durability order (1): the snapshot first.
        if !self.disk.snapshot_covers(log_id.index, PURGE_WAIT).await {
            tracing::error!(
                upto = log_id.index,
                "no snapshot on disk covers the log to purge; stopping this Raft instance"
            );
            return Err(io_error(
                ErrorSubject::Logs,
                ErrorVerb::Delete,
                std::io::Error::other(format!(
                    "no snapshot on disk covers the log up to entry {} after {} s: the log is kept",
                    log_id.index,
                    PURGE_WAIT.as_secs()
                )),
            ));
        }
        let rec = LogRecord::Purged(log_id);
        let bytes = disk::encode_record(&rec)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        let compacted = {
            let mut data = sync::lock(&self.inner);
            data.log.apply(rec);
            // Compact when dead records outnumber live ones.
            if data.log.records > 2 * data.log.entries.len() + 256 {
                let file = data
                    .log
                    .encode_file(self.uid)
                    .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
                data.log.records = data.log.entries.len() + 1;
                Some(file)
            } else {
                None
            }
        };
        match compacted {
            Some(file) => self
                .disk
                .rewrite(file)
                .await
                .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e)),
            None => {
                self.disk.append(bytes, None);
                Ok(())
            }
        }
    }
}

/// What a snapshot holds: the whole state and the Raft membership with it.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    state: ClusterState,
}

/// The state as snapshots held it before placements: the same fields
/// without the trailing placement table (postcard is positional, so such a
/// snapshot fails to decode as the current body — it ends too early — and
/// decodes as this instead).
#[derive(Deserialize)]
struct StateBeforePlacements {
    uid: u64,
    epoch: u64,
    members: std::collections::BTreeMap<krg_proto::NodeId, super::state::MemberRecord>,
    dissolved: bool,
    owners: super::owners::Owners,
}

/// The state as snapshots held it before node ownership.
#[derive(Deserialize)]
struct StateBeforeOwners {
    uid: u64,
    epoch: u64,
    members: std::collections::BTreeMap<krg_proto::NodeId, super::state::MemberRecord>,
    dissolved: bool,
}

/// Decode a snapshot body, of this version or an older one.
fn decode_body(bytes: &[u8]) -> Result<SnapshotBody, postcard::Error> {
    let current = postcard::from_bytes::<SnapshotBody>(bytes);
    let state = match current {
        Ok(body) => return Ok(body),
        Err(e) => match postcard::from_bytes::<StateBeforePlacements>(bytes) {
            Ok(old) => ClusterState {
                uid: old.uid,
                epoch: old.epoch,
                members: old.members,
                dissolved: old.dissolved,
                owners: old.owners,
                placements: Default::default(),
            },
            Err(_) => {
                let old: StateBeforeOwners = postcard::from_bytes(bytes).map_err(|_| e)?;
                ClusterState {
                    uid: old.uid,
                    epoch: old.epoch,
                    members: old.members,
                    dissolved: old.dissolved,
                    ..Default::default()
                }
            }
        },
    };
    Ok(SnapshotBody { state })
}

#[derive(Default)]
struct MachineData {
    last_applied: Option<LogId<RaftNodeId>>,
    membership: StoredMembership<RaftNodeId, openraft::BasicNode>,
    state: ClusterState,
    snapshot: Option<StoredSnapshot>,
    snapshot_seq: u64,
}

/// The state machine. Every applied change is published on a watch channel
/// so the membership service can react (update views, leave on removal).
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<MachineData>>,
    published: watch::Sender<ClusterState>,
    disk: Arc<Writer>,
}

impl StateMachine {
    /// The state of `snapshot` (read back from disk), or an empty one.
    pub fn new(
        disk: Arc<Writer>,
        snapshot: Option<StoredSnapshot>,
    ) -> Result<(Self, watch::Receiver<ClusterState>), postcard::Error> {
        let mut data = MachineData::default();
        if let Some((meta, bytes)) = snapshot {
            let body = decode_body(&bytes)?;
            data.last_applied = meta.last_log_id;
            data.membership = meta.last_membership.clone();
            data.state = body.state;
            data.snapshot = Some((meta, bytes));
        }
        let (tx, rx) = watch::channel(data.state.clone());
        Ok((
            Self {
                inner: Arc::new(Mutex::new(data)),
                published: tx,
                disk,
            },
            rx,
        ))
    }

    fn publish(&self, state: &ClusterState) {
        self.published.send_replace(state.clone());
    }

    /// Make `snapshot` the one on disk (atomically replacing the previous one).
    async fn persist(&self, snapshot: &StoredSnapshot) -> StorageResult<()> {
        let subject = || ErrorSubject::Snapshot(Some(snapshot.0.signature()));
        let bytes = disk::small_file(SmallFile::Snapshot, snapshot)
            .map_err(|e| io_error(subject(), ErrorVerb::Write, e))?;
        self.disk
            .write(SmallFile::Snapshot, bytes)
            .await
            .map_err(|e| io_error(subject(), ErrorVerb::Write, e))?;
        // Purges up to here may now reach the disk (durability order (1)).
        if let Some(last) = snapshot.0.last_log_id {
            self.disk.snapshot_durable(last.index);
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (meta, body) = {
            let mut data = sync::lock(&self.inner);
            let body = postcard::to_stdvec(&SnapshotBody {
                state: data.state.clone(),
            })
            .map_err(|e| StorageIOError::write_snapshot(None, AnyError::error(e)))?;
            data.snapshot_seq += 1;
            let snapshot_id = format!(
                "{}-{}",
                data.last_applied.map(|l| l.index).unwrap_or_default(),
                data.snapshot_seq
            );
            let meta = SnapshotMeta {
                last_log_id: data.last_applied,
                last_membership: data.membership.clone(),
                snapshot_id,
            };
            (meta, body)
        };
        // On disk before openraft purges the log it covers.
        let stored = (meta.clone(), body.clone());
        self.persist(&stored).await?;
        sync::lock(&self.inner).snapshot = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(body)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<RaftNodeId>>,
        StoredMembership<RaftNodeId, openraft::BasicNode>,
    )> {
        let data = sync::lock(&self.inner);
        Ok((data.last_applied, data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
    {
        let mut results = Vec::new();
        let snapshot = {
            let mut data = sync::lock(&self.inner);
            for entry in entries {
                data.last_applied = Some(entry.log_id);
                let result = match &entry.payload {
                    EntryPayload::Blank => CommandResult {
                        epoch: data.state.epoch,
                        ..Default::default()
                    },
                    EntryPayload::Normal(cmd) => data.state.apply(cmd),
                    EntryPayload::Membership(m) => {
                        data.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        CommandResult {
                            epoch: data.state.epoch,
                            ..Default::default()
                        }
                    }
                };
                results.push(result);
            }
            data.state.clone()
        };
        self.publish(&snapshot);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftNodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let body = decode_body(&bytes).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e))
        })?;
        let stored = (meta.clone(), bytes);
        self.persist(&stored).await?;
        let state = {
            let mut data = sync::lock(&self.inner);
            data.last_applied = meta.last_log_id;
            data.membership = meta.last_membership.clone();
            data.state = body.state;
            data.snapshot = Some(stored);
            data.state.clone()
        };
        self.publish(&state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let data = sync::lock(&self.inner);
        Ok(data.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}

#[cfg(test)]
mod tests;
