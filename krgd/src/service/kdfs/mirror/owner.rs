//! The sending side: every change to a store reaches its mirrors before
//! the change is answered — this node's own store to its mirrors, or a
//! failed node's store this node serves (taken over) to that store's
//! other mirrors (`--replicas 3`).
//!
//! One link per mirror ([`mirrors_of`], the store's `replicas` - 1 of
//! them), each with one session at a time (`push`). A session starts with
//! a full copy, step by step, while the changes made meanwhile are sent
//! too. A mirror that misses a batch (it restarted, or refused one)
//! answers ESTALE and a new session copies again (only files whose size
//! or data time differ carry their data). A mirror that does not answer is
//! waited for until the cluster marks it failed; then changes go on
//! without it (its copy is void: see `copies`), and it is copied again
//! when it comes back. A mirror that took the store over (this node was
//! marked failed meanwhile) refuses: the change fails with EROFS, and this
//! node stops serving until it has its store back (`claim`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use kdfs::format::MAX_REPLICAS;
use kdfs::mirror::mirrors_of;
use kdfs::mirror::place::{self, Keeper};
use kdfs::store::Store;
use krg_proto::kdfs::{KdfsRequest, KdfsResponse, MirrorChange, MirrorLink};
use krg_proto::NodeId;
use tokio::sync::{Mutex, MutexGuard};

use super::push::{self, Sent, Session};
use crate::context::NodeContext;

/// How long a change waits for an unreachable mirror to be marked failed
/// before it fails (EIO) instead of going on without the mirror.
const FAILED_WAIT: Duration = Duration::from_secs(4);

/// The copy one mirror keeps.
#[derive(Default)]
struct Link {
    session: Mutex<Session>,
    /// A full copy task runs.
    copying: AtomicBool,
}

/// A store's links to its mirrors.
pub struct Owner {
    links: Vec<Arc<Link>>,
}

impl Default for Owner {
    fn default() -> Self {
        let links = (1..MAX_REPLICAS).map(|_| Arc::default()).collect();
        Self { links }
    }
}

/// A change that could not be mirrored.
pub enum NotMirrored {
    /// Neither taken by a mirror nor the mirror marked failed in time.
    Unreachable,
    /// A mirror serves this store now: this node must stop.
    TakenOver,
}

/// The mirrors `store`'s changes go to from this node, first to last,
/// each with what it keeps (its place in the store's list): its mirrors
/// but this node (which serves it, having taken it over). As many as the
/// most copies an inode of the store keeps asks.
fn targets(ctx: &NodeContext, store: &Store) -> Vec<(NodeId, Keeper)> {
    let copies = usize::from(store.most_replicas().saturating_sub(1));
    let node = store.superblock().node;
    mirrors_of(node, &super::members(ctx), copies)
        .into_iter()
        .enumerate()
        .filter(|(_, m)| *m != ctx.node_id())
        .map(|(place, m)| (m, Keeper::Mirror(place)))
        .collect()
}

/// Whether `resp` changed an inode's count so that `keeper` gains or
/// loses it.
fn recounted(resp: &KdfsResponse, keeper: Keeper) -> bool {
    match *resp {
        KdfsResponse::ReplicasSet { before, after } => {
            place::keeps(keeper, before) != place::keeps(keeper, after)
        }
        _ => false,
    }
}

/// What `store`, as this node serves it, keeps of its whole: all of it
/// (its own node, or a mirror's full copy taken over), or a partial
/// copy's share — whose copies to the other mirrors drop nothing it would
/// not keep.
fn source_of(ctx: &NodeContext, store: &Store) -> Keeper {
    let node = store.superblock().node;
    if node == ctx.node_id() {
        return Keeper::Owner;
    }
    super::standing::source_keeper(ctx, node, store)
}

