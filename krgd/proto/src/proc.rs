//! Process service messages: `krg run`, `krg ps`, `krg kill`, `krg push`,
//! `krg get`, and the session stream that carries a job's stdio, signals
//! and exit status.
//!
//! # Requests
//!
//! `krg ps` and `krg kill` are plain request/answer pairs
//! ([`ProcRequest`]/[`ProcReply`] on the admin socket,
//! [`ProcPeerRequest`]/[`ProcPeerReply`] between krgds over a
//! `PeerClient`). `krg push` and `krg get` are runs of a built-in
//! [`Program`] (`WriteFile`, `ReadFile`), so they share the run session.
//!
//! # Session stream (version [`SESSION_VERSION`])
//!
//! A run turns a connection into a session stream:
//!
//! ```text
//! local tool -> krgd (admin socket):
//!   AdminRequest::Proc(ProcRequest::Run(RunRequest))
//!   <- AdminResponse::Proc(ProcReply::Session { jobs })  or  AdminResponse::Error
//!   then: tool -> krgd  Up frames;  krgd -> tool  Down frames, until the tool closes
//!
//! stand-in of a moved process -> krgd (admin socket), the same way:
//!   AdminRequest::Proc(ProcRequest::StandIn { token })  <- Session { jobs: [node] } ...
//!
//! origin krgd -> target krgd (a dedicated, authenticated TCP connection):
//!   PeerMessage { id: 0, Request(PeerRequest::Proc(ProcPeerRequest::Session(PeerSession))) }
//!   <- PeerMessage { id: 0, Response(PeerResponse::Proc(ProcPeerReply::Session { jobs })) }
//!      or PeerResponse::Error
//!   then: origin -> target  Up frames;  target -> origin  Down frames
//! ```
//!
//! `job` numbers index the `jobs` list of the answer (one entry per job, the
//! node it runs on). Every job ends with exactly one of [`Down::Exited`],
//! [`Down::Refused`], [`Down::Lost`] or [`Down::Detached`]; the session is
//! over when each job has ended. Output of a job comes before its end.
//!
//! Flow control: output is not windowed (a reader that stops reading stops
//! the job, as a full pipe would); stdin is. A sender may have at most
//! [`STDIN_WINDOW`] bytes of stdin sent but not yet acknowledged by every
//! job still reading it ([`Down::StdinAck`] counts the bytes a job's stdin
//! took); a krgd that has more than twice that queued for a job closes
//! the session (twice: across a splice, the old path's bytes and the
//! joined stream's can be in flight at once, see below).
//!
//! Closing the stream ends the session: jobs that were not started with
//! `detach` are killed (SIGKILL of their PID namespace), so nothing keeps
//! running unobserved.
//!
//! # Splicing
//!
//! A job that moved is reached through the node it left, whose relay
//! carries its stream on. When the job moves again, the node A whose
//! stream carries the job's session to node B would reach it on C
//! through B. B takes itself out of the path instead, with markers so
//! that nothing is lost or reordered:
//!
//! ```text
//! B -> C   Up::Splice { token, joiner: A }   C holds the job's events
//! C -> B   Down::Spliced                     all output came before it
//! B -> A   Down::Rejoin { node: C, token }   likewise
//! A -> B   Up::PathEnd { job }               A's last word to B for the job
//! A -> C   a new connection: JoinSession { token }  <- Joined
//! B -> C   Up::PathEnd { job: 0 }            B passed on all it had
//! ```
//!
//! C sends the held events on the joined stream and reads it once B's
//! `PathEnd` came (or B's stream ended). Meanwhile C still sends B the
//! job's stdin acknowledgements (B's relay passes on what A sent before
//! its `PathEnd`, within the window). Acknowledgements count per stream,
//! so C rebases those it sends A: A said in `JoinSession` how many bytes
//! it had sent (`sent`); once the old path ended, having brought `old`
//! bytes, a count `t` of C's is `sent + t - old` for A, and nothing is
//! acknowledged to A before `t` reaches `old`. A user's end of input that
//! B's session gets after the rejoin reaches B's relay out of band (its
//! signal channel, as signal 0) and goes on as `StdinEof` before B's
//! `PathEnd`. B's session lets its relay know it wrote all it had by
//! closing the relay's signal channel; a terminal's last input is then
//! read without waiting, as its last output is on B's side once the
//! relay wrote it.
//!
//! A stream of several jobs (`krg run -c`) is spliced job by job: A's
//! `PathEnd` names the job, and B goes on carrying the others on the
//! same stream. A then reaches the session through several streams,
//! each with its own jobs (the joined one numbers its single job 0): it
//! sends every input frame on each (a job takes the stream's stdin
//! whichever way it comes), renumbers each stream's events, and a stream
//! that breaks, or whose node fails, loses only its own jobs. Until the
//! joined stream is there, A sends no input on any stream, so that the
//! job's input has no gap between the old path's `PathEnd` and `sent`.
//!
//! # Output marks
//!
//! `checkpoint` of an application holds each part stopped once its node
//! saved it; the part's output on its way to its stand-in must reach the
//! tree before the tree is saved, or the restarted part would go on
//! after output the restarted tree never got. So the part's node reads
//! what the part's pipes hold now, sends it, then
//! [`Down::OutputMark`]; the reader (the stand-in) answers
//! [`Up::OutputWritten`] with the same mark once it wrote everything
//! before the mark and stopped reading its stdin, and only then does the
//! node answer `checkpoint`. What the part has not read of its input
//! (all the input frames sent before the answer came before it) the
//! node then takes out of the part's stdin and keeps with its SN; when
//! the part runs on, it is written back first and the reader is told
//! [`Down::InputResume`]. Marks pass every hop as any event and input
//! does.

