//! A session carried on a local admin connection (`krg run`, or the
//! stand-in of a process that moved away): `Up` frames from the tool into
//! the session, `Down` events back, until either side is done.

use krg_proto::frame::{read_frame, write_frame};
use krg_proto::proc::{Down, Up};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// Carry the session until its events end or the tool leaves (dropping
/// `input` then ends the session).
pub async fn carry(stream: UnixStream, input: mpsc::Sender<Up>, mut events: mpsc::Receiver<Down>) {
    let (mut rd, mut wr) = stream.into_split();
    let reader = tokio::spawn(async move {
        while let Ok(up) = read_frame::<Up, _>(&mut rd).await {
            if input.send(up).await.is_err() {
                return;
            }
        }
    });
    while let Some(ev) = events.recv().await {
        if write_frame(&mut wr, &ev).await.is_err() {
            break;
        }
    }
    reader.abort();
}
