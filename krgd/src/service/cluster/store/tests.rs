//! Tests of the Raft storage: old snapshot formats, and the durability
//! order — a `kill -9` (simulated by copying the directory as it is) at
//! each step of a snapshot install, a purge and the appends after it
//! leaves a directory openraft can start from.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use openraft::{CommittedLeaderId, StorageHelper};

use super::*;

use crate::service::cluster::owners::Ownership;
use crate::service::cluster::state::MemberRecord;

#[derive(Serialize)]
struct OldState {
    uid: u64,
    epoch: u64,
    members: std::collections::BTreeMap<krg_proto::NodeId, MemberRecord>,
    dissolved: bool,
}

#[test]
fn snapshots_from_before_ownership_still_load() {
    let member = MemberRecord {
        id: 3,
        addr: "127.0.0.1:7603".parse().unwrap(),
        mac: None,
        state: krg_proto::cluster::NodeState::Online,
    };
    let old = OldState {
        uid: 77,
        epoch: 5,
        members: [(3, member.clone())].into(),
        dissolved: false,
    };
    let body = decode_body(&postcard::to_stdvec(&old).unwrap()).unwrap();
    assert_eq!((body.state.uid, body.state.epoch), (77, 5));
    assert_eq!(body.state.members[&3], member);
    assert!(body.state.owners.is_empty());
    // The current format round-trips with its owners.
    let mut state = body.state;
    state.owners.insert(
        3,
        Ownership {
            uid: 1000,
            user: "alice".into(),
            until_ms: 9,
            since_ms: 1,
            reason: "bench".into(),
        },
    );
    let bytes = postcard::to_stdvec(&SnapshotBody {
        state: state.clone(),
    })
    .unwrap();
    assert_eq!(decode_body(&bytes).unwrap().state, state);
    assert!(decode_body(&[1, 2]).is_err());
}

#[derive(Serialize)]
struct StateWithOwners {
    uid: u64,
    epoch: u64,
    members: std::collections::BTreeMap<krg_proto::NodeId, MemberRecord>,
    dissolved: bool,
    owners: crate::service::cluster::owners::Owners,
}

#[test]
fn snapshots_from_before_placements_keep_their_owners() {
    let owner = Ownership {
        uid: 1000,
        user: "alice".into(),
        until_ms: 9,
        since_ms: 1,
        reason: "bench".into(),
    };
    let old = StateWithOwners {
        uid: 78,
        epoch: 6,
        members: Default::default(),
        dissolved: false,
        owners: [(2, owner.clone())].into(),
    };
    let body = decode_body(&postcard::to_stdvec(&old).unwrap()).unwrap();
    assert_eq!((body.state.uid, body.state.epoch), (78, 6));
    assert_eq!(body.state.owners[&2], owner);
    assert!(body.state.placements.is_empty());
    // The current format round-trips with its placements.
    let mut state = body.state;
    crate::service::cluster::placements::place(&mut state.placements, 42, 3, 5);
    let bytes = postcard::to_stdvec(&SnapshotBody {
        state: state.clone(),
    })
    .unwrap();
    assert_eq!(decode_body(&bytes).unwrap().state, state);
}

const UID: u64 = 0x5eed;

fn id(index: u64) -> LogId<RaftNodeId> {
    LogId::new(CommittedLeaderId::new(3, 2), index)
}

fn entry(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: id(index),
        payload: EntryPayload::Blank,
    }
}

fn meta(index: u64) -> SnapshotMeta<RaftNodeId, openraft::BasicNode> {
    SnapshotMeta {
        last_log_id: Some(id(index)),
        last_membership: StoredMembership::default(),
        snapshot_id: format!("{index}-1"),
    }
}

fn body(epoch: u64) -> Box<Cursor<Vec<u8>>> {
    let state = ClusterState {
        uid: UID,
        epoch,
        ..Default::default()
    };
    Box::new(Cursor::new(
        postcard::to_stdvec(&SnapshotBody { state }).unwrap(),
    ))
}

/// A node just welcomed: fresh directory, empty log, no snapshot.
struct Node {
    dir: tempfile::TempDir,
    writer: Arc<Writer>,
    log: LogStore,
    sm: StateMachine,
}

fn welcomed() -> Node {
    let dir = tempfile::tempdir().unwrap();
    disk::create(dir.path(), UID).unwrap();
    let writer = Arc::new(Writer::start(dir.path().join(disk::DIR), false, None).unwrap());
    let log = LogStore::new(writer.clone(), UID, None, None, disk::LogImage::default());
    let (sm, _rx) = StateMachine::new(writer.clone(), None).unwrap();
    Node {
        dir,
        writer,
        log,
        sm,
    }
}

impl Node {
    /// Queue `entries` as `append` does (without openraft's callback).
    fn append(&self, entries: impl IntoIterator<Item = u64>) -> Result<(), String> {
        let bytes = self
            .log
            .stage_append(entries.into_iter().map(entry))
            .map_err(|e| e.to_string())?;
        self.writer.append(bytes, None);
        Ok(())
    }

    /// Wait until every write queued so far is done (a later write in the
    /// same queue returns only after them).
    async fn settle(&self) {
        let vote = disk::small_file(SmallFile::Vote, &Vote::new(3, 2)).unwrap();
        self.writer.write(SmallFile::Vote, vote).await.unwrap();
    }
}