use serde::{Deserialize, Serialize};

pub use crate::credentials::Credentials;
use crate::NodeId;

/// Version of the session stream (checked in [`PeerSession`]).
pub const SESSION_VERSION: u16 = 6;

/// Largest stdio payload one frame carries.
pub const MAX_CHUNK: usize = 256 * 1024;

/// Bytes of stdin a sender may have in flight per job (see the module docs).
pub const STDIN_WINDOW: u64 = 4 * 1024 * 1024;

pub use crate::term::WinSize;

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Program {
    /// `argv[0]`, searched in the `PATH` of the job's environment on the
    /// target node.
    Command,
    /// An executable image shipped with the run (`krg run --push`, XCPU's
    /// `exec` file): `len` bytes follow in [`Up::Image`] frames before any
    /// other input. A script (`#!`) runs with its interpreter found on the
    /// target; only the script itself is shipped.
    Image {
        /// Name shown as the program (the local file name).
        name: String,
        /// Size of the image in bytes.
        len: u64,
    },
    /// `krg push`: write the job's stdin to `path` (created or truncated,
    /// with `mode` for a new file), as the user.
    WriteFile {
        /// Destination on the target; a directory means `dir/name`.
        path: Vec<u8>,
        /// File name to use when `path` is a directory.
        name: Vec<u8>,
        /// Permission bits of a created file.
        mode: u32,
    },
    /// `krg get`: copy the file at `path` to the job's stdout, as the user.
    ReadFile {
        /// The file on the target.
        path: Vec<u8>,
    },
}

/// Everything a target needs to start one kind of job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// What to run.
    pub program: Program,
    /// Arguments, `argv[0]` first (bytes: Unix arguments need not be UTF-8).
    pub argv: Vec<Vec<u8>>,
    /// Environment, `NAME=value` entries.
    pub env: Vec<Vec<u8>>,
    /// Working directory; the run fails if it does not exist on the target.
    pub cwd: Vec<u8>,
    /// Run on a pseudo-terminal of this size (stdout and stderr merged).
    pub tty: Option<WinSize>,
    /// Keep running when the session ends; output goes to files on the
    /// target, stdin is empty.
    pub detach: bool,
    /// Forward stdin; when false the job's stdin is `/dev/null`.
    pub stdin: bool,
}

