use thiserror::Error;

/// Errors that stop krgd from starting or a service from running.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cluster key file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Proto(#[from] krg_proto::ProtoError),
    #[error("{0}")]
    Service(String),
}

impl DaemonError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        DaemonError::Io {
            what: what.into(),
            source,
        }
    }
}
