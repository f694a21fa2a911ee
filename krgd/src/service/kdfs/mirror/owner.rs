//! The owner's side: every change to this node's store reaches its mirror
//! before the change is answered.
//!
//! One session at a time with the mirror. It starts with `Begin` (the
//! mirror says what it holds) and a full copy, step by step, while the
//! changes made meanwhile are sent too; `Synced` ends the copy. All sends
//! of a session go one after the other, under one lock, in the order
//! their state was read: so the mirror's last word on anything is the
//! newest. A mirror that misses a batch (it restarted, or refused one)
//! answers ESTALE and the session starts again. A mirror that does not
//! answer is waited for until the cluster marks it failed; then changes
//! go on without it (its copy is void: see `copies`), and it is copied
//! again when it comes back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kdfs::mirror::full::{self, CopyStep};
use kdfs::mirror::mirror_of;
use kdfs::store::Store;
use krg_proto::kdfs::{KdfsRequest, KdfsResponse, MirrorChange, MirrorRequest, MirroredObject};
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::NodeId;
use tokio::sync::Mutex;

use crate::context::NodeContext;

/// How long one batch may take to reach the mirror and be applied.
const SEND_WAIT: Duration = Duration::from_secs(10);
/// How long a change waits for an unreachable mirror to be marked failed
/// before it fails (EIO) instead of going on without the mirror.
const FAILED_WAIT: Duration = Duration::from_secs(4);

#[derive(Default)]
struct Session {
    mirror: Option<NodeId>,
    /// 0: none (the copy task begins one).
    id: u64,
    seq: u64,
    /// The full copy of this session has ended.
    synced: bool,
}

/// This node's link to its mirror.
#[derive(Default)]
pub struct Owner {
    session: Mutex<Session>,
    /// A full copy task runs.
    copying: std::sync::atomic::AtomicBool,
}

/// What became of a send.
enum Sent {
    Done,
    /// The mirror lost track: copy again.
    Stale,
    /// The mirror did not answer.
    Unreachable(String),
}

async fn send(
    ctx: &NodeContext,
    to: NodeId,
    req: MirrorRequest,
) -> (Sent, Option<Vec<MirroredObject>>) {
    let me = ctx.node_id();
    let req = PeerRequest::Kdfs(KdfsRequest::Mirror { from: me, req });
    match ctx.peers.call(to, req, SEND_WAIT).await {
        Ok(PeerResponse::Kdfs(KdfsResponse::Done)) => (Sent::Done, None),
        Ok(PeerResponse::Kdfs(KdfsResponse::Mirrored(have))) => (Sent::Done, Some(have)),
        Ok(PeerResponse::Kdfs(KdfsResponse::Errno(libc::ESTALE))) => (Sent::Stale, None),
        Ok(other) => (Sent::Unreachable(format!("answered {other:?}")), None),
        Err(e) => (Sent::Unreachable(e.to_string()), None),
    }
}

