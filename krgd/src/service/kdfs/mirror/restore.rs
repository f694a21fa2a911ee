//! A node whose disk was lost is formatted again (`mkfs.kdfs --replicas
//! 2`): its new store is empty, but its files live on in its mirror — the
//! store the mirror took over when the node failed, or its complete copy.
//! Before such a store (one never served: it has no generation yet) is
//! first claimed, the node asks its mirror for it (`Restore`); the mirror
//! copies it back, and the node serves it from the generation after the
//! mirror's. Serving the empty store instead would leave the entries that
//! other nodes' directories hold of its files dangling, and its first full
//! copy would empty the mirror's — so a mirror that does not answer is
//! waited for, and so is one marked failed when the log shows the store
//! was served in this cluster before (a brand-new store need not wait).

use std::sync::Arc;

use kdfs::store::Store;
use krg_proto::kdfs::{KdfsRequest, KdfsResponse, MirrorRequest};
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::NodeId;

use super::copies::HAND_BACK_WAIT;
use crate::service::kdfs::KdfsService;
use crate::sync;

/// What asking the mirror for a never-served store gave.
pub(super) enum Restore {
    /// Copied back, as the mirror had it at this generation.
    Done(u32),
    /// The mirror keeps nothing of it (or there is no mirror to ask):
    /// the store is served as it is.
    Nothing,
    /// Not now (the mirror did not answer): ask again later.
    Later(String),
}

impl KdfsService {
    /// Ask this node's mirrors, first to last, for `store`, which was
    /// never served: the first that keeps it copies it back.
    pub(super) async fn restore_from_mirror(&self, store: &Arc<Store>) -> Restore {
        let me = self.ctx.node_id();
        let copies = usize::from(store.replicas().saturating_sub(1));
        let mut later = None;
        for mirror in kdfs::mirror::mirrors_of(me, &super::members(&self.ctx), copies) {
            if super::is_failed(&self.ctx, mirror) {
                // Served before in this cluster: the disk was lost, and the
                // mirror down may keep the files. Serving the empty store
                // would empty that copy when the mirror is back.
                if self.mirroring.placement.served_before(me).await {
                    later = Some(format!(
                        "node {mirror}, its mirror, is down and may keep this store's files \
                         (if node {mirror} is gone for good: krgadm nodes del -n {mirror})"
                    ));
                } else {
                    tracing::warn!(
                        mirror,
                        "kdfs mirror: a store never served; its mirror is down"
                    );
                }
                continue;
            }
            match self.restore_from(store, mirror).await {
                Restore::Nothing => {}
                Restore::Later(why) => later = Some(why),
                done => return done,
            }
        }
        // One that did not answer may keep it: asked again later.
        later.map_or(Restore::Nothing, Restore::Later)
    }

    /// Ask `mirror` for `store`.
    async fn restore_from(&self, store: &Store, mirror: NodeId) -> Restore {
        let me = self.ctx.node_id();
        let req = KdfsRequest::Mirror {
            from: me,
            store: me,
            req: MirrorRequest::Restore {
                fs_id: store.superblock().fs_id,
            },
        };
        *sync::lock(&self.mirroring.handing_back) = Some(mirror);
        let answer = self
            .ctx
            .peers
            .call(mirror, PeerRequest::Kdfs(req), HAND_BACK_WAIT)
            .await;
        *sync::lock(&self.mirroring.handing_back) = None;
        self.mirroring.copies.forget(me);
        match answer {
            Ok(PeerResponse::Kdfs(KdfsResponse::Restored { generation })) => {
                tracing::warn!(
                    mirror,
                    generation,
                    "kdfs mirror: this node's store was restored from its mirror"
                );
                Restore::Done(generation)
            }
            Ok(PeerResponse::Kdfs(KdfsResponse::Errno(libc::ENOENT))) => Restore::Nothing,
            // A mirror that serves no store keeps no copy either.
            Ok(PeerResponse::Error(e)) if e.kind == krg_proto::admin::ErrorKind::Unavailable => {
                Restore::Nothing
            }
            Ok(other) => Restore::Later(format!("node {mirror} answered {other:?}")),
            Err(e) => Restore::Later(format!("node {mirror}: {e}")),
        }
    }

    /// `store` holds what the mirror copied back, as generation
    /// `generation`: record it and serve the store opened again (what it
    /// keeps in memory — the next inode numbers, the root — came from the
    /// empty store). The claim then starts over with the new one.
    pub(super) async fn serve_restored(
        &self,
        store: &Arc<Store>,
        generation: u32,
    ) -> Result<(), String> {
        store
            .set_generation(generation)
            .map_err(|e| format!("cannot record the generation: {e}"))?;
        let (dir, node, fs_id) = (
            store.dir().to_path_buf(),
            self.ctx.node_id(),
            store.superblock().fs_id,
        );
        let opened = tokio::task::spawn_blocking(move || Store::open(&dir, node, Some(fs_id)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("the restored store does not open: {e}"))?;
        self.set_store(Some(Arc::new(opened)));
        Ok(())
    }
}
