//! Async clients: [`AdminClient`] for a node's Unix socket, [`PeerClient`] for
//! an authenticated, multiplexed TCP link to a krgd.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::oneshot;

use crate::admin::{AdminRequest, AdminResponse};
use crate::auth::{client_handshake, ClusterKey, Identity};
use crate::frame::{read_frame, write_frame};
use crate::peer::{PeerBody, PeerMessage, PeerRequest, PeerResponse};
use crate::seal::{Encoded, Sealer};
use crate::ProtoError;

/// A connection to the local krgd's admin socket.
pub struct AdminClient {
    stream: UnixStream,
}

impl AdminClient {
    /// Connect to the admin socket at `path`; the error says whether no
    /// krgd listens there or this user may not reach it.
    pub async fn connect(path: &Path) -> Result<Self, ProtoError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|err| ProtoError::AdminSocket {
                path: path.to_path_buf(),
                err,
            })?;
        Ok(Self { stream })
    }

    /// Send one request and wait for its answer.
    pub async fn call(&mut self, req: &AdminRequest) -> Result<AdminResponse, ProtoError> {
        if let Err(e) = write_frame(&mut self.stream, req).await {
            // krgd refuses a connection over its limits with an answer
            // and closes it before reading: that answer says why.
            return read_frame(&mut self.stream).await.map_err(|_| e);
        }
        read_frame(&mut self.stream).await
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<PeerResponse>>>>;

/// One authenticated TCP connection to a krgd, shared by many concurrent
/// callers; every frame on it is sealed. Drop it (or let the peer close)
/// and outstanding calls fail with [`ProtoError::Closed`]. A frame that
/// fails authentication closes it (and is logged).
pub struct PeerClient {
    peer: Identity,
    /// The write half and its sealer: frames are sealed in the order they
    /// are written, under one lock.
    writer: tokio::sync::Mutex<(OwnedWriteHalf, Sealer)>,
    pending: Pending,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

impl PeerClient {
    /// Connect to `addr`, authenticate both ways, and start the reader task.
    pub async fn connect(
        addr: SocketAddr,
        key: &ClusterKey,
        me: Identity,
        connect_timeout: Duration,
    ) -> Result<Self, ProtoError> {
        let mut stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ProtoError::Timeout(connect_timeout))??;
        stream.set_nodelay(true)?;
        let auth = client_handshake(&mut stream, key, me).await?;
        let peer = auth.peer;
        let (mut opener, sealer) = (auth.keys.opener, auth.keys.sealer);
        let (mut rd, wr) = stream.into_split();
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let reader = {
            let pending = pending.clone();
            let alive = alive.clone();
            tokio::spawn(async move {
                loop {
                    let msg = match opener.read::<PeerMessage, _>(&mut rd).await {
                        Ok(msg) => msg,
                        Err(ProtoError::Closed) => break,
                        Err(e) => {
                            tracing::warn!(%addr, peer = peer.node, error = %e,
                                "dropping peer connection after a bad frame");
                            break;
                        }
                    };
                    if let PeerBody::Response(resp) = msg.body {
                        let waiter = pending.lock().ok().and_then(|mut p| p.remove(&msg.id));
                        if let Some(tx) = waiter {
                            let _ = tx.send(resp);
                        }
                    }
                }
                alive.store(false, Ordering::SeqCst);
                // Dropping the senders wakes every waiter with an error.
                if let Ok(mut p) = pending.lock() {
                    p.clear();
                }
            })
        };
        Ok(Self {
            peer,
            writer: tokio::sync::Mutex::new((wr, sealer)),
            pending,
            next_id: AtomicU64::new(1),
            alive,
            reader,
        })
    }

    /// The authenticated identity of the other end.
    pub fn peer(&self) -> Identity {
        self.peer
    }

    /// False once the connection has closed; a pool should reconnect.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Send `req` and wait at most `timeout` for its answer.
    pub async fn call(
        &self,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, ProtoError> {
        if !self.is_alive() {
            return Err(ProtoError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| ProtoError::Closed)?
            .insert(id, tx);
        let encoded = Encoded::new(&PeerMessage {
            id,
            body: PeerBody::Request(req),
        });
        let sent = match encoded {
            Ok(encoded) => {
                let mut w = self.writer.lock().await;
                let (half, sealer) = &mut *w;
                match sealer.seal(encoded) {
                    Ok(frame) => half.write_all(&frame).await.map_err(ProtoError::from),
                    Err(e) => {
                        // Out of nonces: this connection is done.
                        self.alive.store(false, Ordering::SeqCst);
                        Err(e)
                    }
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            self.forget(id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(ProtoError::Closed),
            Err(_) => {
                self.forget(id);
                Err(ProtoError::Timeout(timeout))
            }
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
    }
}

impl Drop for PeerClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
