//! Process migration messages (`migrate PID NODE`).
//!
//! The origin's krgd dumps the process (and its descendants) with the
//! checkpoint engine, leaves it stopped, and pushes the image to the target
//! over the pooled, sealed peer connection: [`Offer`] (what is coming and
//! for whom), [`Data`] chunks of at most [`MAX_DATA`] bytes (the memory
//! files may be offered and sent while the process still runs, then
//! [`MigratePeerRequest::Files`] gives the final list and the changed
//! ranges follow), then
//! [`MigratePeerRequest::Commit`] once the origin has killed its stopped
//! copy; the target restores it with the same PIDs and answers with
//! [`Restored`]. Any failure before `Commit` leaves the origin's copy to be
//! resumed; after it, the origin restores from its own copy of the image
//! if the target could not (the PIDs, unique on one kernel, keep two
//! copies from running).

use serde::{Deserialize, Serialize};

use crate::credentials::Credentials;
use crate::NodeId;

pub use crate::term::{JobTerminal, TermSettings};

/// Largest chunk of image bytes in one [`Data`] message.
pub const MAX_DATA: usize = 4 * 1024 * 1024;

/// `migrate [NODE:]PID NODE` on the admin socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateRequest {
    /// The node the process runs on (default: this one).
    pub from: Option<NodeId>,
    /// The process, as that node numbers it.
    pub pid: i32,
    /// Where it goes.
    pub to: NodeId,
    /// Move its descendants too (without it, a process with children is refused).
    pub tree: bool,
    /// Post-copy: send the memory after the process runs on the target
    /// (see [`Offer::postcopy`]).
    pub postcopy: bool,
    /// Leave no stand-in on the origin for a process that is no `krg run`
    /// job: its parent sees it killed at the move (a leaving node's
    /// processes, whose stand-ins would go with the node).
    #[serde(default)]
    pub no_stand_in: bool,
}

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateReport {
    /// The node it left.
    pub from: NodeId,
    /// The node it runs on now (`from` again when the target failed after
    /// the handover and the origin took it back).
    pub to: NodeId,
    /// The processes moved (their PIDs are unchanged).
    pub pids: Vec<i32>,
    /// Bytes of image sent.
    pub bytes: u64,
    /// From the freeze to running again on the target, ms (as krgd saw it).
    pub stopped_ms: u64,
    /// The whole migration, ms.
    pub total_ms: u64,
    /// Why it came back to the origin, when it did.
    pub fell_back: Option<String>,
    /// Where the time went, in order: the origin's phases, then the
    /// target's restore (names starting with `target.`), µs each
    /// (`migrate --timings`).
    pub phases: Vec<PhaseTime>,
}

/// One phase of a migration and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTime {
    /// Its name (`dump.freeze`, `push`, `target.restore.load`, …).
    pub name: String,
    /// Its length, µs.
    pub us: u64,
}

/// One file of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFile {
    /// Its name in the checkpoint directory (`task_mm_42_v1.bin`).
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
}

/// An open regular file or mapped file that must be the same on the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// Absolute path.
    pub path: String,
    /// Inode number.
    pub ino: u64,
    /// Size and modification time (ns), compared only when `fixed`.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i128,
    /// Not open for writing by the process (its size and mtime must match).
    pub fixed: bool,
}

/// The first message of a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Transfer id, chosen by the origin.
    pub xfer: u64,
    /// The application id (root PID) of the image.
    pub app: i32,
    /// Its SN.
    pub sn: u32,
    /// The PIDs of the processes it holds.
    pub pids: Vec<i32>,
    /// Whose processes these are (the image's owner).
    pub owner: u32,
    /// Who asked for the migration.
    pub creds: Credentials,
    /// The files to come, in order.
    pub files: Vec<ImageFile>,
    /// Files the processes use that must be the same there.
    pub identities: Vec<FileIdentity>,
    /// Post-copy: the page data of the memory files (`task_mm_*`) may be
    /// missing at `Commit`; the target restores lazily and pulls it from
    /// the origin ([`MigratePeerRequest::Pull`]) while the processes run,
    /// what they touch first, then the rest; then it says
    /// [`MigratePeerRequest::Release`].
    pub postcopy: bool,
}

/// A chunk of one image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {
    /// Transfer id.
    pub xfer: u64,
    /// Index of the file: its place in the offer, then in the order
    /// `Files` named new ones.
    pub file: u32,
    /// Offset in that file.
    pub offset: u64,
    /// The bytes (a slice of the frame they came in: no copy on receipt).
    #[serde(with = "crate::bytestr::shared")]
    pub data: ::bytes::Bytes,
}

/// The target's answer to `Commit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// The PIDs now running on the target.
    pub pids: Vec<i32>,
    /// The target's phases, from `Commit` to the processes running.
    pub phases: Vec<PhaseTime>,
}