/// `kill -9` now: copy the directory as it is, load it as krgd does at
/// start-up, and let openraft read its initial state from it as `Raft::new`
/// does. Returns (last purged, the entries, the commit index it starts at).
async fn restart_from_copy(
    data_dir: &Path,
) -> Result<(Option<u64>, Vec<u64>, Option<u64>), String> {
    let copy = tempfile::tempdir().unwrap();
    let to = copy.path().join(disk::DIR);
    std::fs::create_dir(&to).unwrap();
    for f in std::fs::read_dir(data_dir.join(disk::DIR)).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
    let loaded = disk::load(copy.path())
        .map_err(|e| e.to_string())?
        .expect("a Raft directory");
    // As `start_raft` does: the writer knows how far the snapshot reaches.
    let floor = loaded
        .snapshot
        .as_ref()
        .and_then(|(meta, _)| meta.last_log_id)
        .map(|l| l.index);
    let writer = Arc::new(Writer::start(to, true, floor).unwrap());
    let entries: Vec<u64> = loaded.log.entries.keys().copied().collect();
    let purged = loaded.log.last_purged.map(|p| p.index);
    let mut log = LogStore::new(
        writer.clone(),
        loaded.uid,
        loaded.vote,
        loaded.committed,
        loaded.log,
    );
    let (mut sm, _rx) = StateMachine::new(writer.clone(), loaded.snapshot).unwrap();
    let state = StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await
        .map_err(|e| e.to_string())?;
    writer.close().await;
    Ok((purged, entries, state.committed.map(|l| l.index)))
}

/// openraft on a follower installing the leader's snapshot: the install
/// goes to the state-machine task, the purge of the log it covers is issued
/// at once, then the leader's next entries arrive. The purge must wait for
/// the snapshot; a crash at any step leaves a directory that starts.
#[tokio::test]
async fn a_purge_reaches_the_disk_only_after_the_snapshot_covering_it() {
    let mut n = welcomed();
    let mut log = n.log.clone();
    let purge = tokio::spawn(async move { log.purge(id(499)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !purge.is_finished(),
        "the log was purged before any snapshot covered it"
    );
    // Crash before the snapshot is written: an empty node, as it was.
    assert_eq!(
        restart_from_copy(n.dir.path()).await.unwrap(),
        (None, vec![], None)
    );

    n.sm.install_snapshot(&meta(499), body(7)).await.unwrap();
    // Crash after the snapshot, maybe before the purge record: starts from
    // the snapshot (openraft purges the rest of the log itself).
    let (_, entries, applied) = restart_from_copy(n.dir.path()).await.unwrap();
    assert_eq!((entries, applied), (vec![], Some(499)));

    tokio::time::timeout(Duration::from_secs(30), purge)
        .await
        .expect("the purge still waits once the snapshot is durable")
        .unwrap()
        .unwrap();
    n.append(500..=510).unwrap();
    n.settle().await;
    let (purged, entries, applied) = restart_from_copy(n.dir.path()).await.unwrap();
    assert_eq!(purged, Some(499));
    assert_eq!(entries, (500..=510).collect::<Vec<_>>());
    assert_eq!(applied, Some(499));
    n.writer.close().await;
}

/// The failure seed 938669814 found: a node that had just lost its log was
/// sent entries 500.. with no snapshot before them. The store refuses
/// them before writing anything, so the directory still starts.
#[tokio::test]
async fn entries_after_a_hole_are_refused_and_never_written() {
    let n = welcomed();
    let err = n.append(500..=591).unwrap_err();
    assert!(
        err.contains("refusing to append entry 500 where entry 0 belongs"),
        "{err}"
    );
    n.settle().await;
    assert_eq!(
        restart_from_copy(n.dir.path()).await.unwrap(),
        (None, vec![], None)
    );
    // A log that goes on without a hole is taken; a jump inside a batch
    // is refused whole.
    n.append(0..=3).unwrap();
    assert!(n.append([4, 6]).is_err());
    n.append(4..=5).unwrap();
    n.settle().await;
    let (_, entries, _) = restart_from_copy(n.dir.path()).await.unwrap();
    assert_eq!(entries, (0..=5).collect::<Vec<_>>());
    n.writer.close().await;
}

/// Reads never skip a hole: a leader asked for purged entries gets none
/// (openraft then sends the snapshot), not the entries after them.
#[tokio::test]
async fn reads_return_a_run_from_the_first_index_asked() {
    let mut n = welcomed();
    n.sm.install_snapshot(&meta(499), body(1)).await.unwrap();
    n.log.purge(id(499)).await.unwrap();
    n.append(500..=520).unwrap();
    let got = |v: Vec<Entry<TypeConfig>>| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
    assert!(got(n.log.try_get_log_entries(0..592).await.unwrap()).is_empty());
    assert!(got(n.log.try_get_log_entries(499..510).await.unwrap()).is_empty());
    assert_eq!(
        got(n.log.try_get_log_entries(505..508).await.unwrap()),
        vec![505, 506, 507]
    );
    assert_eq!(
        got(n.log.try_get_log_entries(518..).await.unwrap()),
        vec![518, 519, 520]
    );
    n.writer.close().await;
}
