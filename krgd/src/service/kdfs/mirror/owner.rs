//! The owner's side: every change to this node's store reaches its mirror
//! before the change is answered.
//!
//! One session at a time with the mirror (`push`). It starts with a full
//! copy, step by step, while the changes made meanwhile are sent too. A
//! mirror that misses a batch (it restarted, or refused one) answers
//! ESTALE and a new session copies again (only files whose size or data
//! time differ carry their data). A mirror that does not answer is waited
//! for until the cluster marks it failed; then changes go on without it
//! (its copy is void: see `copies`), and it is copied again when it comes
//! back. A mirror that took the store over (this node was marked failed
//! meanwhile) refuses: the change fails with EROFS, and this node stops
//! serving until it has its store back (`claim`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kdfs::mirror::mirror_of;
use kdfs::store::Store;
use krg_proto::kdfs::{CopyProgress, KdfsRequest, KdfsResponse};
use tokio::sync::Mutex;

use super::push::{self, Sent, Session};
use crate::context::NodeContext;

/// How long a change waits for an unreachable mirror to be marked failed
/// before it fails (EIO) instead of going on without the mirror.
const FAILED_WAIT: Duration = Duration::from_secs(4);

/// This node's link to its mirror.
#[derive(Default)]
pub struct Owner {
    session: Mutex<Session>,
    /// A full copy task runs.
    copying: AtomicBool,
}

/// A change that could not be mirrored.
pub enum NotMirrored {
    /// Neither taken by the mirror nor the mirror marked failed in time.
    Unreachable,
    /// The mirror serves this store now: this node must stop.
    TakenOver,
}

impl Owner {
    /// The store is served as `generation` from now on (told at `Begin`).
    pub async fn serving_as(
        self: &Arc<Self>,
        ctx: &Arc<NodeContext>,
        store: &Arc<Store>,
        generation: u32,
    ) {
        let mut s = self.session.lock().await;
        s.generation = generation;
        self.restart(ctx, store, &mut s);
    }

    /// The mirror, whether it holds a full current copy, the generation,
    /// how far the full copy is while one runs.
    pub async fn state(&self) -> (Option<krg_proto::NodeId>, bool, u32, Option<CopyProgress>) {
        let s = self.session.lock().await;
        (s.to, s.synced, s.generation, s.progress)
    }

    /// After `req` was served as `resp`: send what it changed to the mirror.
    pub async fn changed(
        self: &Arc<Self>,
        ctx: &Arc<NodeContext>,
        store: &Arc<Store>,
        req: &KdfsRequest,
        resp: &KdfsResponse,
    ) -> Result<(), NotMirrored> {
        // The state is read and numbered under the session's lock (so that
        // numbers follow the order of the reads), and sent outside it: the
        // changes of several requests travel side by side, and the mirror
        // applies them by number.
        let (to, id, seq, changes) = {
            let mut s = self.session.lock().await;
            if s.id == 0 {
                // No session: the full copy that starts one reads this
                // change with the rest.
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
            let Some(to) = s.to.filter(|_| !changes.is_empty()) else {
                return Ok(());
            };
            s.seq += 1;
            (to, s.id, s.seq, changes)
        };
        let me = ctx.node_id();
        match push::apply_numbered(ctx, to, me, id, seq, changes).await {
            Sent::Done => Ok(()),
            Sent::Stale => {
                self.restart_if(ctx, store, id).await;
                Ok(())
            }
            Sent::Refused => Err(NotMirrored::TakenOver),
            Sent::Unreachable(why) => {
                let since = Instant::now();
                while since.elapsed() < FAILED_WAIT {
                    if super::is_failed(ctx, to) {
                        tracing::warn!(
                            mirror = to,
                            "kdfs mirror: the mirror failed; going on without it"
                        );
                        self.restart_if(ctx, store, id).await;
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tracing::warn!(mirror = to, %why, "kdfs mirror: a change did not reach the mirror");
                self.restart_if(ctx, store, id).await;
                Err(NotMirrored::Unreachable)
            }
        }
    }

    /// Start over unless session `id` already ended.
    async fn restart_if(self: &Arc<Self>, ctx: &Arc<NodeContext>, store: &Arc<Store>, id: u64) {
        let mut s = self.session.lock().await;
        if s.id == id {
            self.restart(ctx, store, &mut s);
        }
    }

    /// Every second (and at each change without a session): start the
    /// copy when no session runs, and start over when the mirror rule
    /// names another node.
    pub async fn check(self: &Arc<Self>, ctx: &Arc<NodeContext>, store: &Arc<Store>) {
        let mut s = self.session.lock().await;
        self.check_locked(ctx, store, &mut s);
    }

    fn check_locked(self: &Arc<Self>, ctx: &Arc<NodeContext>, store: &Arc<Store>, s: &mut Session) {
        let want = mirror_of(ctx.node_id(), &super::members(ctx));
        if want != s.to || s.id == 0 {
            if want != s.to {
                tracing::info!(mirror = ?want, "kdfs mirror: this store's mirror");
            }
            s.to = want;
            self.restart(ctx, store, s);
        }
    }

    /// Forget the session and have the copy task start another.
    fn restart(self: &Arc<Self>, ctx: &Arc<NodeContext>, store: &Arc<Store>, s: &mut Session) {
        (s.id, s.seq, s.synced, s.progress) = (0, 0, false, None);
        if s.to.is_none() || self.copying.swap(true, Ordering::AcqRel) {
            return;
        }
        let (me, ctx, store) = (self.clone(), ctx.clone(), store.clone());
        tokio::spawn(async move {
            me.copy_until_synced(&ctx, &store).await;
            me.copying.store(false, Ordering::Release);
        });
    }

    /// Copy everything, until done or the mirror changes; tried again
    /// every second while the mirror does not answer.
    async fn copy_until_synced(&self, ctx: &Arc<NodeContext>, store: &Arc<Store>) {
        // The same reason again (a mirror with no store says so every
        // second) is logged at debug level only.
        let mut said = None;
        loop {
            let to = self.session.lock().await.to;
            let Some(to) = to else { return };
            match push::full_copy(ctx, &self.session, store, ctx.node_id(), to).await {
                Ok(()) => return,
                Err(why) => {
                    if said.as_ref() == Some(&(to, why.clone())) {
                        tracing::debug!(mirror = to, %why, "kdfs mirror: full copy not done; trying again");
                    } else {
                        tracing::info!(mirror = to, %why, "kdfs mirror: full copy not done; trying again (said once)");
                        said = Some((to, why));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
