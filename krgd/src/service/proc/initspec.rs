//! What krgd tells a job's init (`krg-init`) and what the init answers.
//!
//! krgd starts `krg-init` as PID 1 of a new PID namespace with these
//! descriptors: 0-2 the job's stdio, [`SPEC_FD`] a pipe carrying one
//! postcard-encoded [`InitSpec`] (read to its end), [`STATUS_FD`] a pipe
//! the init writes [`InitEvent`]s to, and, for a shipped executable,
//! [`IMAGE_FD`] a sealed memfd holding it. The init runs as root with an
//! empty environment (the job's environment is data in the spec, never the
//! init's own, so `LD_PRELOAD` and the like cannot reach a root process);
//! its child takes the job's credentials before it touches anything of the
//! user's (working directory, files, the program).

use serde::{Deserialize, Serialize};

/// Descriptor of the spec pipe in the init.
pub const SPEC_FD: i32 = 3;
/// Descriptor of the status pipe in the init.
pub const STATUS_FD: i32 = 4;
/// Descriptor of the executable image of [`InitProgram::ImageFd`].
pub const IMAGE_FD: i32 = 5;
/// Largest spec accepted (argv and environment are bounded far below).
pub const MAX_SPEC: usize = 8 * 1024 * 1024;

/// How the init's child gets its program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitProgram {
    /// Search `argv[0]` in the `PATH` of the job's environment.
    Search,
    /// Execute the image at [`IMAGE_FD`].
    ImageFd,
    /// Copy stdin into `path` (or `path/name` when `path` is a directory).
    WriteFile {
        /// Destination.
        path: Vec<u8>,
        /// Name inside a destination directory.
        name: Vec<u8>,
        /// Mode of a created file.
        mode: u32,
    },
    /// Copy the file at `path` to stdout.
    ReadFile {
        /// Source.
        path: Vec<u8>,
    },
    /// Start nothing: the program (PID `pid` of the spec) is being
    /// restored into the namespace by `restart` (a job that migrated in);
    /// serve it once it is re-parented here.
    Adopt,
}

/// Everything the init needs to start the job's program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitSpec {
    /// PID the program gets in the job's namespace (2 or more).
    pub pid: i32,
    /// Credentials of the program.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Working directory, entered with the job's credentials.
    pub cwd: Vec<u8>,
    /// Arguments.
    pub argv: Vec<Vec<u8>>,
    /// Environment (`NAME=value`).
    pub env: Vec<Vec<u8>>,
    /// What to run.
    pub program: InitProgram,
    /// stdio is a terminal: the program leads a new session with it as
    /// controlling terminal (else it leads a new process group).
    pub tty: bool,
}

/// Which step of starting the program failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading or decoding the spec.
    Spec = 1,
    /// Choosing the program's PID.
    Pid = 2,
    /// fork.
    Fork = 3,
    /// Taking the job's credentials.
    Credentials = 4,
    /// Entering the working directory.
    Cwd = 5,
    /// The controlling terminal.
    Terminal = 6,
    /// Opening the file of a built-in copy.
    Open = 7,
    /// execve.
    Exec = 8,
    /// The job's mount namespace and `/proc`.
    Proc = 9,
}

impl Stage {
    fn from_u8(b: u8) -> Option<Stage> {
        Some(match b {
            1 => Stage::Spec,
            2 => Stage::Pid,
            3 => Stage::Fork,
            4 => Stage::Credentials,
            5 => Stage::Cwd,
            6 => Stage::Terminal,
            7 => Stage::Open,
            8 => Stage::Exec,
            9 => Stage::Proc,
            _ => return None,
        })
    }
}

/// What the init reports on [`STATUS_FD`], each as [`EVENT_LEN`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitEvent {
    /// The program runs.
    Started,
    /// The program could not start: nothing of the job runs any more.
    Failed {
        /// The step.
        stage: Stage,
        /// errno.
        errno: i32,
    },
    /// The program ended with this wait(2) status.
    Exited {
        /// wait status.
        status: i32,
    },
}

/// Size of one encoded [`InitEvent`].
pub const EVENT_LEN: usize = 9;

impl InitEvent {
    /// `[tag][a: i32 LE][b: i32 LE]`.
    pub fn encode(&self) -> [u8; EVENT_LEN] {
        let (tag, a, b) = match *self {
            InitEvent::Started => (b'S', 0, 0),
            InitEvent::Failed { stage, errno } => (b'E', stage as i32, errno),
            InitEvent::Exited { status } => (b'X', status, 0),
        };
        let mut out = [0u8; EVENT_LEN];
        out[0] = tag;
        out[1..5].copy_from_slice(&a.to_le_bytes());
        out[5..9].copy_from_slice(&b.to_le_bytes());
        out
    }

    /// Decode one event; None for bytes the init never writes.
    pub fn decode(b: &[u8; EVENT_LEN]) -> Option<InitEvent> {
        let a = i32::from_le_bytes([b[1], b[2], b[3], b[4]]);
        let c = i32::from_le_bytes([b[5], b[6], b[7], b[8]]);
        match b[0] {
            b'S' => Some(InitEvent::Started),
            b'E' => Some(InitEvent::Failed {
                stage: Stage::from_u8(u8::try_from(a).ok()?)?,
                errno: c,
            }),
            b'X' => Some(InitEvent::Exited { status: a }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_roundtrip_and_garbage_is_refused() {
        for e in [
            InitEvent::Started,
            InitEvent::Failed {
                stage: Stage::Exec,
                errno: 2,
            },
            InitEvent::Exited { status: 15 },
        ] {
            assert_eq!(InitEvent::decode(&e.encode()), Some(e));
        }
        assert_eq!(InitEvent::decode(&[b'E', 99, 0, 0, 0, 2, 0, 0, 0]), None);
        assert_eq!(InitEvent::decode(&[0; EVENT_LEN]), None);
    }
}
