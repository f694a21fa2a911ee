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
}