/// The first message of a connection that hands a `krg run` job over
/// (see [`crate::proc::ProcPeerRequest::AdoptJob`]): the target restores
/// transfer `xfer` into a new PID namespace of its own, then carries the
/// job's session stream (one job, number 0) on this connection, for the
/// origin, whose session relays it to the job's user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptJob {
    /// [`crate::proc::SESSION_VERSION`] of the sender.
    pub version: u16,
    /// The transfer that holds the image (complete, the job stopped).
    pub xfer: u64,
    /// PID of the job's program in its namespace.
    pub pid: i32,
    /// Every PID and TID of the image (krgd's namespace on the origin)
    /// with its number in the job's namespace.
    pub map: Vec<(i32, i32)>,
    /// The job runs on a terminal (`krg run -t`): the target gives it a
    /// new one like it.
    pub terminal: Option<crate::term::JobTerminal>,
    /// Its processes (PIDs of the image) that held CHECKPOINTABLE: they
    /// hold it on the target too.
    pub checkpointable: Vec<i32>,
    /// A detached job (`krg run --detach`): if the origin goes away, it
    /// runs on and its output goes into files on the target.
    pub detached: bool,
}

/// Migration requests between krgds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigratePeerRequest {
    /// `migrate NODE:PID TO` asked on another node, sent to NODE's krgd.
    Move {
        /// The request.
        req: MigrateRequest,
        /// Who asks (as the asking node's kernel reported them).
        creds: Credentials,
    },
    /// An image is coming.
    Offer(Offer),
    /// Part of it.
    Data(Data),
    /// The image's final list of files, once the process is frozen and
    /// dumped, when the offer came before (with the memory files copied
    /// while it ran): offered files keep what they received and take the
    /// new length, new ones are created (their index follows the offered
    /// ones, in this order), offered files not listed are removed.
    Files {
        /// Transfer id.
        xfer: u64,
        /// The PIDs of the processes it holds (final).
        pids: Vec<i32>,
        /// Every file of the image.
        files: Vec<ImageFile>,
    },
    /// The origin's copy is gone: restore it.
    Commit {
        /// Transfer id.
        xfer: u64,
        /// The processes of the image (PIDs at dump time) that held
        /// CHECKPOINTABLE: they hold it on the target too.
        checkpointable: Vec<i32>,
    },
    /// Forget the transfer (the origin resumes its copy).
    Abort {
        /// Transfer id.
        xfer: u64,
    },
    /// Post-copy, from the target after `Commit`: bytes of an image file
    /// (at most [`MAX_DATA`]), from the origin's copy of the image.
    Pull {
        /// Transfer id.
        xfer: u64,
        /// Index of the file (as in [`Data`]).
        file: u32,
        /// Offset in that file.
        offset: u64,
        /// How many bytes.
        len: u32,
    },
    /// Post-copy, from the target: every byte is in (or the processes
    /// ended before): the origin may drop its copy of the image.
    Release {
        /// Transfer id.
        xfer: u64,
    },
    /// From the target: what a moved process (not a `krg run` job) wrote
    /// to its stdout or stderr, for the pipe or terminal it led to on the
    /// origin.
    Output {
        /// Transfer id.
        xfer: u64,
        /// Its stderr (else its stdout).
        stderr: bool,
        /// The bytes (a slice of the frame they came in).
        #[serde(with = "crate::bytestr::shared")]
        data: ::bytes::Bytes,
    },
    /// From the target: the moved process's stdout and stderr are closed
    /// there (it ended, with its children): the origin lets go of them.
    OutputEnd {
        /// Transfer id.
        xfer: u64,
    },
}

/// Answers to [`MigratePeerRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigratePeerReply {
    /// To `Move`.
    Moved(MigrateReport),
    /// To `Offer`, `Data`, `Files`, `Abort`, `Output`, `OutputEnd`.
    Ack,
    /// To `Commit`.
    Restored(Restored),
    /// To `Pull`: the bytes.
    Pulled(Data),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::frame::{decode, encode};
    use proptest::prelude::*;

    #[test]
    fn data_roundtrips_as_one_byte_string() {
        let m = MigratePeerRequest::Data(Data {
            xfer: 7,
            file: 2,
            offset: 4096,
            data: vec![9; 10_000].into(),
        });
        let bytes = encode(&m).unwrap();
        assert!(bytes.len() < 10_100, "{}", bytes.len());
        let (back, _): (MigratePeerRequest, usize) = decode(&bytes).unwrap().unwrap();
        assert_eq!(back, m);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode::<MigratePeerRequest>(&bytes);
            let _ = decode::<MigratePeerReply>(&bytes);
            let _ = decode::<MigrateRequest>(&bytes);
        }
    }
}