/// Where a run's jobs go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    /// The scheduler tree's placement policy, else the least-loaded online node.
    Auto,
    /// These nodes (each must be an online member).
    Nodes(Vec<NodeId>),
    /// Every online member.
    AllOnline,
}

/// `krg run`: start `per_node` copies of `spec` on each placed node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// What to run.
    pub spec: JobSpec,
    /// Where.
    pub placement: Placement,
    /// Copies per node (at least 1).
    pub per_node: u32,
}

/// One process of the global process table, as `krg ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRow {
    /// Node it runs on.
    pub node: NodeId,
    /// PID as its job sees it.
    pub pid: i32,
    /// Parent PID as its job sees it (0 for the job's program).
    pub ppid: i32,
    /// Real user id.
    pub uid: u32,
    /// User name on that node (the number when it has none).
    pub user: String,
    /// CPU use since it started, in tenths of a percent of one CPU.
    pub cpu_permille: u32,
    /// Resident memory in KiB.
    pub rss_kib: u64,
    /// State letter as in ps (R, S, D, T, Z, ...).
    pub state: String,
    /// CPU time used, in milliseconds.
    pub cpu_ms: u64,
    /// Seconds since it started.
    pub elapsed_s: u64,
    /// Command line (arguments joined by spaces), or `[name]`.
    pub command: String,
}

/// Requests of the process service on the admin socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcRequest {
    /// Start jobs; the connection becomes a session stream (module docs).
    Run(RunRequest),
    /// The global process table, or part of it.
    Ps {
        /// Only these nodes (default: every online member).
        nodes: Option<Vec<NodeId>>,
        /// Only processes of this uid.
        uid: Option<u32>,
    },
    /// Send `signal` to process `pid` (as its job sees it) on `node`.
    Kill {
        /// The node.
        node: NodeId,
        /// The PID, as the job sees it.
        pid: i32,
        /// The signal number (0 checks that it exists).
        signal: i32,
    },
    /// Move a running process to another node (`migrate`).
    Migrate(crate::migrate::MigrateRequest),
    /// Sent by the stand-in a process that moved away left on this node
    /// (`krg`, executed in its place): the connection becomes the session
    /// stream of the moved process, as for `Run` (module docs). Only the
    /// process krgd turned into the stand-in of transfer `token` may ask.
    StandIn {
        /// The token krgd gave it (its `KRG_STANDIN` variable).
        token: u64,
    },
    /// Restart a checkpoint of a tree that ran in a PID namespace of its
    /// own (a `krg run` job) as a detached job of this node, or of the
    /// node it names: a new namespace, the tree's own PIDs in it
    /// (`restart` sends it, as root).
    RestartJob(RestartJob),
    /// `checkpoint NODE:PID`, or `checkpoint PID` of a stand-in: the
    /// process is saved by the node it runs on (see [`CheckpointAt`]).
    CheckpointAt(CheckpointAt),
    /// `restart` of an application that ran on several nodes: its parts
    /// run again where they were saved (see [`RestoreParts`]). Root only.
    RestoreParts(RestoreParts),
    /// `checkpoint rm` of such an application's SN: a part's SN goes too
    /// (see [`RemoveSaved`]).
    RemoveSaved(RemoveSaved),
    /// `checkpoint` of such an application: a part held stopped while the
    /// tree was saved runs on (see [`ReleaseHeld`]).
    ReleaseHeld(ReleaseHeld),
    /// `checkpoint` of such an application copies a part's SN into the
    /// application's directory: its files, read where it was saved (see
    /// [`ReadSaved`]).
    ReadSaved(ReadSaved),
}

