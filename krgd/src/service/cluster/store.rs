//! Raft storage for the cluster state, kept in memory.
//!
//! A krgd that restarts starts with an empty log on purpose: LinuxSSI nodes
//! that reboot come back as *present* and are re-added by the administrator.
//! A node only takes part in Raft (and so only votes) after it has been
//! welcomed into a cluster, so a restarted node can never cast a second vote
//! in a term it voted in before its crash.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::state::{ClusterCommand, ClusterState, CommandResult};
use crate::sync;

openraft::declare_raft_types!(
    /// Raft types of the cluster membership group.
    pub TypeConfig:
        D = ClusterCommand,
        R = CommandResult,
);

pub type RaftNodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
type StorageResult<T> = Result<T, StorageError<RaftNodeId>>;

#[derive(Default)]
struct LogData {
    vote: Option<Vote<RaftNodeId>>,
    committed: Option<LogId<RaftNodeId>>,
    last_purged: Option<LogId<RaftNodeId>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

/// The Raft log. Cloning shares the same log (the reader handed to
/// replication tasks is a clone).
#[derive(Clone, Default)]
pub struct LogStore {
    inner: Arc<Mutex<LogData>>,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let data = sync::lock(&self.inner);
        Ok(data.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let data = sync::lock(&self.inner);
        let last = data
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(data.last_purged);
        Ok(LogState {
            last_purged_log_id: data.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftNodeId>) -> StorageResult<()> {
        sync::lock(&self.inner).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<RaftNodeId>>> {
        Ok(sync::lock(&self.inner).vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<RaftNodeId>>) -> StorageResult<()> {
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
        {
            let mut data = sync::lock(&self.inner);
            for e in entries {
                data.entries.insert(e.log_id.index, e);
            }
        }
        // Memory is the durable medium here: the entries are "flushed" now.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<RaftNodeId>) -> StorageResult<()> {
        let mut data = sync::lock(&self.inner);
        data.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<RaftNodeId>) -> StorageResult<()> {
        let mut data = sync::lock(&self.inner);
        data.last_purged = Some(log_id);
        data.entries = data.entries.split_off(&(log_id.index + 1));
        Ok(())
    }
}

/// What a snapshot holds: the whole state and the Raft membership with it.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    state: ClusterState,
}

#[derive(Default)]
struct MachineData {
    last_applied: Option<LogId<RaftNodeId>>,
    membership: StoredMembership<RaftNodeId, openraft::BasicNode>,
    state: ClusterState,
    snapshot: Option<(SnapshotMeta<RaftNodeId, openraft::BasicNode>, Vec<u8>)>,
    snapshot_seq: u64,
}

/// The state machine. Every applied change is published on a watch channel
/// so the membership service can react (update views, leave on removal).
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<MachineData>>,
    published: watch::Sender<ClusterState>,
}

impl StateMachine {
    pub fn new() -> (Self, watch::Receiver<ClusterState>) {
        let (tx, rx) = watch::channel(ClusterState::default());
        (
            Self {
                inner: Arc::default(),
                published: tx,
            },
            rx,
        )
    }

    fn publish(&self, state: &ClusterState) {
        self.published.send_replace(state.clone());
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let mut data = sync::lock(&self.inner);
        let body = postcard::to_stdvec(&SnapshotBody {
            state: data.state.clone(),
        })
        .map_err(|e| StorageIOError::write_snapshot(None, openraft::AnyError::error(e)))?;
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
        data.snapshot = Some((meta.clone(), body.clone()));
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
                    },
                    EntryPayload::Normal(cmd) => data.state.apply(cmd),
                    EntryPayload::Membership(m) => {
                        data.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        CommandResult {
                            epoch: data.state.epoch,
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
        let body: SnapshotBody = postcard::from_bytes(&bytes).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), openraft::AnyError::error(e))
        })?;
        let state = {
            let mut data = sync::lock(&self.inner);
            data.last_applied = meta.last_log_id;
            data.membership = meta.last_membership.clone();
            data.state = body.state;
            data.snapshot = Some((meta.clone(), bytes));
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
