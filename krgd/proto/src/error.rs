//! The one error type of krg-proto: everything that can go wrong reading,
//! writing or authenticating krg messages, each a line a CLI can print.

use thiserror::Error;

/// Everything that can go wrong reading or writing krg messages.
#[derive(Debug, Error)]
pub enum ProtoError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A header announced more than the reader accepts; nothing was read.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Bytes announced.
        len: usize,
        /// Bytes accepted at this point of the connection.
        max: usize,
    },
    /// A plain frame's payload does not match its CRC32.
    #[error("frame checksum mismatch (expected {expected:#010x}, got {actual:#010x})")]
    BadChecksum {
        /// The checksum in the header.
        expected: u32,
        /// The checksum of the payload received.
        actual: u32,
    },
    /// A sealed frame failed authentication: the connection must be closed.
    #[error("frame failed authentication (altered, injected, replayed or out of order): connection closed")]
    Forged,
    /// This direction of the connection sealed 2^64 frames; reopen it.
    #[error("frame counter exhausted: the connection must be reopened")]
    NonceExhausted,
    /// The payload is not a valid message of the expected type.
    #[error("malformed message: {0}")]
    Decode(String),
    /// A message could not be encoded (or would exceed the frame limit).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The other end closed the connection cleanly between frames.
    #[error("connection closed by peer")]
    Closed,
    /// The other end does not hold the cluster key (or refused ours).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The other end refused the connection, with its reason (another
    /// session or protocol version, an id already taken, …).
    #[error("peer refused the connection: {0}")]
    Refused(String),
    /// No answer within this time.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// A valid message, but not one that may come at this point.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// The local krgd's admin socket could not be connected to.
    #[error("{}", unreachable_message(path, err))]
    AdminSocket {
        /// The socket's path.
        path: std::path::PathBuf,
        /// What connect(2) said.
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
