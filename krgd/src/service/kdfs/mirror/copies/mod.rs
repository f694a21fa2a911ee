//! The copies of stores kept here: the mirrors of other nodes' stores,
//! and — while it is handed back — this node's own.
//!
//! A mirror serves reads only once its owner said the full copy of the
//! current session ended (`Synced`), and only while every batch since
//! came in order. It is void (serves nothing until the owner copies it
//! again) from the start of this krgd, after a batch it could not apply,
//! and whenever this node is cut off from the majority — the owner may
//! have gone on without it then. A complete mirror whose owner the
//! cluster marks failed takes the store over (`takeover`) and serves all
//! of it, reads, changes and locks, until the owner is back and asks for
//! it (`HandBack`). Its lock manager starts empty: the mounts take their
//! locks on the owner's files again there (`kdfs::lockmgr`, *moved*).
//!
//! * this file: the copies, their sessions, takeover and hand-back;
//! * `serve`: answering a failed owner's files from a copy;
//! * `restore`: copying a store back to a node formatted again, or from
//!   the disk after this krgd restarted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kdfs::lockmgr::LockManager;
use kdfs::mirror::MirrorCopy;
use kdfs::store::Store;
use krg_proto::kdfs::{KdfsResponse, MirrorRequest};
use krg_proto::NodeId;

use super::owner::Owner;
use super::push::{self, Session};
use super::standing;
use crate::context::NodeContext;

mod restore;
mod serve;
use crate::service::placement::{kdfs_key, Placement};
use crate::sync;

/// How long a change asked of a complete copy waits for its owner to be
/// marked failed and the store taken over (EROFS after).
const TAKEOVER_WAIT: Duration = Duration::from_secs(3);

/// How long a hand-back may take (a whole store copied back, at worst).
pub const HAND_BACK_WAIT: Duration = Duration::from_secs(30 * 60);

/// One store's copy here.
struct Copy {
    disk: Arc<MirrorCopy>,
    session: u64,
    seq: u64,
    /// The owner's generation, told at `Begin`.
    generation: u32,
    /// Full and current: serves reads.
    view: Option<Arc<Store>>,
    /// Taken over: this node serves the store (its owner failed).
    served: Option<Arc<Store>>,
    /// The locks of the store's files while this node serves it.
    locks: Option<Arc<LockManager>>,
    /// While this node serves it (`--replicas 3`): its changes sent on to
    /// the store's other mirror.
    onward: Option<Arc<Owner>>,
    /// Who sends this copy its changes: the owner, or (`--replicas 3`) the
    /// other mirror that serves the store while the owner is down.
    fed_by: NodeId,
    /// Woken after each batch: the next one's turn.
    turn: Arc<tokio::sync::Notify>,
}

type Slot = Arc<tokio::sync::Mutex<Copy>>;

#[derive(Default)]
pub struct Copies {
    by_store: Mutex<HashMap<NodeId, Slot>>,
}

fn errno(e: i32) -> KdfsResponse {
    KdfsResponse::Errno(e)
}

/// What [`Copies::kept`] finds.
#[derive(Default)]
pub struct Kept {
    /// Owners whose whole store is copied here, complete.
    pub whole: Vec<NodeId>,
    /// Owners whose inodes of more copies are copied here, complete.
    pub partial: Vec<NodeId>,
    /// Owners whose stores this node serves.
    pub served: Vec<NodeId>,
}

impl Copies {
    fn get(&self, store: NodeId) -> Option<Slot> {
        sync::lock(&self.by_store).get(&store).cloned()
    }

    fn all(&self) -> Vec<Slot> {
        sync::lock(&self.by_store).values().cloned().collect()
    }

    /// Every mirror stops serving reads until its owner copies it again
    /// (this node is cut off: its owners may have gone on without it).
    pub async fn void_all(&self) {
        for c in self.all() {
            let mut c = c.lock().await;
            if c.view.is_some() {
                tracing::warn!(
                    owner = c.disk.owner(),
                    "kdfs mirror: cut off; this copy is void until its owner copies it again"
                );
            }
            (c.session, c.view) = (0, None);
        }
    }

