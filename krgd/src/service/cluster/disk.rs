//! The on-disk Raft state of one node, in `<data-dir>/raft/`, and its file
//! formats. What it holds, and how each file is written:
//!
//! | file        | holds                                  | written by |
//! |-------------|----------------------------------------|------------|
//! | `log`       | the cluster uid, then log entries, truncations, purges | append + fdatasync before an append is acknowledged; rewritten atomically to compact |
//! | `vote`      | the last vote (term, candidate)         | atomic replace, before the vote is answered |
//! | `committed` | the last committed log id               | replace without the directory fsync, after the appends queued with it |
//! | `snapshot`  | snapshot metadata and the member table  | atomic replace, before the log it covers is purged |
//!
//! Every file starts with an 8-byte magic naming its kind and version; then
//! come records `len: u32 LE, crc: u32 LE, payload` where `crc` is the CRC-32
//! of the length bytes and the payload, and the payload is postcard. Small
//! files hold one record; the log's first record is the uid of the cluster.
//! "Atomic replace" is: write `.NAME.tmp`, fsync it, rename it over `NAME`,
//! fsync the directory. The committed log id is only a hint (openraft learns
//! it again from the leader; on disk it lets a restarted node show its
//! members before an election): it is replaced without the directory fsync,
//! so a crash may leave the previous one, never a torn one, and the writer
//! coalesces the updates queued together into one write after their appends.
//!
//! A welcome creates the directory and the log without waiting for the disk
//! (the leader is waiting for the answer); the writer thread syncs both
//! before the first write it acknowledges. A log whose uid record is torn
//! was therefore never used: the join did not finish, and the directory is
//! removed at start-up.
//!
//! At start-up a log whose last record is torn (the crash came in the middle
//! of an append: the record runs past the end of the file, or its bytes up to
//! the end are zeros or fail the checksum) loses that record, and the file is
//! cut back. Any other damage — a bad record followed by good data, a bad
//! magic, a small file that fails its checksum — stops krgd with an error
//! naming the file, and so does a directory whose log no snapshot covers
//! (the invariant of [`store`](super::store), "Durability order").

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use openraft::{Entry, LogId, SnapshotMeta, Vote};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::raft_types::{RaftNodeId, TypeConfig};
use crate::DaemonError;

/// Directory of the Raft state, under the data dir.
pub const DIR: &str = "raft";
pub const VOTE_FILE: &str = "vote";
pub const COMMITTED_FILE: &str = "committed";
pub const SNAPSHOT_FILE: &str = "snapshot";
pub const LOG_FILE: &str = "log";

pub const LOG_MAGIC: &[u8; 8] = b"KRGRLOG1";
const VOTE_MAGIC: &[u8; 8] = b"KRGVOTE1";
const COMMITTED_MAGIC: &[u8; 8] = b"KRGCMIT1";
const SNAPSHOT_MAGIC: &[u8; 8] = b"KRGSNAP1";

/// No record is this large (the member table of 65 535 nodes is ~5 MiB).
const MAX_RECORD: u32 = 64 << 20;
const HEADER: usize = 8;

/// One record of the log file.
#[derive(Debug, Serialize, Deserialize)]
pub enum LogRecord {
    Entry(Entry<TypeConfig>),
    /// Entries from this index on were removed.
    Truncate(u64),
    /// Entries up to this log id were removed (covered by the snapshot).
    Purged(LogId<RaftNodeId>),
}

/// A snapshot as stored: its metadata and the encoded state.
pub type StoredSnapshot = (SnapshotMeta<RaftNodeId, openraft::BasicNode>, Vec<u8>);

/// Everything read back from the directory at start-up.
pub struct Loaded {
    pub uid: u64,
    pub vote: Option<Vote<RaftNodeId>>,
    pub committed: Option<LogId<RaftNodeId>>,
    pub snapshot: Option<StoredSnapshot>,
    pub log: LogImage,
}

/// The log replayed from its records.
#[derive(Default)]
pub struct LogImage {
    pub last_purged: Option<LogId<RaftNodeId>>,
    pub entries: BTreeMap<u64, Entry<TypeConfig>>,
    /// Records in the file (to decide when to compact it).
    pub records: usize,
}

impl LogImage {
    pub fn apply(&mut self, rec: LogRecord) {
        self.records += 1;
        match rec {
            LogRecord::Entry(e) => {
                // An entry at an index already held replaces it and the rest.
                self.entries.split_off(&e.log_id.index);
                self.entries.insert(e.log_id.index, e);
            }
            LogRecord::Truncate(index) => {
                self.entries.split_off(&index);
            }
            LogRecord::Purged(id) => {
                self.last_purged = Some(id);
                self.entries = self.entries.split_off(&(id.index + 1));
            }
        }
    }