/// Answers of the process service on the admin socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcReply {
    /// The run was accepted: one entry per job, the node it goes to. The
    /// connection is a session stream from now on.
    Session {
        /// Node of each job, by job number.
        jobs: Vec<NodeId>,
    },
    /// The process table.
    Ps {
        /// Processes, by node then PID.
        rows: Vec<ProcRow>,
        /// Nodes that did not answer, and why.
        missing: Vec<(NodeId, String)>,
    },
    /// The signal was sent.
    Killed,
    /// The process moved (or, when `fell_back` says so, came back).
    Migrated(crate::migrate::MigrateReport),
    /// To `CheckpointAt`.
    CheckpointedThere(CheckpointedThere),
    /// A job's checkpoint runs again as a detached job.
    Restarted(JobRestarted),
    /// To `RestoreParts`.
    PartsRestoring(PartsRestoring),
    /// To `RemoveSaved`.
    SavedRemoved,
    /// To `ReleaseHeld`: how long the part was stopped in all, from its
    /// freeze to this release, in microseconds (None: the node's hold
    /// limit had let it run on already).
    HeldReleased {
        /// Its stopped time, as the part saw it.
        stopped_us: Option<u64>,
    },
    /// To `ReadSaved` without a chunk.
    SavedFiles(SavedFiles),
    /// To `ReadSaved` with a chunk: its bytes.
    SavedBytes(#[serde(with = "crate::bytestr::shared")] ::bytes::Bytes),
}

/// The first message of a session connection between krgds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSession {
    /// [`SESSION_VERSION`] of the sender.
    pub version: u16,
    /// What to run.
    pub spec: JobSpec,
    /// Who asked, as the origin's kernel reported it.
    pub creds: Credentials,
    /// How many copies to start.
    pub count: u32,
    /// What the user's `krg run` held on the origin (its krgd checked):
    /// its programs hold it too.
    pub caps: JobCaps,
}

/// The capabilities a user's `krg run` held, which its jobs' programs
/// get (and their descendants inherit), as a shell's children would.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCaps {
    /// CAN_MIGRATE: the jobs may move.
    pub can_migrate: bool,
    /// CHECKPOINTABLE: the jobs may be checkpointed.
    pub checkpointable: bool,
}

/// What one node reports about itself (the `/krg/nodes/<id>/` files, and
/// least-load placement).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStat {
    /// The first three fields of /proc/loadavg.
    pub load: String,
    /// 1-minute load average, in thousandths.
    pub load1_milli: u32,
    /// MemAvailable, in bytes.
    pub mem_free: u64,
    /// Seconds since boot.
    pub uptime_s: u64,
    /// Machine architecture (uname -m).
    pub arch: String,
    /// `uname -a`-like line: system, host, release, version, machine.
    pub uname: String,
    /// Jobs this node's krgd runs.
    pub jobs: u32,
}