    /// A request from `from` about its copy of `store`'s store, kept in
    /// `host` (this node's store). `store` is `from` (a mirror kept here),
    /// or this node when `handing_back` is `from` (its store copied back).
    pub async fn handle(
        &self,
        host: &Arc<Store>,
        from: NodeId,
        store: NodeId,
        req: MirrorRequest,
        ctx: &Arc<NodeContext>,
    ) -> KdfsResponse {
        match req {
            MirrorRequest::Begin {
                session,
                generation,
            } => {
                self.begin(host, from, store, session, generation, ctx.node_id())
                    .await
            }
            MirrorRequest::Apply {
                session,
                seq,
                changes,
            } => {
                let Some(slot) = self.get(store) else {
                    return errno(libc::ESTALE);
                };
                let mut c = match in_turn(&slot, session, seq).await {
                    Ok(c) => c,
                    Err(e) => return errno(e),
                };
                let strict = c.view.is_some();
                let disk = c.disk.clone();
                let done = tokio::task::spawn_blocking(move || disk.apply(&changes, strict)).await;
                c.turn.notify_waiters();
                match done {
                    Ok(Ok(())) => {
                        c.seq = seq;
                        KdfsResponse::Done
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(store, error = %e, "kdfs mirror: a change could not be applied; copy void");
                        (c.session, c.view) = (0, None);
                        errno(libc::ESTALE)
                    }
                    Err(_) => errno(libc::EIO),
                }
            }
            MirrorRequest::Synced { session, seq } => {
                let Some(c) = self.get(store) else {
                    return errno(libc::ESTALE);
                };
                let mut c = c.lock().await;
                if session == 0 || c.session != session || c.seq != seq {
                    return errno(libc::ESTALE);
                }
                if store == ctx.node_id() {
                    // This node's own store, handed back: complete.
                    return KdfsResponse::Done;
                }
                match Store::view(&c.disk.path(), store) {
                    Ok(v) => {
                        tracing::info!(
                            owner = store,
                            "kdfs mirror: this node holds a full copy of the owner's store"
                        );
                        c.view = Some(Arc::new(v));
                        if let Err(e) = c.disk.set_complete(Some(c.generation)) {
                            tracing::warn!(owner = store, error = %e, "kdfs mirror: cannot mark the copy complete on disk");
                        }
                        KdfsResponse::Done
                    }
                    Err(e) => {
                        tracing::warn!(owner = store, error = %e, "kdfs mirror: the copy does not open as a store");
                        c.session = 0;
                        errno(libc::ESTALE)
                    }
                }
            }
            MirrorRequest::HandBack { generation } => {
                match self.hand_back(ctx, from, generation).await {
                    // (this krgd restarted since it took the store over)
                    KdfsResponse::Errno(libc::ENOENT) => {
                        self.hand_back_from_disk(host, ctx, from, generation).await
                    }
                    done => done,
                }
            }
            MirrorRequest::Restore { fs_id } => self.restore(host, ctx, from, fs_id).await,
        }
    }

    async fn begin(
        &self,
        host: &Arc<Store>,
        from: NodeId,
        store: NodeId,
        session: u64,
        generation: u32,
        me: NodeId,
    ) -> KdfsResponse {
        let slot = match self.get(store) {
            Some(c) => c,
            None => {
                let h = host.clone();
                let made = tokio::task::spawn_blocking(move || {
                    if store == me {
                        MirrorCopy::own_of(&h)
                    } else {
                        MirrorCopy::kept_in(&h, store)
                    }
                });
                let disk = match made.await {
                    Ok(Ok(d)) => Arc::new(d),
                    Ok(Err(e)) => {
                        tracing::warn!(store, error = %e, "kdfs mirror: cannot keep a copy here");
                        return errno(libc::EIO);
                    }
                    Err(_) => return errno(libc::EIO),
                };
                let c = Copy {
                    disk,
                    session: 0,
                    seq: 0,
                    generation,
                    view: None,
                    served: None,
                    locks: None,
                    onward: None,
                    fed_by: from,
                    turn: Arc::default(),
                };
                let c = Arc::new(tokio::sync::Mutex::new(c));
                sync::lock(&self.by_store).entry(store).or_insert(c).clone()
            }
        };
        let mut c = slot.lock().await;
        if c.served.is_some() {
            return errno(libc::EROFS);
        }
        (c.session, c.seq, c.view, c.generation) = (session, 0, None, generation);
        c.fed_by = from;
        if store != me {
            if let Err(e) = c.disk.set_complete(None) {
                tracing::warn!(store, error = %e, "kdfs mirror: cannot mark the copy incomplete");
                c.session = 0;
                return errno(libc::EIO);
            }
        }
        let disk = c.disk.clone();
        match tokio::task::spawn_blocking(move || disk.inventory()).await {
            Ok(Ok(have)) => KdfsResponse::Mirrored(have),
            Ok(Err(e)) => {
                c.session = 0;
                tracing::warn!(store, error = %e, "kdfs mirror: cannot list the copy");
                errno(libc::EIO)
            }
            Err(_) => errno(libc::EIO),
        }
    }

    /// The owners whose complete copies are kept here (the whole store,
    /// and the inodes of more copies only: see `standing`), and those
    /// whose stores this node serves (taken over).
    pub async fn kept(&self, ctx: &NodeContext) -> Kept {
        let mut kept = Kept::default();
        for slot in self.all() {
            let c = slot.lock().await;
            let owner = c.disk.owner();
            if owner == ctx.node_id() {
                continue;
            }
            if c.served.is_some() {
                kept.served.push(owner);
            } else if let Some(view) = &c.view {
                if standing::is_partial(ctx, owner, view) {
                    kept.partial.push(owner);
                } else {
                    kept.whole.push(owner);
                }
            }
        }
        kept.whole.sort_unstable();
        kept.partial.sort_unstable();
        kept.served.sort_unstable();
        kept
    }

    /// This node's own store is being handed back: forget its copy slot
    /// once done (the next hand-back makes a new one).
    pub fn forget(&self, store: NodeId) {
        sync::lock(&self.by_store).remove(&store);
    }

