//! The TCP listener other krgds (and tools holding the cluster key) connect
//! to. Every connection is authenticated before any request is read; answers
//! go back on the same connection tagged with the request id. A connection
//! whose first request opens a process session is handed to the process
//! service whole.
//!
//! Until it has authenticated, a connection is held under
//! [`PREAUTH_PER_SOURCE`] / [`PREAUTH_TOTAL`] (the oldest is evicted to make
//! room, see [`limits`](super::limits)), reads handshake frames of at most
//! 4 KiB, and must finish within the handshake deadline: a flood of
//! connections costs krgd a bounded few KiB each, whatever they announce.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use krg_proto::auth::{server_handshake, Identity, Role};
use krg_proto::peer::{PeerBody, PeerMessage, PeerRequest};
use krg_proto::proc::ProcPeerRequest;
use krg_proto::seal::Encoded;
use krg_proto::ProtoError;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::limits::{Limits, LogBudget, LogTurn, Slot};
use crate::node::Node;

/// Connections from one source address that may be authenticating at once.
/// Loopback test clusters run every node on 127.0.0.1, hence not fewer.
pub const PREAUTH_PER_SOURCE: usize = 32;
/// Connections that may be authenticating at once, all sources together.
pub const PREAUTH_TOTAL: usize = 256;

/// What the accept loop shares with its connections.
struct Gate {
    limits: Arc<Limits<IpAddr>>,
    /// Failed handshakes: a flood must not flood the log too.
    refusals: LogBudget,
    evictions: LogBudget,
}

pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    let gate = Arc::new(Gate {
        limits: Limits::new(PREAUTH_PER_SOURCE, PREAUTH_TOTAL),
        refusals: LogBudget::new(20, Duration::from_secs(10)),
        evictions: LogBudget::new(1, Duration::from_secs(10)),
    });
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let (slot, evicted) = gate.limits.admit_evicting(addr.ip());
                if evicted > 0 {
                    match gate.evictions.take() {
                        LogTurn::Quiet => {}
                        LogTurn::Line | LogTurn::Summary(_) => tracing::warn!(%addr,
                            per_source = PREAUTH_PER_SOURCE, total = PREAUTH_TOTAL,
                            "too many unauthenticated peer connections: dropping the oldest \
                             (logged once per 10 s)"),
                    }
                }
                let node = node.clone();
                let gate = gate.clone();
                tokio::spawn(async move { serve_connection(stream, addr, node, gate, slot).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    addr: SocketAddr,
    node: Arc<Node>,
    gate: Arc<Gate>,
    mut slot: Slot<IpAddr>,
) {
    let _ = stream.set_nodelay(true);
    let me = node.ctx.me;
    let admit = |who: &Identity| {
        if who.role == Role::Node && who.node == me.node {
            Err(format!(
                "node id {} is already taken by the krgd at {}",
                who.node, node.ctx.config.advertise
            ))
        } else {
            Ok(())
        }
    };
    let handshake = server_handshake(&mut stream, &node.ctx.key, me, admit);
    let result = tokio::select! {
        r = handshake => r,
        () = slot.evicted() => {
            tracing::debug!(%addr, "unauthenticated connection evicted");
            return;
        }
    };
    // Authenticated peers no longer count against the pre-auth limits.
    drop(slot);
    let auth = match result {
        Ok(a) => a,
        Err(e) => {
            match gate.refusals.take() {
                LogTurn::Quiet => {}
                LogTurn::Line => tracing::warn!(%addr, error = %e, "refused peer connection"),
                LogTurn::Summary(n) => tracing::warn!(%addr, error = %e, unlogged = n,
                    "refused peer connection ({n} more refusals in the last 10 s not logged)"),
            }
            return;
        }
    };
    let peer = auth.peer;
    let mut keys = auth.keys;
    tracing::debug!(%addr, peer = peer.node, "peer connected");
    // A connection whose first message opens a session (`krg run` from
    // another node) carries that session's stream, nothing else.
    let first: PeerMessage = match keys.opener.read(&mut stream).await {
        Ok(m) => m,
        Err(ProtoError::Closed) => return,
        Err(e) => {
            tracing::warn!(%addr, peer = peer.node, error = %e, "dropping peer connection after a bad frame");
            return;
        }
    };
    let first = match first.body {
        PeerBody::Request(PeerRequest::Proc(ProcPeerRequest::Session(open))) => {
            node.proc.serve_session(stream, keys, peer, open).await;
            return;
        }
        PeerBody::Request(PeerRequest::Proc(ProcPeerRequest::AdoptJob(open))) => {
            node.proc.serve_adopt(stream, keys, peer, open).await;
            return;
        }
        PeerBody::Request(PeerRequest::Proc(ProcPeerRequest::AdoptSaved(open))) => {
            node.proc.serve_adopt_saved(stream, keys, peer, open).await;
            return;
        }
        PeerBody::Request(PeerRequest::Proc(ProcPeerRequest::JoinSession { token, sent })) => {
            node.proc.serve_join(stream, keys, peer, token, sent).await;
            return;
        }
        body => PeerMessage { id: first.id, body },
    };
    let mut first = Some(first);
    let (mut opener, mut sealer) = (keys.opener, keys.sealer);
    let (mut rd, mut wr) = stream.into_split();
    // One writer task so concurrent handlers never interleave frames, and
    // frames are sealed in the order they are written.
    let (tx, mut rx) = mpsc::channel::<Encoded>(256);
    let writer = tokio::spawn(async move {
        while let Some(encoded) = rx.recv().await {
            let frame = match sealer.seal(encoded) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(%addr, peer = peer.node, error = %e, "closing peer connection");
                    break;
                }
            };
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    loop {
        let next = match first.take() {
            Some(m) => Ok(m),
            None => opener.read(&mut rd).await,
        };
        let msg: PeerMessage = match next {
            Ok(m) => m,
            Err(ProtoError::Closed) => break,
            Err(e) => {
                tracing::warn!(%addr, peer = peer.node, error = %e, "dropping peer connection after a bad frame");
                break;
            }
        };
        let PeerBody::Request(req) = msg.body else {
            continue;
        };
        let node = node.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let resp = crate::router::peer(&node, &peer, req).await;
            match Encoded::new(&PeerMessage {
                id: msg.id,
                body: PeerBody::Response(resp),
            }) {
                Ok(encoded) => {
                    let _ = tx.send(encoded).await;
                }
                Err(e) => tracing::error!(error = %e, "cannot encode a peer response"),
            }
        });
    }
    drop(tx);
    let _ = writer.await;
}
