//! Sending a store's changes, and a full copy of it, to a node that keeps
//! a copy: the owner to its mirror, or a mirror handing a store back to
//! its node. One [`Session`] at a time per copy; every send of a session
//! is made under its lock, in the order the state sent was read.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kdfs::mirror::full;
use kdfs::mirror::place::Keeper;
use kdfs::store::Store;
use krg_proto::kdfs::{CopyProgress, KdfsRequest, KdfsResponse, MirrorInventory, MirrorRequest};
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::NodeId;
use tokio::sync::Mutex;

use crate::context::NodeContext;

/// How long one batch may take to reach the copy and be applied.
const SEND_WAIT: Duration = Duration::from_secs(10);

/// A copy being kept: where, and how far.
#[derive(Default)]
pub struct Session {
    /// The node that keeps the copy.
    pub to: Option<NodeId>,
    /// What it keeps: a mirror at its place in the store's list keeps the
    /// inodes of enough copies (`kdfs::mirror::place`), the store's own
    /// node everything.
    pub keeper: Keeper,
    /// What the store sent keeps of its whole (a mirror's partial copy
    /// handing it back: it drops nothing it would not keep).
    pub source: Keeper,
    /// 0: none (a full copy begins one).
    pub id: u64,
    /// The last batch numbered (sent, or being sent).
    pub seq: u64,
    /// The full copy of this session has ended.
    pub synced: bool,
    /// The store's generation, told at `Begin`.
    pub generation: u32,
    /// How far the full copy is, while it runs.
    pub progress: Option<CopyProgress>,
}

/// What became of a send.
pub enum Sent {
    Done,
    /// The copy lost track: copy again.
    Stale,
    /// The copy's node serves the store itself now (it took it over).
    Refused,
    /// The copy's node did not answer.
    Unreachable(String),
}

/// Send `req` about `store`'s copy to `to`; the inventory of a `Begin`.
pub async fn send(
    ctx: &NodeContext,
    to: NodeId,
    store: NodeId,
    req: MirrorRequest,
    wait: Duration,
) -> (Sent, Option<MirrorInventory>) {
    let from = ctx.node_id();
    let req = PeerRequest::Kdfs(KdfsRequest::Mirror { from, store, req });
    match ctx.peers.call(to, req, wait).await {
        Ok(PeerResponse::Kdfs(KdfsResponse::Done)) => (Sent::Done, None),
        Ok(PeerResponse::Kdfs(KdfsResponse::Mirrored(have))) => (Sent::Done, Some(have)),
        Ok(PeerResponse::Kdfs(KdfsResponse::Errno(libc::ESTALE))) => (Sent::Stale, None),
        Ok(PeerResponse::Kdfs(KdfsResponse::Errno(libc::EROFS))) => (Sent::Refused, None),
        Ok(other) => (Sent::Unreachable(format!("answered {other:?}")), None),
        Err(e) => (Sent::Unreachable(e.to_string()), None),
    }
}

/// Send a batch in session `s` (locked by the caller).
pub async fn apply(
    ctx: &NodeContext,
    store: NodeId,
    s: &mut Session,
    changes: Vec<krg_proto::kdfs::MirrorChange>,
) -> Sent {
    let Some(to) = s.to else { return Sent::Done };
    s.seq += 1;
    let req = MirrorRequest::Apply {
        session: s.id,
        seq: s.seq,
        changes,
    };
    send(ctx, to, store, req, SEND_WAIT).await.0
}

/// Send batch `seq` of session `session` to `to` without holding the
/// session: batches sent side by side are applied in `seq` order there.
pub async fn apply_numbered(
    ctx: &NodeContext,
    to: NodeId,
    store: NodeId,
    session: u64,
    seq: u64,
    changes: Vec<krg_proto::kdfs::MirrorChange>,
) -> Sent {
    let req = MirrorRequest::Apply {
        session,
        seq,
        changes,
    };
    send(ctx, to, store, req, SEND_WAIT).await.0
}

/// Begin a session with `to` and copy all of `src` (node `store`'s store)
/// there, step by step, each step under `session`'s lock so that changes
/// sent meanwhile keep their order; end with `Synced`.
pub async fn full_copy(
    ctx: &Arc<NodeContext>,
    session: &Mutex<Session>,
    src: &Arc<Store>,
    store: NodeId,
    to: NodeId,
) -> Result<(), String> {
    let id = rand::random::<u64>() | 1;
    let mut s = session.lock().await;
    if s.to != Some(to) {
        return Ok(());
    }
    let begin = MirrorRequest::Begin {
        session: id,
        generation: s.generation,
    };
    let have = match send(ctx, to, store, begin, SEND_WAIT).await {
        (Sent::Done, Some(have)) => have,
        (Sent::Refused, _) => return Err(format!("node {to} serves this store itself")),
        _ => return Err(format!("node {to} did not begin a copy")),
    };
    (s.id, s.seq, s.synced) = (id, 0, false);
    let keeper = s.keeper;
    let mut steps: VecDeque<_> = full::plan(src, &have, keeper, s.source)
        .map_err(|e| e.to_string())?
        .into();
    let mut progress = CopyProgress {
        of: steps.iter().filter(|s| s.is_object()).count() as u64,
        ..CopyProgress::default()
    };
    s.progress = Some(progress);
    drop(s);
    let (started, mut bytes) = (Instant::now(), 0usize);
    while let Some(step) = steps.pop_front() {
        let mut s = session.lock().await;
        if s.id != id {
            return Err("the session ended meanwhile".into());
        }
        let (changes, more) = full::step(src, &step, &have, keeper).map_err(|e| e.to_string())?;
        progress.done += u64::from(step.is_object());
        if !changes.is_empty() {
            bytes += kdfs::mirror::weight(&changes);
            progress.bytes = bytes as u64;
            match apply(ctx, store, &mut s, changes).await {
                Sent::Done => {}
                Sent::Stale => return Err(format!("node {to} lost track of the copy")),
                Sent::Refused => return Err(format!("node {to} serves this store itself")),
                Sent::Unreachable(why) => return Err(why),
            }
        }
        s.progress = Some(progress);
        for m in more.into_iter().rev() {
            steps.push_front(m);
        }
    }
    let mut s = session.lock().await;
    if s.id != id {
        return Err("the session ended meanwhile".into());
    }
    let done = MirrorRequest::Synced {
        session: id,
        seq: s.seq,
    };
    match send(ctx, to, store, done, SEND_WAIT).await.0 {
        Sent::Done => {
            (s.synced, s.progress) = (true, None);
            tracing::info!(
                to,
                store,
                bytes,
                secs = started.elapsed().as_secs_f64(),
                "kdfs mirror: full copy done"
            );
            Ok(())
        }
        _ => Err(format!("node {to} did not take the end of the copy")),
    }
}
