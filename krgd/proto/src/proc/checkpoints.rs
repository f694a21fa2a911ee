//! Checkpoints of processes that run on another node, or in a job's PID
//! namespace, asked through krgd (`checkpoint NODE:PID`, `checkpoint` of a
//! stand-in, `restart [NODE:]PID SN` of a job's checkpoint, `restart` of
//! an application whose processes ran on several nodes): the requests of
//! [`super::ProcRequest`] and [`super::ProcPeerRequest`] and their
//! answers.

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// The checkpoint [`super::ProcRequest::RestartJob`] names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartJob {
    /// The node whose checkpoint it is, and where it runs again (None:
    /// the node asked).
    pub node: Option<NodeId>,
    /// Root directory of checkpoints (`/var/chkpt`; another node's
    /// default one when `node` names another).
    pub dir: String,
    /// Application id: the PID of the checkpointed root.
    pub app: i32,
    /// Checkpoint number.
    pub sn: u32,
}

/// A job's checkpoint running again (answer to `RestartJob`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRestarted {
    /// The node it runs on.
    pub node: NodeId,
    /// The root's PID in the job's namespace (as it was).
    pub pid: i32,
    /// Its PID in that node's krgd's namespace now.
    pub host_pid: i32,
    /// The directory of the job's output and status files there.
    pub output: String,
}

/// `checkpoint NODE:PID`: a process saved by the node it runs on, named
/// as `krg ps` shows it; without a node, the stand-in of a process that
/// moved away (the same PID): saved where that process runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointAt {
    /// The node (None: the stand-in's node, the one asked).
    pub node: Option<NodeId>,
    /// The PID, as `krg ps` shows it (a stand-in's: the process's own).
    pub pid: i32,
    /// Save every page (a new chain).
    pub full: bool,
    /// End the process once it is saved.
    pub kill: bool,
    /// Leave it stopped once it is saved, until a [`ReleaseHeld`] (or the
    /// node's hold limit): `checkpoint` of an application holds each part
    /// until its own tree is saved, so that all of it is saved as of one
    /// moment.
    pub hold: bool,
}

/// Where a moved process was saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointedThere {
    /// The node it runs on, which holds the checkpoint.
    pub node: NodeId,
    /// Its PID there (the application id of the checkpoint).
    pub host_pid: i32,
    /// The checkpoint's number.
    pub sn: u32,
    /// The application directory there (`/var/chkpt/<host_pid>`).
    pub dir: String,
    /// How many processes were saved.
    pub tasks: u32,
    /// Bytes written.
    pub image_bytes: u64,
    /// How long the processes were frozen, in microseconds.
    pub frozen_us: u64,
    /// Held ([`CheckpointAt::hold`]) with its session on that node:
    /// whether its stand-in wrote all the output the part had sent before
    /// its save, before this answer (false: it did not in time, and the
    /// tree is saved without what was still on its way).
    #[serde(default)]
    pub output_written: Option<bool>,
    /// Bytes of input the part had been sent but had not read, kept with
    /// its SN (written into its stdin first when it runs again).
    #[serde(default)]
    pub input_kept: u64,
}

/// `restart` of an application whose tree holds stand-ins (processes that
/// had moved to other nodes, each saved by its node): each part runs
/// again on its node as a job whose session comes back to the node asked,
/// and restart makes each stand-in again with the token that claims it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreParts {
    /// The parts, one per stand-in of the tree.
    pub parts: Vec<SavedPart>,
    /// The whole application on the node asked (`restart --node`): each
    /// part runs there from its copy ([`Self::copies`]), or, without
    /// one, runs again on its node and then moves there, as `migrate`
    /// would.
    pub here: bool,
    /// The copies `checkpoint` made of the parts in the application's
    /// directory (`<dir>/<app>/parts`, absolute): a part whose node is not
    /// online, or no longer holds its SN, runs again on the node asked,
    /// from its copy (`parts/<NODE>/<PID>/`, a checkpoint directory of its
    /// own).
    #[serde(default)]
    pub copies: Option<String>,
}

