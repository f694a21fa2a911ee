//! Taking a node out of a moved job's path, on the node that runs the
//! job (the protocol: *Splicing* in `krg_proto::proc`; the relay's side
//! is `migrate::relay`, the joining node's `remote`).
//!
//! [`Waiting`] holds the tokens this node's sessions expect a join with;
//! [`serve_join`] hands a `JoinSession` connection to its session;
//! [`join`] is the session's wait for it; [`Reader`] is the input side of
//! a carried session, which moves to the joined stream once the old path
//! said its last word.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::auth::{Identity, Role};
use krg_proto::cluster::NodeState;
use krg_proto::peer::PeerResponse;
use krg_proto::proc::{Down, ProcPeerReply, Up};
use krg_proto::seal::{FrameKeys, Side};
use krg_proto::NodeId;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::sealed::{self, Incoming, Outgoing};
use super::serve::answer;
use super::state::ProcState;

/// How long a session waits for the node it told to join it.
pub const JOIN_WAIT: Duration = Duration::from_secs(30);

/// A `JoinSession` connection, for the session it names.
pub struct Joining {
    stream: TcpStream,
    keys: FrameKeys,
    peer: Identity,
}

/// The joins this node's sessions wait for: token → (who may join, where
/// the connection goes).
#[derive(Default)]
pub struct Waiting(std::sync::Mutex<HashMap<u64, (NodeId, oneshot::Sender<Joining>)>>);

impl Waiting {
    fn expect(&self, token: u64, joiner: NodeId) -> oneshot::Receiver<Joining> {
        let (tx, rx) = oneshot::channel();
        crate::sync::lock(&self.0).insert(token, (joiner, tx));
        rx
    }

    fn forget(&self, token: u64) {
        crate::sync::lock(&self.0).remove(&token);
    }

    /// The session waiting for `node` with `token`, taken.
    fn take(&self, token: u64, node: NodeId) -> Option<oneshot::Sender<Joining>> {
        let mut w = crate::sync::lock(&self.0);
        match w.get(&token) {
            Some((joiner, _)) if *joiner == node => w.remove(&token).map(|(_, tx)| tx),
            _ => None,
        }
    }
}

/// Serve a `JoinSession` connection of `peer` to node `me`: hand it to
/// the session of `waiting` that waits for it, or refuse it.
pub async fn serve_join(
    waiting: &Waiting,
    me: NodeId,
    stream: TcpStream,
    keys: FrameKeys,
    peer: Identity,
    token: u64,
) {
    let waiting = (peer.role == Role::Node)
        .then(|| waiting.take(token, peer.node))
        .flatten();
    let joining = Joining { stream, keys, peer };
    let refused = match waiting {
        Some(session) => session.send(joining).err(),
        None => Some(joining),
    };
    if let Some(mut j) = refused {
        let e = AdminError::new(
            ErrorKind::NotFound,
            format!(
                "node {me}: no session here waits for node {} to join it",
                j.peer.node
            ),
        );
        answer(&mut j.stream, &mut j.keys.sealer, PeerResponse::Error(e)).await;
    }
}

/// Join, from this node (`me`), a session of `waiting` on this node (a
/// job that moved back to the node whose stream carries its session):
/// over a loopback connection of its own (a krgd does not take peer
/// connections from itself), sealed with keys made for it here. The
/// joining end, whose first frame is the answer.
pub async fn join_here(
    waiting: Arc<Waiting>,
    me: Identity,
    token: u64,
) -> std::io::Result<(TcpStream, FrameKeys)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (client, (server, _)) = (client?, accepted?);
    let _ = client.set_nodelay(true);
    let secret: [u8; 32] = rand::random();
    let (nonce_c, nonce_s): ([u8; 32], [u8; 32]) = (rand::random(), rand::random());
    let keys = |side| FrameKeys::derive(&secret, &me, &me, &nonce_c, &nonce_s, side);
    let server_keys = keys(Side::Server);
    tokio::spawn(async move {
        serve_join(&waiting, me.node, server, server_keys, me, token).await;
    });
    Ok((client, keys(Side::Client)))
}

/// A joined stream: its two halves, and who joined.
pub struct Joined {
    /// Where the session's events go now.
    pub wr: Outgoing,
    /// Where its input comes from, once the old path ended.
    pub up: Incoming<Up>,
    /// The joining node: the session's carrier now.
    pub node: NodeId,
}

