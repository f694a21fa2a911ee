//! The session stream's frames: [`Up`] towards the jobs, [`Down`] from
//! them, and how a job ended ([`ExitStatus`]). The stream itself, its
//! flow control and its splicing are described in the parent module.

use serde::{Deserialize, Serialize};

use super::WinSize;
use crate::refusal::AdminError;
use crate::NodeId;

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// `exit(code)`.
    Code(i32),
    /// Killed by `signal`; `core` if it dumped core.
    Signal {
        /// The signal number.
        signal: i32,
        /// Whether a core was dumped.
        core: bool,
    },
}

impl ExitStatus {
    /// The status a shell reports: the code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match *self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal { signal, .. } => 128 + signal,
        }
    }

    /// Decode a `wait(2)` status word.
    pub fn from_wait_status(status: i32) -> ExitStatus {
        let signal = status & 0x7f;
        if signal == 0 {
            ExitStatus::Code((status >> 8) & 0xff)
        } else {
            ExitStatus::Signal {
                signal,
                core: status & 0x80 != 0,
            }
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit {c}"),
            ExitStatus::Signal { signal, core } => {
                write!(
                    f,
                    "signal {signal}{}",
                    if *core { " (core dumped)" } else { "" }
                )
            }
        }
    }
}

/// Input of a session, towards its jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Up {
    /// A piece of the executable image of [`Program::Image`](super::Program::Image). Shared
    /// buffers: a run on many nodes sends the same piece to each without
    /// copying it per node.
    Image(#[serde(with = "crate::bytestr::shared")] ::bytes::Bytes),
    /// Bytes for the stdin of every job (at most [`MAX_CHUNK`](super::MAX_CHUNK)).
    Stdin(#[serde(with = "crate::bytestr::shared")] ::bytes::Bytes),
    /// End of stdin for every job.
    StdinEof,
    /// Send this signal to every job (delivered by the job's init to the
    /// process group of its program).
    Signal(i32),
    /// The terminal was resized (jobs with a pseudo-terminal).
    WinSize(WinSize),
    /// The reader of stdout went away: close every job's stdout, so that
    /// its next write fails as with a closed pipe (SIGPIPE).
    CloseStdout,
    /// From the relay of a job that moved on, to the node it moved to:
    /// `joiner`, whose stream carried the job's session to the relay's
    /// node, will join the session here with `token` (a
    /// [`ProcPeerRequest::JoinSession`](super::ProcPeerRequest::JoinSession)). See *Splicing* above.
    Splice {
        /// What the joining node will present.
        token: u64,
        /// The node that may join.
        joiner: NodeId,
    },
    /// Nothing more comes on this stream for job `job`: from the joining
    /// node to the relay's node after a [`Down::Rejoin`] (the other jobs
    /// of a stream of several go on on it), then from the relay to the
    /// node that runs the job (job 0 of the session there).
    PathEnd {
        /// The job whose path through this stream ends.
        job: u32,
    },
    /// From the reader of a session: everything that came before the
    /// [`Down::OutputMark`] `mark` is written where the job's output goes
    /// (a stand-in's stdout and stderr), and the reader stopped reading
    /// its stdin after the input frames it sent before this one (until
    /// [`Down::InputResume`]). An unknown mark is ignored.
    OutputWritten {
        /// The mark's number.
        mark: u64,
    },
}

/// Events of a session, from its jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Down {
    /// Job `job` runs on `node` as `pid` (the PID as the job sees it).
    Started {
        /// Job number.
        job: u32,
        /// Node it runs on.
        node: NodeId,
        /// PID of its program, as the job sees it.
        pid: i32,
    },
    /// Job `job` could not start; nothing of it runs.
    Refused {
        /// Job number.
        job: u32,
        /// Node that refused.
        node: NodeId,
        /// Why.
        error: AdminError,
    },
    /// Output on the job's stdout (or its terminal).
    Stdout {
        /// Job number.
        job: u32,
        /// The bytes.
        #[serde(with = "crate::bytestr::owned")]
        data: Vec<u8>,
    },
    /// Output on the job's stderr.
    Stderr {
        /// Job number.
        job: u32,
        /// The bytes.
        #[serde(with = "crate::bytestr::owned")]
        data: Vec<u8>,
    },
    /// The job's stdin has taken `bytes` bytes in total.
    StdinAck {
        /// Job number.
        job: u32,
        /// Total bytes written to its stdin so far.
        bytes: u64,
    },
    /// The job ended.
    Exited {
        /// Job number.
        job: u32,
        /// How.
        status: ExitStatus,
    },
    /// The node running the job stopped answering, or its krgd stopped.
    Lost {
        /// Job number.
        job: u32,
        /// The node.
        node: NodeId,
        /// What happened, one line.
        reason: String,
    },
    /// The job runs detached; its output goes to files in `output` on `node`.
    Detached {
        /// Job number.
        job: u32,
        /// Node it runs on.
        node: NodeId,
        /// PID as the job sees it.
        pid: i32,
        /// Directory holding its `stdout` and `stderr` files.
        output: String,
    },
    /// To the relay that sent [`Up::Splice`]: all the job's output came
    /// before this on this stream; the rest goes to the joining node.
    Spliced {
        /// Job number.
        job: u32,
    },
    /// The job moved on to `node`: join its session there with `token`,
    /// and send [`Up::PathEnd`] on this stream. All its output on this
    /// stream came before this; the rest comes on the joined stream.
    Rejoin {
        /// Job number.
        job: u32,
        /// The node that runs the job now.
        node: NodeId,
        /// What to present there.
        token: u64,
    },
    /// Everything job `job` had written to its stdout and stderr when its
    /// node sent this came before it: the reader answers
    /// [`Up::OutputWritten`] once it wrote all of it out. Sent when a
    /// part of an application is held for its checkpoint, so that the
    /// tree is saved with all the part wrote before its own save.
    OutputMark {
        /// Job number.
        job: u32,
        /// What the answer names.
        mark: u64,
    },
    /// Job `job`, held for a checkpoint since an [`Down::OutputMark`],
    /// runs on: its reader, which stopped reading its stdin at the mark,
    /// reads it again.
    InputResume {
        /// Job number.
        job: u32,
    },
}

impl Down {
    /// The job this event is about.
    pub fn job(&self) -> u32 {
        match self {
            Down::Started { job, .. }
            | Down::Refused { job, .. }
            | Down::Stdout { job, .. }
            | Down::Stderr { job, .. }
            | Down::StdinAck { job, .. }
            | Down::Exited { job, .. }
            | Down::Lost { job, .. }
            | Down::Detached { job, .. }
            | Down::Spliced { job }
            | Down::Rejoin { job, .. }
            | Down::OutputMark { job, .. }
            | Down::InputResume { job } => *job,
        }
    }

    /// Whether this event ends its job.
    pub fn ends_job(&self) -> bool {
        matches!(
            self,
            Down::Refused { .. } | Down::Exited { .. } | Down::Lost { .. } | Down::Detached { .. }
        )
    }

    /// The same event for job number `job`.
    pub fn renumbered(mut self, new: u32) -> Down {
        match &mut self {
            Down::Started { job, .. }
            | Down::Refused { job, .. }
            | Down::Stdout { job, .. }
            | Down::Stderr { job, .. }
            | Down::StdinAck { job, .. }
            | Down::Exited { job, .. }
            | Down::Lost { job, .. }
            | Down::Detached { job, .. }
            | Down::Spliced { job }
            | Down::Rejoin { job, .. }
            | Down::OutputMark { job, .. }
            | Down::InputResume { job } => *job = new,
        }
        self
    }
}