/// Requests the process services of two krgds exchange (over `PeerClient`,
/// except [`ProcPeerRequest::Session`], which opens a session connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcPeerRequest {
    /// Open a session on this connection (first message only).
    Session(PeerSession),
    /// This node's share of the process table.
    List {
        /// Only processes of this uid.
        uid: Option<u32>,
    },
    /// Signal a process of this node's table on behalf of `creds`.
    Kill {
        /// PID as its job sees it.
        pid: i32,
        /// Signal number.
        signal: i32,
        /// Who asks.
        creds: Credentials,
    },
    /// Load, memory and system of this node.
    Stat,
    /// Process migration (see [`crate::migrate`]).
    Migrate(crate::migrate::MigratePeerRequest),
    /// From the leader, to a node being removed (`nodes del`): move your
    /// CAN_MIGRATE processes to the other members (the first ask starts
    /// it); are you done?
    HandOver,
    /// Take over a migrating `krg run` job: like `Session`, the first
    /// message of a connection of its own, which then carries the job's
    /// session stream.
    AdoptJob(crate::migrate::AdoptJob),
    /// Carry, on this connection (its first message), the session of the
    /// job a [`Down::Rejoin`] named here.
    JoinSession {
        /// From the rejoin.
        token: u64,
        /// Bytes of stdin the joining node had sent on the old path.
        sent: u64,
    },
    /// Restart a job's checkpoint of this node (`restart NODE:PID SN` on
    /// another node, as root).
    RestartJob {
        /// Which checkpoint (`dir` is this node's default one).
        req: RestartJob,
        /// Who asked, as the asking node's kernel reported it.
        creds: Credentials,
    },
    /// Checkpoint a process of this node, named as `krg ps` shows it
    /// (`checkpoint NODE:PID` on another node, or of a stand-in there).
    Checkpoint {
        /// What to save (`req.node` is this node).
        req: CheckpointAt,
        /// Who asked, as the origin's kernel reported it.
        creds: Credentials,
    },
    /// Run a part of an application this node saved again as a job, and
    /// carry its session on this connection (first message only; see
    /// [`AdoptSaved`]).
    AdoptSaved(AdoptSaved),
    /// Remove a checkpoint SN of this node's store (`checkpoint rm` of an
    /// application one of whose parts this node saved).
    RemoveSaved {
        /// Which (`req.node` is this node).
        req: RemoveSaved,
        /// Who asked, as the asking node's kernel reported it.
        creds: Credentials,
    },
    /// Let a part this node holds stopped run on (see [`ReleaseHeld`]).
    ReleaseHeld {
        /// Which (`req.node` is this node).
        req: ReleaseHeld,
        /// Who asked, as the asking node's kernel reported it.
        creds: Credentials,
    },
    /// Read a saved SN of this node's store (see [`ReadSaved`]).
    ReadSaved {
        /// Which (`req.node` is this node).
        req: ReadSaved,
        /// Who asked, as the asking node's kernel reported it.
        creds: Credentials,
    },
}

/// Answers to [`ProcPeerRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcPeerReply {
    /// To `Session`: the session is open with this many jobs (numbered
    /// from 0), all on the answering node.
    Session {
        /// How many jobs the session has.
        jobs: u32,
    },
    /// To `AdoptJob`: the job runs here, as job 0 of the session that
    /// follows; how long taking it over took, phase by phase (`migrate
    /// --timings` shows them as the target's).
    Adopted {
        /// The target's phases (`target.restart`, `target.restart.*`).
        phases: Vec<crate::migrate::PhaseTime>,
    },
    /// To `List`.
    List(Vec<ProcRow>),
    /// To `Kill`.
    Killed,
    /// To `Stat`.
    Stat(NodeStat),
    /// To `Migrate`.
    Migrate(crate::migrate::MigratePeerReply),
    /// To `HandOver`.
    HandedOver {
        /// The pass over this node's processes has ended (what could not
        /// move stays).
        done: bool,
    },
    /// To `Checkpoint`.
    Checkpointed(CheckpointedThere),
    /// To `RestartJob`.
    Restarted(JobRestarted),
    /// To `JoinSession`: this connection carries the job's session now
    /// (as job 0).
    Joined,
    /// To `RemoveSaved`.
    SavedRemoved,
    /// To `ReleaseHeld`: how long it was stopped (None: not held).
    HeldReleased {
        /// Its stopped time in microseconds.
        stopped_us: Option<u64>,
    },
    /// To `ReadSaved` without a chunk.
    SavedFiles(SavedFiles),
    /// To `ReadSaved` with a chunk: its bytes.
    SavedBytes(#[serde(with = "crate::bytestr::shared")] ::bytes::Bytes),
}

mod signals;
pub use signals::{parse_signal, signal_name};

mod stream;
pub use stream::{Down, ExitStatus, Up};

mod checkpoints;
pub use checkpoints::{
    AdoptSaved, CheckpointAt, CheckpointedThere, JobRestarted, PartsRestoring, ReadSaved,
    ReleaseHeld, RemoveSaved, RestartJob, RestoreParts, SavedChunk, SavedFiles, SavedPart,
    HOLD_LIMIT_SECS, OUTPUT_WRITE_LIMIT_SECS, SAVED_CHUNK_MAX,
};

#[cfg(test)]
mod tests;
