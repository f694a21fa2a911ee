//! Tests of the on-disk formats: round trips, torn tails, corruption.

use super::*;
use openraft::{CommittedLeaderId, EntryPayload, SnapshotMeta};

fn entry(index: u64, term: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Blank,
    }
}

/// A snapshot file covering the log up to `index` (the state inside does
/// not matter to these tests).
fn snapshot_upto(dir: &Path, index: u64) {
    let meta = SnapshotMeta {
        last_log_id: Some(entry(index, 1).log_id),
        last_membership: Default::default(),
        snapshot_id: format!("{index}-1"),
    };
    let snapshot: StoredSnapshot = (meta, vec![0]);
    let bytes = small_file(SmallFile::Snapshot, &snapshot).unwrap();
    write_atomic(dir, SNAPSHOT_FILE, &bytes).unwrap();
}

fn fresh() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    create(d.path(), 0xabcd).unwrap();
    let dir = d.path().join(DIR);
    (d, dir)
}

fn append(dir: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new()
        .append(true)
        .open(dir.join(LOG_FILE))
        .unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn log_replays_entries_truncations_and_purges() {
    let (d, dir) = fresh();
    for i in 1..=5 {
        append(&dir, &encode_entry(&entry(i, 1)).unwrap());
    }
    append(&dir, &encode_record(&LogRecord::Truncate(4)).unwrap());
    append(&dir, &encode_entry(&entry(4, 2)).unwrap());
    append(
        &dir,
        &encode_record(&LogRecord::Purged(entry(1, 1).log_id)).unwrap(),
    );
    snapshot_upto(&dir, 1);
    let l = load(d.path()).unwrap().unwrap();
    assert_eq!(l.uid, 0xabcd);
    assert_eq!(
        l.log.entries.keys().copied().collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(l.log.entries[&4].log_id.leader_id.term, 2);
    assert_eq!(l.log.last_purged.map(|p| p.index), Some(1));
    // A compacted file replays to the same log.
    std::fs::write(dir.join(LOG_FILE), l.log.encode_file(0xabcd).unwrap()).unwrap();
    let again = load(d.path()).unwrap().unwrap();
    assert_eq!(
        again.log.entries.keys().copied().collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(again.log.records, 4);
}

#[test]
fn torn_last_record_is_dropped_and_the_file_cut() {
    let (d, dir) = fresh();
    append(&dir, &encode_entry(&entry(0, 1)).unwrap());
    let good_len = std::fs::metadata(dir.join(LOG_FILE)).unwrap().len();
    let second = encode_entry(&entry(1, 1)).unwrap();
    // Every strict prefix of the second record is a torn append.
    for cut in 1..second.len() {
        append(&dir, &second[..cut]);
        let l = load(d.path()).unwrap().unwrap();
        assert_eq!(l.log.entries.len(), 1, "cut at {cut}");
        assert_eq!(
            std::fs::metadata(dir.join(LOG_FILE)).unwrap().len(),
            good_len
        );
    }
    // Zeros where the record should be (size grew, data never written).
    append(&dir, &[0u8; 64]);
    assert_eq!(load(d.path()).unwrap().unwrap().log.entries.len(), 1);
    // The full record with a flipped last byte, at the end: torn too.
    let mut bad = second.clone();
    *bad.last_mut().unwrap() ^= 0xff;
    append(&dir, &bad);
    assert_eq!(load(d.path()).unwrap().unwrap().log.entries.len(), 1);
    append(&dir, &second);
    assert_eq!(load(d.path()).unwrap().unwrap().log.entries.len(), 2);
}

#[test]
fn damage_before_good_records_is_an_error_naming_the_file() {
    let (d, dir) = fresh();
    let first = encode_entry(&entry(1, 1)).unwrap();
    let mut bad = first.clone();
    bad[10] ^= 0x55;
    append(&dir, &bad);
    append(&dir, &encode_entry(&entry(2, 1)).unwrap());
    let e = load(d.path()).err().unwrap().to_string();
    assert!(e.contains(&dir.join(LOG_FILE).display().to_string()), "{e}");
    assert!(e.contains("fails its checksum"), "{e}");
}

#[test]
fn small_files_are_refused_when_damaged() {
    let (d, dir) = fresh();
    let vote = Vote::new(3, 2);
    write_atomic(
        &dir,
        VOTE_FILE,
        &small_file(SmallFile::Vote, &vote).unwrap(),
    )
    .unwrap();
    assert_eq!(load(d.path()).unwrap().unwrap().vote, Some(vote));
    let mut bytes = std::fs::read(dir.join(VOTE_FILE)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(dir.join(VOTE_FILE), &bytes).unwrap();
    let e = load(d.path()).err().unwrap().to_string();
    assert!(e.contains("raft/vote") && e.contains("checksum"), "{e}");
    std::fs::write(dir.join(VOTE_FILE), b"garbage!garbage").unwrap();
    let e = load(d.path()).err().unwrap().to_string();
    assert!(e.contains("bad header"), "{e}");
}

#[test]
fn unfinished_join_and_leave_leave_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    // A join that crashed before its log was written: no state.
    std::fs::create_dir_all(d.path().join(DIR)).unwrap();
    assert!(load(d.path()).unwrap().is_none());
    assert!(!d.path().join(DIR).exists());
    for cut in [0, 5, 8, 13] {
        std::fs::create_dir_all(d.path().join(DIR)).unwrap();
        let header = log_header(7).unwrap();
        std::fs::write(d.path().join(DIR).join(LOG_FILE), &header[..cut]).unwrap();
        assert!(load(d.path()).unwrap().is_none(), "cut at {cut}");
        assert!(!d.path().join(DIR).exists());
    }
    // A leave that crashed after moving the directory aside.
    std::fs::create_dir_all(d.path().join("raft.old-1")).unwrap();
    assert!(load(d.path()).unwrap().is_none());
    assert!(!d.path().join("raft.old-1").exists());
    create(d.path(), 7).unwrap();
    wipe(d.path()).unwrap();
    assert!(load(d.path()).unwrap().is_none());
}

/// The committed log id comes back whole: a restarted node re-applies its
/// log up to it (it once came back as index 1, the state machine stayed
/// empty and the leader evicted every member).
#[test]
fn committed_log_id_round_trips() {
    let (d, dir) = fresh();
    for i in 0..=11 {
        append(&dir, &encode_entry(&entry(i, 3)).unwrap());
    }
    let id = LogId::new(CommittedLeaderId::new(3, 2), 11);
    let bytes = small_file(SmallFile::Committed, &id).unwrap();
    write_atomic(&dir, COMMITTED_FILE, &bytes).unwrap();
    let loaded = load(d.path()).unwrap().unwrap();
    assert_eq!(loaded.committed, Some(id));
    // The same file with a byte too many is refused, not cut short.
    let wrapped = small_file(SmallFile::Committed, &Some(id)).unwrap();
    write_atomic(&dir, COMMITTED_FILE, &wrapped).unwrap();
    let err = load(d.path()).err().unwrap().to_string();
    assert!(err.contains("left after its content"), "{err}");
}

/// The directory seed 938669814 left (log entries 500–591, committed 590,
/// no snapshot), and its kin: refused at start-up with one line saying
/// what is lost and what to do, not a confusing openraft error.
#[test]
fn a_log_no_snapshot_covers_is_refused_in_one_line() {
    let (d, dir) = fresh();
    for i in 500..=591 {
        append(&dir, &encode_entry(&entry(i, 49)).unwrap());
    }
    let committed = small_file(SmallFile::Committed, &entry(590, 49).log_id).unwrap();
    write_atomic(&dir, COMMITTED_FILE, &committed).unwrap();
    let e = load(d.path()).err().unwrap().to_string();
    assert_eq!(
        e,
        format!(
            "Raft state {}: the log starts at entry 500 and there is no snapshot: \
             entries 0–499 are lost; move {} away to start this node outside its \
             cluster (then re-add it with `krgadm nodes add`)",
            dir.join(LOG_FILE).display(),
            dir.display()
        )
    );
    // A snapshot that ends too early does not cover the hole either.
    snapshot_upto(&dir, 450);
    let e = load(d.path()).err().unwrap().to_string();
    assert!(
        e.contains("the snapshot ends at entry 450: entries 451–499 are lost"),
        "{e}"
    );
    // One that reaches the log (or overlaps it) does.
    snapshot_upto(&dir, 499);
    assert_eq!(
        load(d.path()).unwrap().unwrap().committed.map(|c| c.index),
        Some(590)
    );
    snapshot_upto(&dir, 520);
    assert!(load(d.path()).is_ok());
    // A commit index past everything held cannot be re-applied.
    let past = small_file(SmallFile::Committed, &entry(600, 49).log_id).unwrap();
    write_atomic(&dir, COMMITTED_FILE, &past).unwrap();
    let e = load(d.path()).err().unwrap().to_string();
    assert!(
        e.contains("the committed index is 600 but the log and snapshot end at entry 591"),
        "{e}"
    );
}

#[test]
fn a_purge_no_snapshot_covers_is_refused() {
    let (d, dir) = fresh();
    for i in 0..=5 {
        append(&dir, &encode_entry(&entry(i, 1)).unwrap());
    }
    append(
        &dir,
        &encode_record(&LogRecord::Purged(entry(3, 1).log_id)).unwrap(),
    );
    let e = load(d.path()).err().unwrap().to_string();
    assert!(
        e.contains("purged up to entry 3 but there is no snapshot: entries 0–3 are lost"),
        "{e}"
    );
    snapshot_upto(&dir, 2);
    let e = load(d.path()).err().unwrap().to_string();
    assert!(
        e.contains("the snapshot ends at entry 2: entry 3 is lost"),
        "{e}"
    );
    snapshot_upto(&dir, 3);
    let l = load(d.path()).unwrap().unwrap();
    assert_eq!(
        l.log.entries.keys().copied().collect::<Vec<_>>(),
        vec![4, 5]
    );
}
