//! The one error type of the nfsroot library.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NfsrootError {
    /// The description file could not be parsed.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },

    /// The description parsed but is inconsistent. `field` names the key
    /// (`node[2].ip`), `node` the node it concerns, when there is one.
    #[error("{}{field}: {message}", node.as_ref().map(|n| format!("node {n}: ")).unwrap_or_default())]
    Invalid {
        field: String,
        node: Option<String>,
        message: String,
    },

    /// A file system operation failed.
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },

    /// An external tool (dhcpd, dnsmasq, debootstrap, btrfs, cp, mount) failed.
    #[error("{tool} failed: {message}")]
    Tool { tool: String, message: String },

    /// An image operation was refused (unknown image, name taken, ...).
    #[error("{0}")]
    Image(String),
}

impl NfsrootError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        NfsrootError::Io {
            what: what.into(),
            err: source,
        }
    }

    pub fn invalid(
        field: impl Into<String>,
        node: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        NfsrootError::Invalid {
            field: field.into(),
            node: node.map(str::to_string),
            message: message.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, NfsrootError>;
