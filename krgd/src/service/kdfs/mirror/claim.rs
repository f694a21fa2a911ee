//! Whether this node serves its own mirrored store: only once it claimed
//! the store's next generation in the Raft log. If its mirror took the
//! store over meanwhile (this node was marked failed), the claim finds the
//! mirror's decision: this node asks for the store back (`HandBack`), the
//! mirror copies it here (what changed), and the node claims the
//! generation after. A node cut off from the majority stops serving its
//! store until it claims it again: the majority may have given it to the
//! mirror.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kdfs::store::Store;
use krg_proto::kdfs::MirrorRequest;

use super::copies::HAND_BACK_WAIT;
use super::push::{self, Sent};
use super::restore::Restore;
use crate::service::kdfs::KdfsService;
use crate::service::placement::kdfs_key;
use crate::sync;

/// How long a request waits for a claim under way before it is answered
/// ENOTCONN (and its client asks the mirror).
const CLAIM_WAIT: Duration = Duration::from_secs(3);

impl KdfsService {
    /// Whether `store` (this node's) may be served now. A krgd that stood
    /// still (SIGSTOP, a stalled VM) longer than the failure timeout may
    /// have been marked failed and its store given to the mirror: it
    /// claims the store again (through the leader) before serving.
    pub(in crate::service::kdfs) fn may_serve(&self, store: &Store) -> bool {
        if store.replicas() < 2 {
            return true;
        }
        if self
            .mirroring
            .beat
            .stood_still(self.ctx.config.failure_timeout)
        {
            self.lost_claim("this krgd stood still longer than the failure timeout");
        }
        self.mirroring.claimed.load(Ordering::Acquire)
    }

    /// How this node's store and the copies kept here stand.
    pub(in crate::service::kdfs) async fn replication(
        &self,
        store: &Store,
    ) -> krg_proto::kdfs::ReplicaState {
        let (generation, mirrors) = self.mirroring.owner.state().await;
        let kept = self.mirroring.copies.kept(&self.ctx).await;
        let mirrored = store.replicas() > 1;
        krg_proto::kdfs::ReplicaState {
            replicas: store.replicas(),
            serving: self.may_serve(store),
            generation: if mirrored { generation } else { 0 },
            mirrors: if mirrored { mirrors } else { Vec::new() },
            copies_of: kept.whole,
            partial_copies_of: kept.partial,
            serves_for: kept.served,
            converting: self.converting(),
        }
    }

    /// Whether `store` may be served, waiting a little for a claim under
    /// way (a krgd just started, a store just made): a request then is
    /// answered late rather than sent to the mirror.
    pub(in crate::service::kdfs) async fn wait_to_serve(
        self: &Arc<Self>,
        store: &Arc<Store>,
    ) -> bool {
        let since = std::time::Instant::now();
        while !self.may_serve(store) {
            if since.elapsed() >= CLAIM_WAIT {
                return false;
            }
            self.start_claim(store);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn start_claim(self: &Arc<Self>, store: &Arc<Store>) {
        if !self.mirroring.claiming.swap(true, Ordering::AcqRel) {
            let (me, store) = (self.clone(), store.clone());
            tokio::spawn(async move {
                me.claim(&store).await;
                me.mirroring.claiming.store(false, Ordering::Release);
            });
        }
    }

    /// Whether `node` may write into this node's own store (it hands the
    /// store back).
    pub(in crate::service::kdfs) fn hands_back(&self, node: krg_proto::NodeId) -> bool {
        *sync::lock(&self.mirroring.handing_back) == Some(node)
    }

    /// This node's mirror serves its store now: stop serving it.
    pub(in crate::service::kdfs) fn lost_claim(&self, why: &str) {
        if self.mirroring.claimed.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                why,
                "kdfs mirror: this node stops serving its store until it claims it again"
            );
        }
    }

    /// Every second: give the store up when cut off, claim it when not
    /// serving it; mirror it while serving it.
    pub(in crate::service::kdfs) async fn check_claim(self: &Arc<Self>, store: &Arc<Store>) {
        if store.replicas() < 2 {
            return;
        }
        if self.ctx.view().cut_off {
            self.lost_claim("cut off from the majority");
        }
        if self.mirroring.claimed.load(Ordering::Acquire) && self.still_claimed().await {
            self.mirroring.owner.check(&self.ctx, store).await;
        } else {
            self.start_claim(store);
        }
    }

    /// Four times a second while serving: was this node frozen, or cut off
    /// unnoticed, while the cluster gave its store to the mirror? The log
    /// says so once this node has caught up with it: stop serving then.
    pub(in crate::service::kdfs) async fn still_claimed(&self) -> bool {
        if !self.mirroring.claimed.load(Ordering::Acquire) {
            return false;
        }
        let (generation, _) = self.mirroring.owner.state().await;
        let me = self.ctx.node_id();
        let next = kdfs_key(me, generation.wrapping_add(1));
        match self.mirroring.placement.decided(next).await {
            Some(n) if n != me => {
                self.lost_claim("the log gave the store to its mirror");
                false
            }
            _ => true,
        }
    }

