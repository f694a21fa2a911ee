//! Taking a node out of a moved job's path, on the node that runs the
//! job (the protocol: *Splicing* in `krg_proto::proc`; the relay's side
//! is `migrate::relay`, the joining node's `remote`).
//!
//! [`Waiting`] ([`waiting`]) holds the tokens this node's sessions expect
//! a join with;
//! [`serve_join`] hands a `JoinSession` connection to its session
//! ([`join_here`] makes one for a job that came back to its carrier);
//! [`join`] is the session's wait for it. [`events::EventPath`] is where
//! the session's events go across the splice (stdin acknowledgements
//! rebased), [`reader::Reader`] where its input comes from.

use std::sync::Arc;
use std::time::Duration;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::auth::{Identity, Role};
use krg_proto::peer::{PeerBody, PeerMessage, PeerRequest, PeerResponse};
use krg_proto::proc::{Down, ProcPeerReply, ProcPeerRequest, Up};
use krg_proto::seal::{FrameKeys, Side};
use krg_proto::NodeId;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::sealed::{self, answer, Incoming, Outgoing};
use super::state::ProcState;

/// How long a session waits for the node it told to join it.
pub const JOIN_WAIT: Duration = Duration::from_secs(30);

pub mod events;
pub mod reader;
pub mod waiting;

pub use events::EventPath;
pub use reader::Reader;
pub use waiting::{Joining, Waiting};

/// Serve a `JoinSession` connection of `peer` to node `me`: hand it to
/// the session of `waiting` that waits for it, or refuse it.
pub async fn serve_join(waiting: &Waiting, me: NodeId, joining: Joining, token: u64) {
    let peer = joining.peer;
    let waiting = (peer.role == Role::Node)
        .then(|| waiting.take(token, peer.node))
        .flatten();
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
/// connections from itself), sealed with keys made for it here, whose
/// other end takes its `JoinSession` as the peer listener would. The
/// joining end.
pub async fn join_here(
    waiting: Arc<Waiting>,
    me: Identity,
) -> std::io::Result<(TcpStream, FrameKeys)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (client, (server, _)) = (client?, accepted?);
    let _ = client.set_nodelay(true);
    let secret: [u8; 32] = rand::random();
    let (nonce_c, nonce_s): ([u8; 32], [u8; 32]) = (rand::random(), rand::random());
    let keys = |side| FrameKeys::derive(&secret, &me, &me, &nonce_c, &nonce_s, side);
    let mut server_keys = keys(Side::Server);
    tokio::spawn(async move {
        let mut server = server;
        let Ok(first) = server_keys.opener.read::<PeerMessage, _>(&mut server).await else {
            return;
        };
        let PeerBody::Request(PeerRequest::Proc(ProcPeerRequest::JoinSession { token, sent })) =
            first.body
        else {
            return;
        };
        let joining = Joining {
            stream: server,
            keys: server_keys,
            peer: me,
            sent,
        };
        serve_join(&waiting, me.node, joining, token).await;
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
    /// Bytes of stdin it had sent on the old path.
    pub sent: u64,
}

/// The events that came while the session waited to be joined.
pub type Held = Vec<Down>;

/// At most this many events are held for the joining node; then the
/// session waits (its jobs' output too) until it joined.
const HOLD_MAX: usize = 256;

/// Tell the old path that all the job's output came (`Down::Spliced`),
/// then wait for `joiner` to join with `token`. Meanwhile the job's
/// events are held, but its stdin acknowledgements still go on the old
/// path (the relay there passes on what it still has, within the window).
pub async fn join(
    st: &ProcState,
    path: &mut EventPath,
    events: &mut mpsc::Receiver<Down>,
    token: u64,
    joiner: NodeId,
) -> Result<(Joined, Held), String> {
    let mut rx = st.splices.register(token, joiner);
    if path.send(Down::Spliced { job: 0 }).await.is_err() {
        st.splices.forget(token);
        return Err("the stream of the node it left broke".into());
    }
    let mut held = Vec::new();
    let mut open = true;
    let deadline = tokio::time::sleep(JOIN_WAIT);
    tokio::pin!(deadline);
    let j = loop {
        tokio::select! {
            j = &mut rx => match j {
                Ok(j) => break j,
                Err(_) => return Err("the join was dropped".into()),
            },
            ev = events.recv(), if open && held.len() < HOLD_MAX => match ev {
                Some(ack @ Down::StdinAck { .. }) => {
                    let _ = path.send(ack).await;
                }
                Some(ev) => held.push(ev),
                None => open = false,
            },
            () = &mut deadline => {
                st.splices.forget(token);
                return Err(format!("node {joiner} did not join within {JOIN_WAIT:?}"));
            }
        }
    };
    let Joining {
        mut stream,
        keys,
        peer,
        sent,
    } = j;
    let (opener, mut sealer) = (keys.opener, keys.sealer);
    super::fdio::keepalive(
        &stream,
        st.ctx.config.failure_timeout,
        st.ctx.config.heartbeat,
        3,
    );
    let joined = PeerResponse::Proc(ProcPeerReply::Joined);
    if !answer(&mut stream, &mut sealer, joined).await {
        return Err(format!("node {} left as it joined", peer.node));
    }
    let (rd, w) = stream.into_split();
    let joined = Joined {
        wr: Outgoing::new(w, sealer),
        up: sealed::incoming(rd, opener),
        node: peer.node,
        sent,
    };
    Ok((joined, held))
}