    /// The index the next appended entry must have: after the last entry,
    /// or after the purged ones.
    pub fn next_index(&self) -> u64 {
        match self.entries.keys().next_back() {
            Some(last) => last + 1,
            None => self.last_purged.map_or(0, |p| p.index + 1),
        }
    }

    /// The entries in `range` that form a run from its start: none when
    /// the first one asked for is not held (purged, or not yet appended),
    /// so that a reader never gets entries after a hole.
    pub fn run(&self, range: impl RangeBounds<u64>) -> Vec<Entry<TypeConfig>> {
        let mut expect = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => self.entries.keys().next().copied().unwrap_or(0),
        };
        self.entries
            .range(range)
            .take_while(|(index, _)| {
                let next = **index == expect;
                expect = expect.saturating_add(1);
                next
            })
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// The whole log as a fresh file: header, purge mark, live entries.
    pub fn encode_file(&self, uid: u64) -> Result<Vec<u8>, postcard::Error> {
        let mut out = log_header(uid)?;
        if let Some(p) = self.last_purged {
            out.extend(record(&postcard::to_stdvec(&LogRecord::Purged(p))?));
        }
        for e in self.entries.values() {
            out.extend(encode_entry(e)?);
        }
        Ok(out)
    }
}

/// The start of a log file: magic and the cluster uid.
pub fn log_header(uid: u64) -> Result<Vec<u8>, postcard::Error> {
    let mut out = LOG_MAGIC.to_vec();
    out.extend(record(&postcard::to_stdvec(&uid)?));
    Ok(out)
}

/// One log record for `e`, ready to append.
pub fn encode_entry(e: &Entry<TypeConfig>) -> Result<Vec<u8>, postcard::Error> {
    // Serialize through a borrowed twin of `LogRecord::Entry` (same encoding).
    #[derive(Serialize)]
    enum Borrowed<'a> {
        Entry(&'a Entry<TypeConfig>),
    }
    Ok(record(&postcard::to_stdvec(&Borrowed::Entry(e))?))
}

pub fn encode_record(rec: &LogRecord) -> Result<Vec<u8>, postcard::Error> {
    Ok(record(&postcard::to_stdvec(rec)?))
}

/// `len, crc, payload`.
pub fn record(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(payload);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A small file's bytes: magic and one record of `value`.
pub fn small_file<T: Serialize>(kind: SmallFile, value: &T) -> Result<Vec<u8>, postcard::Error> {
    let mut out = kind.magic().to_vec();
    out.extend(record(&postcard::to_stdvec(value)?));
    Ok(out)
}

#[derive(Debug, Clone, Copy)]
pub enum SmallFile {
    Vote,
    Committed,
    Snapshot,
}

impl SmallFile {
    pub fn name(self) -> &'static str {
        match self {
            SmallFile::Vote => VOTE_FILE,
            SmallFile::Committed => COMMITTED_FILE,
            SmallFile::Snapshot => SNAPSHOT_FILE,
        }
    }

    fn magic(self) -> &'static [u8; 8] {
        match self {
            SmallFile::Vote => VOTE_MAGIC,
            SmallFile::Committed => COMMITTED_MAGIC,
            SmallFile::Snapshot => SNAPSHOT_MAGIC,
        }
    }
}

/// Why one record could not be read.
enum Bad {
    /// Runs past the end of the data.
    Short,
    Checksum,
}

/// Check the record at the start of `bytes`: its payload and total length.
fn read_record(bytes: &[u8]) -> Result<(&[u8], usize), Bad> {
    if bytes.len() < HEADER {
        return Err(Bad::Short);
    }
    let len_bytes: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
    let len = u32::from_le_bytes(len_bytes);
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len > MAX_RECORD {
        return Err(Bad::Checksum);
    }
    let end = HEADER + len as usize;
    if bytes.len() < end {
        return Err(Bad::Short);
    }
    let payload = &bytes[HEADER..end];
    let mut h = crc32fast::Hasher::new();
    h.update(&len_bytes);
    h.update(payload);
    if h.finalize() != crc {
        return Err(Bad::Checksum);
    }
    Ok((payload, end))
}

fn corrupt(dir: &Path, path: &Path, reason: impl Into<String>) -> DaemonError {
    DaemonError::RaftState {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_all(path: &Path) -> Result<Option<Vec<u8>>, DaemonError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DaemonError::io(format!("reading {}", path.display()), e)),
    };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|e| DaemonError::io(format!("reading {}", path.display()), e))?;
    Ok(Some(bytes))
}