/// Tell the old path that all the job's output came (`Down::Spliced` on
/// `wr`), then wait for `joiner` to join with `token`.
pub async fn join(
    st: &ProcState,
    wr: &mut Outgoing,
    token: u64,
    joiner: NodeId,
) -> Result<Joined, String> {
    let rx = st.splices.expect(token, joiner);
    if wr.send(&Down::Spliced { job: 0 }).await.is_err() {
        st.splices.forget(token);
        return Err("the stream of the node it left broke".into());
    }
    let Ok(Ok(j)) = tokio::time::timeout(JOIN_WAIT, rx).await else {
        st.splices.forget(token);
        return Err(format!("node {joiner} did not join within {JOIN_WAIT:?}"));
    };
    let Joining {
        mut stream,
        keys,
        peer,
    } = j;
    let (opener, mut sealer) = (keys.opener, keys.sealer);
    super::fdio::keepalive(
        &stream,
        st.ctx.config.failure_timeout,
        st.ctx.config.heartbeat,
        3,
    );
    if !answer(
        &mut stream,
        &mut sealer,
        PeerResponse::Proc(ProcPeerReply::Joined),
    )
    .await
    {
        return Err(format!("node {} left as it joined", peer.node));
    }
    let (rd, w) = stream.into_split();
    Ok(Joined {
        wr: Outgoing::new(w, sealer),
        up: sealed::incoming(rd, opener),
        node: peer.node,
    })
}

/// The input side of a session carried on a stream: frames into the
/// session, until the origin leaves or fails. A session of one job may be
/// spliced: its `Up::Splice` goes to `splice`, and once that old path
/// ends (its `Up::PathEnd`, or its end) the reader goes on with the
/// joined stream, from `switch`.
pub struct Reader {
    /// The node.
    pub st: Arc<ProcState>,
    /// The session's input.
    pub input: mpsc::Sender<Up>,
    /// Whose stream it reads.
    pub origin: NodeId,
    /// Whether `origin` is a node whose failure ends the session.
    pub watching: bool,
    /// Where a splice asked for goes (None: not this session).
    pub splice: Option<mpsc::Sender<(u64, NodeId)>>,
    /// The joined stream, once there is one.
    pub switch: Option<oneshot::Receiver<(Incoming<Up>, NodeId)>>,
}

impl Reader {
    /// Read until the end: true when the origin is gone, false when the
    /// session ended.
    pub async fn run(mut self, mut up: Incoming<Up>) -> bool {
        let mut view = self.st.ctx.watch_view();
        let mut spliced = false;
        loop {
            tokio::select! {
                frame = up.frames.recv() => {
                    let old_path_over = match frame {
                        Some(Ok(Up::Splice { token, joiner })) => {
                            if let Some(tx) = self.splice.take() {
                                spliced = tx.send((token, joiner)).await.is_ok();
                            }
                            // (the session records its next carrier)
                            if self.input.send(Up::Splice { token, joiner }).await.is_err() {
                                return false;
                            }
                            false
                        }
                        // the end of the path through this node's
                        // relay, or (not spliced here) the carrier's last
                        // word for the session's job that moved on
                        Some(Ok(Up::PathEnd)) if spliced => true,
                        Some(Ok(frame)) => {
                            if self.input.send(frame).await.is_err() {
                                return false;
                            }
                            false
                        }
                        // the node it left may die once it passed the
                        // job on: the joined stream goes on
                        Some(Err(_)) | None if spliced => true,
                        Some(Err(_)) | None => return true,
                    };
                    if old_path_over {
                        let Some(switch) = self.switch.take() else { return true };
                        let Ok((joined, node)) = switch.await else { return true };
                        (up, self.origin, spliced) = (joined, node, false);
                    }
                }
                changed = view.changed(), if self.watching => {
                    if changed.is_err() {
                        self.watching = false;
                        continue;
                    }
                    let failed = matches!(
                        view.borrow_and_update().node(self.origin).map(|n| n.state),
                        Some(NodeState::Failed)
                    );
                    if failed && !spliced {
                        tracing::info!(origin = self.origin, "origin node failed: ending its session");
                        return true;
                    }
                }
            }
        }
    }
}
