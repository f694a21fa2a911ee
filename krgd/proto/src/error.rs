//! The one error type of krg-proto: everything that can go wrong reading,
//! writing or authenticating krg messages, each a line a CLI can print.

use thiserror::Error;

/// Everything that can go wrong reading or writing krg messages.
#[derive(Debug, Error)]
pub enum ProtoError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame checksum mismatch (expected {expected:#010x}, got {actual:#010x})")]
    BadChecksum { expected: u32, actual: u32 },
    #[error("frame failed authentication (altered, injected, replayed or out of order): connection closed")]
    Forged,
    #[error("frame counter exhausted: the connection must be reopened")]
    NonceExhausted,
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
    #[error("connection closed by peer")]
    Closed,
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("peer refused the connection: {0}")]
    Refused(String),
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// The local krgd's admin socket could not be connected to.
    #[error("{}", unreachable_message(path, err))]
    AdminSocket {
        path: std::path::PathBuf,
        #[source]
        err: std::io::Error,
    },
}

/// One line that says what is wrong with the admin socket, not only that
/// it failed.
fn unreachable_message(path: &std::path::Path, err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let p = path.display();
    match err.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
            format!("no krgd listens at {p} (is krgd running on this node? --socket or KRG_SOCKET name another)")
        }
        ErrorKind::PermissionDenied => format!(
            "{p}: permission denied: the socket or a directory above it does not let this user in (krgd creates it 0666 in a 0755 directory; ask the administrator)"
        ),
        _ => format!("cannot connect to krgd at {p}: {err}"),
    }
}