/// Read a small file; `None` when it does not exist.
fn read_small<T: DeserializeOwned>(dir: &Path, kind: SmallFile) -> Result<Option<T>, DaemonError> {
    let path = dir.join(kind.name());
    let Some(bytes) = read_all(&path)? else {
        return Ok(None);
    };
    if bytes.len() < 8 || &bytes[..8] != kind.magic() {
        return Err(corrupt(
            dir,
            &path,
            "not a krg Raft state file (bad header)",
        ));
    }
    let (payload, end) = read_record(&bytes[8..]).map_err(|b| {
        corrupt(
            dir,
            &path,
            match b {
                Bad::Short => "the file is truncated",
                Bad::Checksum => "the file fails its checksum",
            },
        )
    })?;
    if 8 + end != bytes.len() {
        return Err(corrupt(dir, &path, "unexpected bytes after the record"));
    }
    // Every byte must belong to the value: a file written as another type
    // (an `Option` around a log id once was) must not decode as something
    // shorter and silently lose its tail.
    match postcard::take_from_bytes(payload) {
        Ok((value, [])) => Ok(Some(value)),
        Ok((_, rest)) => Err(corrupt(
            dir,
            &path,
            format!("{} bytes left after its content", rest.len()),
        )),
        Err(e) => Err(corrupt(dir, &path, format!("undecodable content: {e}"))),
    }
}

/// Read the log file, cutting off a torn last record (in the file too).
/// `None` when its header is torn: the join that created it never finished.
fn load_log(dir: &Path) -> Result<Option<(u64, LogImage)>, DaemonError> {
    let path = dir.join(LOG_FILE);
    let mut image = LogImage::default();
    let Some(bytes) = read_all(&path)? else {
        return Ok(None);
    };
    let magic_len = bytes.len().min(8);
    if bytes[..magic_len] != LOG_MAGIC[..magic_len] {
        return Err(corrupt(dir, &path, "not a krg Raft log (bad header)"));
    }
    let uid = match bytes.get(8..).map(read_record) {
        None | Some(Err(Bad::Short)) => return Ok(None),
        Some(Err(Bad::Checksum)) => {
            return Err(corrupt(dir, &path, "the cluster uid fails its checksum"))
        }
        Some(Ok((payload, len))) => {
            let uid: u64 = postcard::from_bytes(payload)
                .map_err(|e| corrupt(dir, &path, format!("undecodable cluster uid: {e}")))?;
            (uid, 8 + len)
        }
    };
    let (uid, mut at) = uid;
    while at < bytes.len() {
        let rest = &bytes[at..];
        match read_record(rest) {
            Ok((payload, len)) => {
                let rec: LogRecord = postcard::from_bytes(payload).map_err(|e| {
                    corrupt(
                        dir,
                        &path,
                        format!("record at byte {at} is undecodable: {e}"),
                    )
                })?;
                image.apply(rec);
                at += len;
            }
            Err(bad) => {
                let torn = matches!(bad, Bad::Short) || rest.iter().all(|b| *b == 0) || {
                    // A bad checksum on the record that ends the file.
                    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    HEADER.saturating_add(len) >= rest.len()
                };
                if !torn {
                    return Err(corrupt(
                        dir,
                        &path,
                        format!(
                            "record at byte {at} fails its checksum and {} bytes follow it",
                            rest.len()
                        ),
                    ));
                }
                tracing::warn!(file = %path.display(), at, dropped = rest.len(),
                    "dropping a torn last log record (crash during an append)");
                cut_log(&path, at as u64)?;
                break;
            }
        }
    }
    Ok(Some((uid, image)))
}

/// Cut the log file back to `len` bytes and sync it.
fn cut_log(path: &Path, len: u64) -> Result<(), DaemonError> {
    let io_err = |e| DaemonError::io(format!("repairing {}", path.display()), e);
    let f = OpenOptions::new().write(true).open(path).map_err(io_err)?;
    f.set_len(len).map_err(io_err)?;
    f.sync_all().map_err(io_err)
}

/// The Raft state under `data_dir`, if this node was in a cluster when it
/// stopped. A directory left half-made by a crash during a join or a leave
/// is removed.
pub fn load(data_dir: &Path) -> Result<Option<Loaded>, DaemonError> {
    remove_leftovers(data_dir)?;
    let dir = data_dir.join(DIR);
    if !dir.exists() {
        return Ok(None);
    }
    let Some((uid, log)) = load_log(&dir)? else {
        // The log (with the uid) comes first: without it the join never finished.
        wipe(data_dir)?;
        return Ok(None);
    };
    let vote = read_small(&dir, SmallFile::Vote)?;
    let snapshot: Option<StoredSnapshot> = read_small(&dir, SmallFile::Snapshot)?;
    let covered = snapshot
        .as_ref()
        .and_then(|(meta, _)| meta.last_log_id)
        .map(|l| l.index);
    let refuse = |reason: String| corrupt(&dir, &dir.join(LOG_FILE), reason);
    check_log_covered(&log, covered).map_err(refuse)?;
    let committed: Option<LogId<RaftNodeId>> = read_small(&dir, SmallFile::Committed)?;
    check_committed_held(&log, covered, committed).map_err(refuse)?;
    Ok(Some(Loaded {
        uid,
        vote,
        committed,
        snapshot,
        log,
    }))
}

