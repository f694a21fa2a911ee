//! The target's side of a session another krgd opened: check who asks,
//! start the jobs, then carry the session stream until every job ended.
//!
//! The session ends (its jobs not detached are killed) when the origin
//! closes the connection, when the connection breaks (the origin's krgd
//! died; TCP keepalive notices a silent origin within seconds), or when
//! the membership service marks the origin node failed.

use std::sync::Arc;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::auth::{Identity, Role};
use krg_proto::peer::PeerResponse;
use krg_proto::proc::{PeerSession, ProcPeerReply, Up, SESSION_VERSION};
use krg_proto::seal::{FrameKeys, Sealer};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::creds::{self, Origin};
use super::detach;
use super::sealed::{self, answer, Outgoing, DRAIN_LIMIT};
use super::session::{self, Params, Session};
use super::splice;
use super::state::{ProcState, MAX_PER_NODE};

/// How long a request from a node that is not a member in this node's
/// view waits for the view to say it is (see [`origin_of`]).
const MEMBER_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);

/// Where a request from `peer` comes from, for the root rule.
///
/// A node that has just joined may be asked before it has caught up with
/// the log (the leader commits its join on a majority, then replicates
/// the log to it) or published what it applied: a krgd node that is not a
/// member in this node's view is given [`MEMBER_CATCH_UP`] to become one.
/// (`krg run -a` at once after a 100-node cluster formed was refused by a
/// node that did not know node 1 yet.)
pub async fn origin_of(st: &ProcState, peer: &Identity) -> Origin {
    if peer.role != Role::Node {
        return Origin::Outsider(peer.node);
    }
    let views = st.ctx.watch_view();
    if crate::context::member_within(views, peer.node, MEMBER_CATCH_UP).await {
        Origin::Member(peer.node)
    } else {
        Origin::Outsider(peer.node)
    }
}

/// Serve one session connection opened by `peer`.
pub async fn serve(
    st: Arc<ProcState>,
    mut stream: TcpStream,
    keys: FrameKeys,
    peer: Identity,
    open: PeerSession,
) {
    let (opener, mut sealer) = (keys.opener, keys.sealer);
    let me = st.node();
    let checked = if open.version != SESSION_VERSION {
        Err(AdminError::new(
            ErrorKind::InvalidArgument,
            format!(
                "node {me} speaks session version {SESSION_VERSION}, node {} sent {}",
                peer.node, open.version
            ),
        ))
    } else if open.count == 0 || open.count > MAX_PER_NODE {
        Err(AdminError::new(
            ErrorKind::InvalidArgument,
            format!(
                "{} copies per node; 1 to {} are allowed",
                open.count, MAX_PER_NODE
            ),
        ))
    } else {
        let origin = origin_of(&st, &peer).await;
        st.check_available()
            .and_then(|()| creds::check(&open.creds, st.policy, origin, me))
            .and_then(|()| super::job::validate(&open.spec, me))
    };
    if let Err(e) = checked {
        tracing::info!(from = peer.node, uid = open.creds.uid, error = %e.message, "session refused");
        answer(&mut stream, &mut sealer, PeerResponse::Error(e)).await;
        return;
    }
    tracing::debug!(
        from = peer.node,
        uid = open.creds.uid,
        count = open.count,
        "session opened"
    );
    let sess = session::spawn(
        st.clone(),
        Params {
            spec: open.spec,
            creds: open.creds,
            count: open.count,
            origin: peer.node,
            caps: open.caps,
        },
    );
    let jobs = sess.jobs;
    let keys = FrameKeys { opener, sealer };
    carry(
        st,
        stream,
        keys,
        peer,
        sess,
        ProcPeerReply::Session { jobs },
        None,
    )
    .await;
}

/// Refuse a session connection with `e`.
pub async fn answer_error(stream: &mut TcpStream, sealer: &mut Sealer, e: AdminError) {
    answer(stream, sealer, PeerResponse::Error(e)).await;
}

