//! A session connection after its handshake: every frame is sealed
//! (`krg_proto::seal`) like on any peer connection. Reading runs in a task
//! of its own so that callers can wait for the next frame in `select!`
//! without ever dropping a half-read one (which would desynchronise the
//! frame counter and fail the connection).

use krg_proto::peer::{PeerBody, PeerMessage, PeerResponse};
use krg_proto::seal::{Opener, Sealer};
use krg_proto::ProtoError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a stream this node is done with is read, at most, waiting
/// for the node at its other end to close it (see [`drain`]).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// The frames of one direction, as they arrive; the last item is the error
/// that ended the stream (`ProtoError::Closed` on a clean end).
pub struct Incoming<T> {
    pub frames: mpsc::Receiver<Result<T, ProtoError>>,
    task: JoinHandle<()>,
}

impl<T> Drop for Incoming<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start reading frames of type `T` from `rd`.
pub fn incoming<T>(mut rd: OwnedReadHalf, mut opener: Opener) -> Incoming<T>
where
    T: DeserializeOwned + Send + 'static,
{
    let (tx, frames) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            let frame = opener.read::<T, _>(&mut rd).await;
            let end = frame.is_err();
            if tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    Incoming { frames, task }
}

/// Read and discard what the other end still sends on a stream this node
/// is done with, until it closes it (at most [`DRAIN_LIMIT`]). A socket
/// closed with bytes unread is reset, and a reset throws away what this
/// end had not sent yet — a session's last output and its jobs' exit
/// statuses, or a job's last input, when the other end was slow to read
/// — and the other end then takes the session as broken.
pub async fn drain<T>(mut incoming: Incoming<T>) {
    let rest = async { while incoming.frames.recv().await.is_some() {} };
    let _ = tokio::time::timeout(DRAIN_LIMIT, rest).await;
}

/// The writing half: frames sealed in the order they are written.
pub struct Outgoing {
    wr: OwnedWriteHalf,
    sealer: Sealer,
}

impl Outgoing {
    pub fn new(wr: OwnedWriteHalf, sealer: Sealer) -> Self {
        Self { wr, sealer }
    }

    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ProtoError> {
        self.sealer.write(&mut self.wr, msg).await
    }

    /// Close the writing direction: the other end reads the end of stream.
    pub async fn shutdown(mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.wr.shutdown().await;
    }
}

/// Write one response on a session connection (its first answer, or a
/// refusal); false if the connection failed.
pub async fn answer(
    stream: &mut tokio::net::TcpStream,
    sealer: &mut Sealer,
    body: PeerResponse,
) -> bool {
    let msg = PeerMessage {
        id: 0,
        body: PeerBody::Response(body),
    };
    sealer.write(stream, &msg).await.is_ok()
}