    async fn claim(self: &Arc<Self>, store: &Arc<Store>) {
        let me = self.ctx.node_id();
        loop {
            let current = self.current().is_some_and(|s| Arc::ptr_eq(&s, store));
            if !current {
                return;
            }
            if self.ctx.view().cut_off {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            if !store.served_before().unwrap_or(true) {
                match self.restore_from_mirror(store).await {
                    Restore::Done(generation) => {
                        match self.serve_restored(store, generation).await {
                            // the store opened again is claimed next
                            Ok(()) => return,
                            Err(why) => tracing::error!(%why, "kdfs mirror: restored, not served"),
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Restore::Nothing => {}
                    Restore::Later(why) => {
                        tracing::warn!(%why, "kdfs mirror: a store never served waits for its mirror's copy");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let generation = match store.generation() {
                Ok(g) => g.wrapping_add(1),
                Err(e) => {
                    tracing::error!(error = %e, "kdfs mirror: cannot read the store's generation");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            match self
                .mirroring
                .placement
                .place(kdfs_key(me, generation), me)
                .await
            {
                Ok(n) if n == me => {
                    if let Err(e) = store.set_generation(generation) {
                        tracing::error!(error = %e, "kdfs mirror: cannot record the store's generation");
                        continue;
                    }
                    self.mirroring.claimed.store(true, Ordering::Release);
                    tracing::info!(generation, "kdfs mirror: this node serves its store");
                    self.mirroring
                        .owner
                        .serving_as(&self.ctx, store, generation)
                        .await;
                    return;
                }
                Ok(first) => {
                    // (`--replicas 3`: another mirror may have served it
                    // after the first one failed too)
                    let (mirror, generation) = self.latest_server(first, generation).await;
                    match self.take_back(mirror, generation).await {
                        Ok(()) => {
                            tracing::info!(
                                mirror,
                                generation,
                                "kdfs mirror: took the store back from the node that served it"
                            );
                            if let Err(e) = store.set_generation(generation) {
                                tracing::error!(error = %e, "kdfs mirror: cannot record the store's generation");
                            }
                            // The mirror kept the files' locks meanwhile.
                            self.locks.start_over();
                        }
                        Err(why) => {
                            tracing::warn!(mirror, generation, %why, "kdfs mirror: the store is not back yet");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e.message, "kdfs mirror: claim not decided yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// The node that served this store last, and as which generation:
    /// `first` served `generation`; a later generation decided in the log
    /// (as far as this node applied it) was served by another.
    async fn latest_server(
        &self,
        first: krg_proto::NodeId,
        generation: u32,
    ) -> (krg_proto::NodeId, u32) {
        let me = self.ctx.node_id();
        let (mut by, mut at) = (first, generation);
        while let Some(n) = self
            .mirroring
            .placement
            .decided(kdfs_key(me, at.wrapping_add(1)))
            .await
        {
            (by, at) = (n, at.wrapping_add(1));
        }
        (by, at)
    }

    /// Ask `mirror`, which served the store as `generation`, to copy it back.
    async fn take_back(&self, mirror: krg_proto::NodeId, generation: u32) -> Result<(), String> {
        let me = self.ctx.node_id();
        *sync::lock(&self.mirroring.handing_back) = Some(mirror);
        let req = MirrorRequest::HandBack { generation };
        let sent = push::send(&self.ctx, mirror, me, req, HAND_BACK_WAIT)
            .await
            .0;
        *sync::lock(&self.mirroring.handing_back) = None;
        self.mirroring.copies.forget(me);
        match sent {
            Sent::Done => Ok(()),
            Sent::Unreachable(why) => Err(why),
            Sent::Stale | Sent::Refused => Err("refused".into()),
        }
    }
}

/// When this krgd last ran its heartbeat task (every 100 ms).
pub struct Beat(std::sync::Mutex<std::time::Instant>);

impl Default for Beat {
    fn default() -> Self {
        Beat(std::sync::Mutex::new(std::time::Instant::now()))
    }
}

impl Beat {
    const EVERY: Duration = Duration::from_millis(100);

    /// Beat until `svc` goes.
    pub fn keep(svc: &Arc<KdfsService>) {
        let weak = Arc::downgrade(svc);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Self::EVERY);
            loop {
                tick.tick().await;
                let Some(svc) = weak.upgrade() else { return };
                // Noticed here before the beat is renewed (a request
                // served right after a freeze notices it in `may_serve`).
                if svc
                    .mirroring
                    .beat
                    .stood_still(svc.ctx.config.failure_timeout)
                {
                    svc.lost_claim("this krgd stood still longer than the failure timeout");
                }
                *sync::lock(&svc.mirroring.beat.0) = std::time::Instant::now();
            }
        });
    }

    fn stood_still(&self, limit: Duration) -> bool {
        sync::lock(&self.0).elapsed() >= limit
    }
}