impl Owner {
    /// The store is served as `generation` from now on (told at `Begin`).
    pub async fn serving_as(
        self: &Arc<Self>,
        ctx: &Arc<NodeContext>,
        store: &Arc<Store>,
        generation: u32,
    ) {
        for rank in 0..self.links.len() {
            let mut s = self.links[rank].session.lock().await;
            s.generation = generation;
            self.restart(ctx, store, rank, &mut s);
        }
    }

    /// The generation, and each mirror: whether it holds a full current
    /// copy, how far the full copy is while one runs.
    pub async fn state(&self) -> (u32, Vec<MirrorLink>) {
        let mut generation = 0;
        let mut mirrors = Vec::new();
        for l in &self.links {
            let s = l.session.lock().await;
            generation = s.generation;
            if let Some(node) = s.to {
                mirrors.push(MirrorLink {
                    node,
                    synced: s.synced,
                    copying: s.progress,
                });
            }
        }
        (generation, mirrors)
    }

    /// After `req` was served as `resp`: send what it changed to every
    /// mirror (side by side), and return once they all have it.
    pub async fn changed(
        self: &Arc<Self>,
        ctx: &Arc<NodeContext>,
        store: &Arc<Store>,
        req: &KdfsRequest,
        resp: &KdfsResponse,
    ) -> Result<(), NotMirrored> {
        // The state is read and numbered under every session's lock (so
        // that numbers follow the order of the reads), and sent outside
        // them: the changes of several requests travel side by side, and
        // each mirror applies them by number.
        let mut sessions = Vec::new();
        for l in &self.links {
            sessions.push(l.session.lock().await);
        }
        let Some(changes) = self.read_change(ctx, store, req, resp, &mut sessions) else {
            return Ok(());
        };
        let mut sends = Vec::new();
        for (rank, s) in sessions.iter_mut().enumerate() {
            let Some(to) = s.to.filter(|_| s.id != 0) else {
                continue;
            };
            if recounted(resp, s.keeper) {
                // It gains or loses the inode: its copy starts over
                // (`recount`). The state alone would give it a file of
                // the right size and data time without its data, which
                // the next full copy would take for current.
                continue;
            }
            let kept = place::kept_at(store, s.keeper, &changes);
            if !kept.is_empty() {
                s.seq += 1;
                sends.push((rank, to, s.id, s.seq, kept));
            }
        }
        drop(sessions);
        let node = store.superblock().node;
        let sent = sends
            .into_iter()
            .map(|(rank, to, id, seq, kept)| async move {
                let sent = push::apply_numbered(ctx, to, node, id, seq, kept).await;
                self.after_send(ctx, store, rank, to, id, sent).await
            });
        let done: Result<(), NotMirrored> = join_all(sent).await.into_iter().collect();
        if matches!(resp, KdfsResponse::ReplicasSet { .. }) {
            self.recount(ctx, store, resp).await;
        }
        done
    }

    /// `resp` changed an inode's count (`ReplicasSet`): the mirrors that
    /// gain or lose it copy again (only what differs travels).
    async fn recount(
        self: &Arc<Self>,
        ctx: &Arc<NodeContext>,
        store: &Arc<Store>,
        resp: &KdfsResponse,
    ) {
        for rank in 0..self.links.len() {
            let mut s = self.links[rank].session.lock().await;
            if recounted(resp, s.keeper) && s.id != 0 {
                self.restart(ctx, store, rank, &mut s);
            }
        }
    }