/// "entries `a`–`b` are", or "entry `a` is".
fn lost(from: u64, to: u64) -> String {
    if from == to {
        format!("entry {from} is lost")
    } else {
        format!("entries {from}–{to} are lost")
    }
}

/// The invariant of the directory ([`store`](super::store), "Durability
/// order"): every index below the first entry of the log is covered by the
/// snapshot (`covered`: the last index it holds). Openraft cannot rebuild
/// the state machine otherwise, so such a directory is refused, with why.
pub fn check_log_covered(log: &LogImage, covered: Option<u64>) -> Result<(), String> {
    let after_snapshot = covered.map_or(0, |c| c + 1);
    if let Some(p) = log.last_purged {
        if p.index >= after_snapshot {
            return Err(match covered {
                None => format!(
                    "the log was purged up to entry {} but there is no snapshot: {}",
                    p.index,
                    lost(0, p.index)
                ),
                Some(c) => format!(
                    "the log was purged up to entry {} but the snapshot ends at entry {c}: {}",
                    p.index,
                    lost(c + 1, p.index)
                ),
            });
        }
    }
    if let Some(&first) = log.entries.keys().next() {
        let held_from = after_snapshot.max(log.last_purged.map_or(0, |p| p.index + 1));
        if first > held_from {
            return Err(format!(
                "the log starts at entry {first} and {}: {}",
                match covered {
                    None => "there is no snapshot".to_string(),
                    Some(c) => format!("the snapshot ends at entry {c}"),
                },
                lost(held_from, first - 1)
            ));
        }
    }
    Ok(())
}

/// The saved commit index must name an entry that is held (in the log, or
/// covered by the snapshot): openraft re-applies up to it at start-up.
pub fn check_committed_held(
    log: &LogImage,
    covered: Option<u64>,
    committed: Option<LogId<RaftNodeId>>,
) -> Result<(), String> {
    let Some(c) = committed else {
        return Ok(());
    };
    let held_to = log
        .entries
        .keys()
        .next_back()
        .copied()
        .max(covered)
        .max(log.last_purged.map(|p| p.index));
    if held_to.is_none_or(|h| c.index > h) {
        return Err(format!(
            "the committed index is {} but the log and snapshot end {}",
            c.index,
            held_to.map_or("before entry 0".to_string(), |h| format!("at entry {h}"))
        ));
    }
    Ok(())
}

/// Start fresh state for cluster `uid`: a log holding only the uid. Not
/// synced here: the writer thread syncs it (and the directories) before it
/// acknowledges anything.
pub fn create(data_dir: &Path, uid: u64) -> Result<(), DaemonError> {
    wipe(data_dir)?;
    let dir = data_dir.join(DIR);
    let io_err = |what: &str, e| DaemonError::io(format!("{what} {}", dir.display()), e);
    std::fs::create_dir_all(&dir).map_err(|e| io_err("creating", e))?;
    let header = log_header(uid).map_err(|e| io_err("encoding the log of", io::Error::other(e)))?;
    new_file(&dir.join(LOG_FILE))
        .and_then(|mut log| log.write_all(&header))
        .map_err(|e| io_err("creating the log in", e))
}

/// Forget the Raft state (this node left its cluster): move the directory
/// aside in one rename, then delete it.
pub fn wipe(data_dir: &Path) -> Result<(), DaemonError> {
    let dir = data_dir.join(DIR);
    if !dir.exists() {
        return Ok(());
    }
    let aside = data_dir.join(format!("{DIR}.old-{}", std::process::id()));
    let io_err = |e| DaemonError::io(format!("removing {}", dir.display()), e);
    std::fs::rename(&dir, &aside).map_err(io_err)?;
    sync_dir(data_dir).map_err(io_err)?;
    std::fs::remove_dir_all(&aside).map_err(io_err)
}

fn remove_leftovers(data_dir: &Path) -> Result<(), DaemonError> {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(&format!("{DIR}.old-"))
        {
            std::fs::remove_dir_all(e.path())
                .map_err(|err| DaemonError::io(format!("removing {}", e.path().display()), err))?;
        }
    }
    Ok(())
}

pub fn new_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Write `dir/name` so that it holds either its old or its new bytes after a
/// crash, never a mix: temp file, fsync, rename, fsync the directory.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    let mut f = new_file(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Like [`write_atomic`] without the directory fsync: after a crash the
/// file holds its old or its new bytes, and which is not guaranteed.
pub fn write_replace(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    let mut f = new_file(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