    /// Take over the store of every owner the cluster marks failed whose
    /// copy here is complete — and, when the copy is fed by another mirror
    /// serving it (`--replicas 3`), that mirror failed too: decided once in
    /// the Raft log (the owner claiming it back at the same generation
    /// wins otherwise). The stores served here keep their other mirror's
    /// copy going (`onward`).
    pub async fn takeover(&self, ctx: &Arc<NodeContext>, placement: &Arc<dyn Placement>) {
        if ctx.view().cut_off {
            return;
        }
        for slot in self.all() {
            let mut c = slot.lock().await;
            let owner = c.disk.owner();
            if let (Some(served), Some(onward)) = (c.served.clone(), c.onward.clone()) {
                drop(c);
                onward.check(ctx, &served).await;
                continue;
            }
            let feeder_failed = super::is_failed(ctx, c.fed_by);
            if c.served.is_some() || !super::is_failed(ctx, owner) || !feeder_failed {
                continue;
            }
            let Some(view) = c.view.clone() else { continue };
            if standing::partial_while_a_fuller_lives(ctx, owner, &view) {
                continue;
            }
            let generation = c.generation.wrapping_add(1);
            match placement
                .place(kdfs_key(owner, generation), ctx.node_id())
                .await
            {
                Ok(n) if n == ctx.node_id() => {}
                Ok(n) => {
                    tracing::info!(
                        owner,
                        generation,
                        node = n,
                        "kdfs mirror: another node serves this store; copy void"
                    );
                    (c.session, c.view) = (0, None);
                    continue;
                }
                Err(e) => {
                    tracing::debug!(owner, error = %e.message, "kdfs mirror: takeover not decided yet");
                    continue;
                }
            }
            match Store::open(&c.disk.path(), owner, None) {
                Ok(s) => {
                    tracing::warn!(
                        owner,
                        generation,
                        "kdfs mirror: node failed; this node serves its store"
                    );
                    (c.served, c.generation, c.session) = (Some(Arc::new(s)), generation, 0);
                    // The copy is the store now, as this generation (a
                    // restart of this krgd finds it so on disk).
                    if let Err(e) = c.disk.set_complete(Some(generation)) {
                        tracing::warn!(owner, error = %e, "kdfs mirror: cannot mark the copy served");
                    }
                    c.locks = Some(Arc::new(LockManager::taking_over(owner)));
                    if let Some(served) = c.served.clone().filter(|s| s.most_replicas() > 2) {
                        let onward = Arc::new(Owner::default());
                        onward.serving_as(ctx, &served, generation).await;
                        c.onward = Some(onward);
                    }
                }
                Err(e) => {
                    tracing::error!(owner, generation, error = %e, "kdfs mirror: cannot serve the store it took over");
                }
            }
        }
    }

    /// `owner`, back, asks for its store, which this node served as
    /// `generation`: stop serving it, copy it back, answer once done.
    async fn hand_back(
        &self,
        ctx: &Arc<NodeContext>,
        owner: NodeId,
        generation: u32,
    ) -> KdfsResponse {
        let Some(slot) = self.get(owner) else {
            return errno(libc::ENOENT);
        };
        let mut c = slot.lock().await;
        let Some(served) = c.served.clone() else {
            return errno(libc::ENOENT);
        };
        if c.generation != generation {
            return errno(libc::ESTALE);
        }
        tracing::info!(
            owner,
            generation,
            "kdfs mirror: handing the store back to its node"
        );
        let session = tokio::sync::Mutex::new(Session {
            to: Some(owner),
            generation,
            source: standing::source_keeper(ctx, owner, &served),
            ..Session::default()
        });
        match push::full_copy(ctx, &session, &served, owner, owner).await {
            Ok(()) => {
                // The copy here is the store as handed back: the owner's
                // next session finds it current.
                (c.served, c.view, c.session, c.locks) = (None, None, 0, None);
                c.onward = None;
                KdfsResponse::Done
            }
            Err(why) => {
                tracing::warn!(owner, %why, "kdfs mirror: hand-back not done; still serving the store");
                errno(libc::EAGAIN)
            }
        }
    }
}

/// How long a batch waits for the ones numbered before it.
const TURN_WAIT: Duration = Duration::from_secs(10);

/// The copy, locked, once batch `seq` of `session` is next. EROFS: this
/// node serves the store now; ESTALE: the session ended, or a batch
/// before this one never came.
async fn in_turn(
    slot: &Slot,
    session: u64,
    seq: u64,
) -> Result<tokio::sync::MutexGuard<'_, Copy>, i32> {
    let since = std::time::Instant::now();
    loop {
        let c = slot.lock().await;
        if c.served.is_some() {
            return Err(libc::EROFS);
        }
        if session == 0 || c.session != session || seq <= c.seq {
            return Err(libc::ESTALE);
        }
        if c.seq + 1 == seq {
            return Ok(c);
        }
        let turn = c.turn.clone();
        let next = turn.notified();
        drop(c);
        let left = TURN_WAIT.checked_sub(since.elapsed()).ok_or(libc::ESTALE)?;
        let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), next).await;
    }
}