/// Answer `opened`, then carry the session stream of `sess` on `stream`
/// until every job ended, the origin left, or it failed; then, with
/// `outlives`, a detached job runs on, its output into files here. A
/// session of one job may be joined by another node on the way (see
/// [`splice`](super::splice)): it goes on on the joined stream.
pub async fn carry(
    st: Arc<ProcState>,
    stream: TcpStream,
    keys: FrameKeys,
    peer: Identity,
    sess: Session,
    opened: ProcPeerReply,
    outlives: Option<detach::Outlives>,
) {
    let (opener, mut sealer) = (keys.opener, keys.sealer);
    let mut stream = stream;
    super::fdio::keepalive(
        &stream,
        st.ctx.config.failure_timeout,
        st.ctx.config.heartbeat,
        3,
    );
    if !answer(&mut stream, &mut sealer, PeerResponse::Proc(opened)).await {
        return; // dropping the session kills its jobs
    }
    let (rd, wr) = stream.into_split();
    let up = sealed::incoming::<Up>(rd, opener);
    let mut path = splice::EventPath::new(Outgoing::new(wr, sealer));
    let Session {
        jobs,
        input,
        mut events,
    } = sess;
    let (splice_tx, mut splice_rx) = mpsc::channel(1);
    let (switch_tx, switch_rx) = oneshot::channel();
    let mut switch_tx = Some(switch_tx);
    let (old_end_tx, mut old_end) = oneshot::channel();
    let reader = splice::Reader {
        st: st.clone(),
        input,
        origin: peer.node,
        watching: peer.role == Role::Node,
        jobs,
        splice: (jobs == 1).then_some(splice_tx),
        switch: Some(switch_rx),
        old_end: Some(old_end_tx),
    };
    // (true: the origin is gone; false: the session ended)
    let mut reader = tokio::spawn(reader.run(up));
    let (mut reading, mut asked, mut old_path) = (true, true, true);
    let origin_gone = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => {
                    if path.send(ev).await.is_err() {
                        break true;
                    }
                }
                None => break false,
            },
            gone = &mut reader, if reading => {
                reading = false;
                if gone.unwrap_or(true) {
                    break true;
                }
            }
            ask = splice_rx.recv(), if asked => {
                let Some((token, joiner)) = ask else {
                    asked = false;
                    continue;
                };
                match splice::join(&st, &mut path, &mut events, token, joiner).await {
                    Ok((joined, held)) => {
                        tracing::info!(joiner, left = peer.node, "a moved job's session joined here; the node it left passes on its last input");
                        path.spliced(joined.wr, joined.sent);
                        if let Some(tx) = switch_tx.take() {
                            let _ = tx.send((joined.up, joined.node));
                        }
                        if path.send_all(held).await.is_err() {
                            break true;
                        }
                    }
                    Err(why) => {
                        tracing::warn!(%why, "a moved job's session was not joined: it ends");
                        break true;
                    }
                }
            }
            old = &mut old_end, if old_path => {
                old_path = false;
                if let Ok(old) = old {
                    if path.old_path_ended(old, peer.node).await.is_err() {
                        break true;
                    }
                }
            }
        }
    };
    if origin_gone {
        reader.abort();
    } else {
        // Every event is written: the origin reads the end of the stream
        // after them, then closes its side. Until it does, its input is
        // read on: closing with some of it unread would reset the
        // connection, and the reset would throw away the end of what was
        // written — the last output, the exit statuses — when the origin
        // was slow to read (its user's pipe full).
        drop(path);
    }
    // A reader that ended already read everything: its handle gave its
    // result in the loop and must not be awaited again (tokio panics).
    if !origin_gone && reading {
        tokio::spawn(async move {
            if tokio::time::timeout(DRAIN_LIMIT, &mut reader)
                .await
                .is_err()
            {
                reader.abort();
            }
        });
    }
    if let Some(o) = outlives.filter(|_| origin_gone) {
        detach::carry_on(&st.detach_dir, o, events).await;
    }
}