    /// What the change did, read under the sessions' locks; `None`: there
    /// is nothing to send (no session: the full copy that starts one reads
    /// it with the rest).
    fn read_change(
        self: &Arc<Self>,
        ctx: &Arc<NodeContext>,
        store: &Arc<Store>,
        req: &KdfsRequest,
        resp: &KdfsResponse,
        sessions: &mut [MutexGuard<'_, Session>],
    ) -> Option<Vec<MirrorChange>> {
        for (rank, s) in sessions.iter_mut().enumerate() {
            if s.id == 0 {
                self.check_locked(ctx, store, rank, s);
            }
        }
        if sessions.iter().all(|s| s.id == 0 || s.to.is_none()) {
            return None;
        }
        match store.mirror_changes(req, resp) {
            Ok(c) if c.is_empty() => None,
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "kdfs mirror: cannot read back a change; copying again");
                for (rank, s) in sessions.iter_mut().enumerate() {
                    self.restart(ctx, store, rank, s);
                }
                None
            }
        }
    }

    /// What becomes of the change after mirror `to` (link `rank`, session
    /// `id`) answered `sent`.
    async fn after_send(
        self: &Arc<Self>,
        ctx: &Arc<NodeContext>,
        store: &Arc<Store>,
        rank: usize,
        to: NodeId,
        id: u64,
        sent: Sent,
    ) -> Result<(), NotMirrored> {
        match sent {
            Sent::Done => Ok(()),
            Sent::Stale => {
                self.restart_if(ctx, store, rank, id).await;
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
                        self.restart_if(ctx, store, rank, id).await;
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tracing::warn!(mirror = to, %why, "kdfs mirror: a change did not reach the mirror");
                self.restart_if(ctx, store, rank, id).await;
                Err(NotMirrored::Unreachable)
            }
        }
    }

    /// Start link `rank` over unless its session `id` already ended.
    async fn restart_if(
        self: &Arc<Self>,
        ctx: &Arc<NodeContext>,
        store: &Arc<Store>,
        rank: usize,
        id: u64,
    ) {
        let mut s = self.links[rank].session.lock().await;
        if s.id == id {
            self.restart(ctx, store, rank, &mut s);
        }
    }

    /// Every second (and at each change without a session): start the
    /// copy when no session runs, and start over when the mirror rule
    /// names another node.
    pub async fn check(self: &Arc<Self>, ctx: &Arc<NodeContext>, store: &Arc<Store>) {
        for rank in 0..self.links.len() {
            let mut s = self.links[rank].session.lock().await;
            self.check_locked(ctx, store, rank, &mut s);
        }
    }

    fn check_locked(
        self: &Arc<Self>,
        ctx: &Arc<NodeContext>,
        store: &Arc<Store>,
        rank: usize,
        s: &mut Session,
    ) {
        let want = targets(ctx, store).get(rank).copied();
        let (to, keeper) = (want.map(|w| w.0), want.map(|w| w.1).unwrap_or_default());
        if to != s.to || keeper != s.keeper || (s.id == 0 && to.is_some()) {
            if to != s.to {
                tracing::info!(mirror = ?to, rank, "kdfs mirror: this store's mirror");
            }
            (s.to, s.keeper, s.source) = (to, keeper, source_of(ctx, store));
            self.restart(ctx, store, rank, s);
        }
    }

    /// Forget link `rank`'s session and have its copy task start another.
    fn restart(
        self: &Arc<Self>,
        ctx: &Arc<NodeContext>,
        store: &Arc<Store>,
        rank: usize,
        s: &mut Session,
    ) {
        (s.id, s.seq, s.synced, s.progress) = (0, 0, false, None);
        let link = self.links[rank].clone();
        if s.to.is_none() || link.copying.swap(true, Ordering::AcqRel) {
            return;
        }
        let (ctx, store) = (ctx.clone(), store.clone());
        tokio::spawn(async move {
            copy_until_synced(&link, &ctx, &store).await;
            link.copying.store(false, Ordering::Release);
        });
    }
}

/// Copy everything to `link`'s mirror, until done or the mirror changes;
/// tried again every second while the mirror does not answer.
async fn copy_until_synced(link: &Link, ctx: &Arc<NodeContext>, store: &Arc<Store>) {
    // The same reason again (a mirror with no store says so every
    // second) is logged at debug level only.
    let mut said = None;
    let node = store.superblock().node;
    loop {
        let to = link.session.lock().await.to;
        let Some(to) = to else { return };
        match push::full_copy(ctx, &link.session, store, node, to).await {
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
