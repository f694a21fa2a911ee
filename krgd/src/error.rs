//! Errors that stop krgd from starting or a service from running. A variant
//! keeps the error it comes from as its source, where there is one; its
//! message is one line for the operator (`main` prints it after `krgd: `).

use std::net::SocketAddr;
use std::num::ParseIntError;
use std::path::PathBuf;

use krg_proto::NodeId;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DaemonError {
    /// The config file is not TOML krgd understands. Only the parser's
    /// message is shown: its `Display` adds a multi-line excerpt.
    #[error("configuration: {}: {}", path.display(), source.message())]
    ConfigFile {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// `key=value` on the kernel command line is not a number.
    #[error("configuration: kernel command line has {key}={value}, which is not a number")]
    Cmdline {
        key: &'static str,
        value: String,
        #[source]
        source: ParseIntError,
    },
    /// A setting that is missing, or that parses but cannot be used.
    #[error("configuration: {reason}")]
    InvalidConfig { key: &'static str, reason: String },
    /// Another krgd answers on the admin socket krgd was told to bind.
    #[error("configuration: {} is in use: another krgd is running with this socket", path.display())]
    SocketInUse { path: PathBuf },
    /// Another krgd holds this node's id (it was seen first).
    #[error("configuration: node id {node} is already taken by the krgd at {addr}")]
    IdTaken { node: NodeId, addr: SocketAddr },
    /// The cluster key file is missing, unsafe (others may read or change
    /// it) or holds no usable key.
    #[error(transparent)]
    Key(#[from] krg_proto::KeyFileError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A Raft state file under `--data-dir` is damaged (not a torn last log
    /// record, which is dropped): krgd refuses to guess what it held.
    #[error("Raft state {}: {reason}; move {} away to start this node outside its cluster (then re-add it with `krgadm nodes add`)", path.display(), dir.display())]
    RaftState {
        path: PathBuf,
        dir: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Proto(#[from] krg_proto::ProtoError),
    /// The scheduler tree could not be mounted (FUSE, or its directory).
    #[error("{0}")]
    SchedulerTree(#[source] plugpropol::Error),
    /// A start-up step run on the blocking pool panicked or was cancelled.
    #[error("{what}: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl DaemonError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        DaemonError::Io {
            what: what.into(),
            source,
        }
    }

    /// A setting `key` that cannot be used, and why.
    pub fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        DaemonError::InvalidConfig {
            key,
            reason: reason.into(),
        }
    }
}