impl Owner {
    /// After `req` was served as `resp`: send what it changed to the
    /// mirror. `Err(errno)`: the mirror neither took it nor was marked
    /// failed in time — the change is made here but not mirrored.
    pub async fn changed(
        self: &Arc<Self>,
        ctx: &Arc<NodeContext>,
        store: &Arc<Store>,
        req: &KdfsRequest,
        resp: &KdfsResponse,
    ) -> Result<(), i32> {
        let mut s = self.session.lock().await;
        if s.id == 0 {
            // No session: the copy task (re)starting it reads this change
            // with the rest.
            self.check_locked(ctx, store, &mut s);
            return Ok(());
        }
        let changes = match store.mirror_changes(req, resp) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "kdfs mirror: cannot read back a change; copying again");
                self.restart(ctx, store, &mut s);
                return Ok(());
            }
        };
        if changes.is_empty() {
            return Ok(());
        }
        self.send_locked(ctx, store, &mut s, changes).await
    }

    /// Send `changes` in session `s`; see [`Owner::changed`].
    async fn send_locked(
        self: &Arc<Self>,
        ctx: &Arc<NodeContext>,
        store: &Arc<Store>,
        s: &mut Session,
        changes: Vec<MirrorChange>,
    ) -> Result<(), i32> {
        let Some(to) = s.mirror else { return Ok(()) };
        let req = MirrorRequest::Apply {
            session: s.id,
            seq: s.seq + 1,
            changes,
        };
        match send(ctx, to, req).await.0 {
            Sent::Done => {
                s.seq += 1;
                Ok(())
            }
            Sent::Stale => {
                self.restart(ctx, store, s);
                Ok(())
            }
            Sent::Unreachable(why) => {
                let since = Instant::now();
                while since.elapsed() < FAILED_WAIT {
                    if super::is_failed(ctx, to) {
                        tracing::warn!(
                            mirror = to,
                            "kdfs mirror: the mirror failed; going on without it"
                        );
                        self.restart(ctx, store, s);
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tracing::warn!(mirror = to, %why, "kdfs mirror: a change did not reach the mirror");
                self.restart(ctx, store, s);
                Err(libc::EIO)
            }
        }
    }

    /// Every second (and at each change without a session): start the
    /// copy when this store is mirrored and no session runs, and start
    /// over when the mirror rule names another node.
    pub async fn check(self: &Arc<Self>, ctx: &Arc<NodeContext>, store: &Arc<Store>) {
        let mut s = self.session.lock().await;
        self.check_locked(ctx, store, &mut s);
    }

    fn check_locked(self: &Arc<Self>, ctx: &Arc<NodeContext>, store: &Arc<Store>, s: &mut Session) {
        if store.replicas() < 2 {
            return;
        }
        let want = mirror_of(ctx.node_id(), &super::members(ctx));
        if want != s.mirror || s.id == 0 {
            if want != s.mirror {
                tracing::info!(mirror = ?want, "kdfs mirror: this store's mirror");
            }
            s.mirror = want;
            self.restart(ctx, store, s);
        }
    }

    /// Forget the session and have the copy task start another.
    fn restart(self: &Arc<Self>, ctx: &Arc<NodeContext>, store: &Arc<Store>, s: &mut Session) {
        s.id = 0;
        s.seq = 0;
        s.synced = false;
        if s.mirror.is_none() {
            return;
        }
        use std::sync::atomic::Ordering;
        if self.copying.swap(true, Ordering::AcqRel) {
            return;
        }
        let (me, ctx, store) = (self.clone(), ctx.clone(), store.clone());
        tokio::spawn(async move {
            me.copy_until_synced(&ctx, &store).await;
            me.copying.store(false, Ordering::Release);
        });
    }

    /// Begin a session and copy everything, until it ends or the mirror
    /// changes; tried again every second while the mirror does not answer.
    async fn copy_until_synced(self: &Arc<Self>, ctx: &Arc<NodeContext>, store: &Arc<Store>) {
        loop {
            let to = self.session.lock().await.mirror;
            let Some(to) = to else { return };
            match self.copy_once(ctx, store, to).await {
                Ok(()) => return,
                Err(why) => {
                    tracing::info!(mirror = to, %why, "kdfs mirror: full copy not done; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn copy_once(
        &self,
        ctx: &Arc<NodeContext>,
        store: &Arc<Store>,
        to: NodeId,
    ) -> Result<(), String> {
        let id = rand::random::<u64>() | 1;
        let mut s = self.session.lock().await;
        if s.mirror != Some(to) {
            return Ok(());
        }
        let (Sent::Done, Some(have)) = send(ctx, to, MirrorRequest::Begin { session: id }).await
        else {
            return Err("the mirror did not begin".into());
        };
        (s.id, s.seq, s.synced) = (id, 0, false);
        let mut steps = full::plan(store, &have).map_err(|e| e.to_string())?;
        drop(s);
        let started = Instant::now();
        let mut sent = 0usize;
        while !steps.is_empty() {
            let step = steps.remove(0);
            let mut s = self.session.lock().await;
            if s.id != id {
                return Err("the session ended meanwhile".into());
            }
            let (changes, more) = full::step(store, &step, &have).map_err(|e| e.to_string())?;
            if !changes.is_empty() {
                sent += kdfs::mirror::weight(&changes);
                let req = MirrorRequest::Apply {
                    session: id,
                    seq: s.seq + 1,
                    changes,
                };
                match send(ctx, to, req).await.0 {
                    Sent::Done => s.seq += 1,
                    Sent::Stale => return Err("the mirror lost track".into()),
                    Sent::Unreachable(why) => return Err(why),
                }
            }
            splice_front(&mut steps, more);
        }
        let mut s = self.session.lock().await;
        if s.id != id {
            return Err("the session ended meanwhile".into());
        }
        let done = MirrorRequest::Synced {
            session: id,
            seq: s.seq,
        };
        match send(ctx, to, done).await.0 {
            Sent::Done => {
                s.synced = true;
                tracing::info!(
                    mirror = to,
                    bytes = sent,
                    secs = started.elapsed().as_secs_f64(),
                    "kdfs mirror: the mirror holds this store"
                );
                Ok(())
            }
            _ => Err("the mirror did not take the end of the copy".into()),
        }
    }
}

/// Put `more` in front of `steps`, in order (a file's data right after
/// the file).
fn splice_front(steps: &mut Vec<CopyStep>, more: Vec<CopyStep>) {
    steps.splice(0..0, more);
}