/// One part of an application, saved by the node it ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPart {
    /// The PID of its stand-in in the tree (the process's own).
    pub stand_in: i32,
    /// The node that saved it, where it runs again.
    pub node: NodeId,
    /// Its PID there: the application id of its checkpoint.
    pub host_pid: i32,
    /// The checkpoint's number there.
    pub sn: u32,
    /// The owner of the application's image (its files' owner): the
    /// part's must be the same, or the node refuses it (an image's stand-in
    /// entries are its user's to edit: they must not name another user's
    /// checkpoint).
    pub uid: u32,
}

/// Answer to [`RestoreParts`]: each stand-in's token (its PID, the
/// token), to give restart (`--stand-in PID:TOKEN`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartsRestoring {
    /// (stand-in PID, token), one per part.
    pub tokens: Vec<(i32, u64)>,
    /// The stand-ins whose part runs again on the node asked, from its
    /// copy ([`RestoreParts::copies`]): its node was not online.
    #[serde(default)]
    pub from_copies: Vec<i32>,
}

/// Between krgds, on a connection of its own (its first message): run
/// SN `sn` of application `app` of this node's checkpoint store again as
/// a job, in a namespace of its own, and carry its session on this
/// connection for the asking node, whose stand-in drives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptSaved {
    /// [`super::SESSION_VERSION`] of the sender.
    pub version: u16,
    /// The application id of the checkpoint here (the part's PID here
    /// when it was saved).
    pub app: i32,
    /// The checkpoint's number.
    pub sn: u32,
    /// The PID of the job's root in its namespace: its stand-in's.
    pub pid: i32,
    /// Who the checkpoint must belong to (see [`SavedPart::uid`]).
    pub uid: u32,
}

/// How long a node holds a part stopped ([`CheckpointAt::hold`]) without
/// a [`ReleaseHeld`]: a `checkpoint` that died, or a tree whose own save
/// takes longer, does not leave it stopped for good.
pub const HOLD_LIMIT_SECS: u64 = 120;

/// How long the node that holds a part waits for its stand-in to write
/// the output the part sent before its save
/// ([`CheckpointedThere::output_written`]). The output goes where the
/// part's would have gone: a reader that reads slowly holds it back as
/// it would have held the part; past this, the tree is saved without it.
pub const OUTPUT_WRITE_LIMIT_SECS: u64 = 30;

/// The application's tree is saved (or its checkpoint failed): the part
/// that node `node` saved as SN `sn` of application `app` and held
/// stopped ([`CheckpointAt::hold`]) runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseHeld {
    /// The node that saved and holds the part.
    pub node: NodeId,
    /// The part's application id there.
    pub app: i32,
    /// The SN it was saved as.
    pub sn: u32,
}

/// `checkpoint rm` of an application's SN one of whose parts another node
/// saved: that node removes SN `sn` of application `app` of its own
/// checkpoint store, as `checkpoint rm` there would for the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveSaved {
    /// The node that saved the part.
    pub node: NodeId,
    /// The part's application id there (its PID there when it was saved).
    pub app: i32,
    /// The SN to remove.
    pub sn: u32,
}

/// Most bytes one [`ReadSaved`] reads.
pub const SAVED_CHUNK_MAX: u32 = 8 << 20;

/// `checkpoint` of an application over several nodes copies each part's
/// SN into the application's directory, so that the part outlives its
/// node's store: what node `node` holds of SN `sn` of application `app`
/// of its own checkpoint store, read for the caller (the directory's
/// owner, or root from a member), as `checkpoint rm` there would check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadSaved {
    /// The node that saved the part.
    pub node: NodeId,
    /// The part's application id there.
    pub app: i32,
    /// The SN.
    pub sn: u32,
    /// None: the SN's files ([`SavedFiles`]); a file of it: those bytes.
    pub chunk: Option<SavedChunk>,
}

/// Bytes of one file of a saved SN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedChunk {
    /// The file's name (one of [`SavedFiles::files`]).
    pub name: String,
    /// Where to start.
    pub offset: u64,
    /// How many bytes (at most [`SAVED_CHUNK_MAX`]; fewer at the end).
    pub len: u32,
}

/// The files of a saved SN (answer to [`ReadSaved`] without a chunk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFiles {
    /// Each file's name and size.
    pub files: Vec<(String, u64)>,
    /// The SN it is incremental on (whose files it needs too).
    pub parent: Option<u32>,
}
