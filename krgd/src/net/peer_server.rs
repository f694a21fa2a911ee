//! The TCP listener other krgds (and tools holding the cluster key) connect
//! to. Every connection is authenticated before any request is read; answers
//! go back on the same connection tagged with the request id. A connection
//! whose first request opens a process session is handed to the process
//! service whole.

use std::net::SocketAddr;
use std::sync::Arc;

use krg_proto::auth::{server_handshake, Identity, Role};
use krg_proto::frame::{encode, read_frame};
use krg_proto::peer::{PeerBody, PeerMessage, PeerRequest};
use krg_proto::proc::ProcPeerRequest;
use krg_proto::ProtoError;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::node::Node;

pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let node = node.clone();
                tokio::spawn(async move { serve_connection(stream, addr, node).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(mut stream: TcpStream, addr: SocketAddr, node: Arc<Node>) {
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
    let peer = match server_handshake(&mut stream, &node.ctx.key, me, admit).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "refused peer connection");
            return;
        }
    };
    tracing::debug!(%addr, peer = peer.node, "peer connected");
    // A connection whose first message opens a session (`krg run` from
    // another node) carries that session's stream, nothing else.
    let first: PeerMessage = match read_frame(&mut stream).await {
        Ok(m) => m,
        Err(ProtoError::Closed) => return,
        Err(e) => {
            tracing::warn!(%addr, peer = peer.node, error = %e, "dropping peer connection after a bad frame");
            return;
        }
    };
    let first = match first.body {
        PeerBody::Request(PeerRequest::Proc(ProcPeerRequest::Session(open))) => {
            node.proc.serve_session(stream, peer, open).await;
            return;
        }
        body => PeerMessage { id: first.id, body },
    };
    let mut first = Some(first);
    let (mut rd, mut wr) = stream.into_split();
    // One writer task so concurrent handlers never interleave frames.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
    let writer = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    loop {
        let next = match first.take() {
            Some(m) => Ok(m),
            None => read_frame(&mut rd).await,
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
            match encode(&PeerMessage {
                id: msg.id,
                body: PeerBody::Response(resp),
            }) {
                Ok(bytes) => {
                    let _ = tx.send(bytes).await;
                }
                Err(e) => tracing::error!(error = %e, "cannot encode a peer response"),
            }
        });
    }
    drop(tx);
    let _ = writer.await;
}
