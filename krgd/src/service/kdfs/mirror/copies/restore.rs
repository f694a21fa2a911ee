//! The mirror's side of a restore (`MirrorRequest::Restore`): the node's
//! store was formatted again (its disk was lost) and asks for what this
//! node keeps of it — the store it serves (taken over: handed back as
//! `HandBack` does), its complete copy, or, when this krgd restarted since
//! (its copies are void in memory), the copy on disk that was complete
//! when it stopped (`copy.complete`: what the node changed after that,
//! without this mirror, is lost with its disk).

use std::sync::Arc;

use kdfs::mirror::MirrorCopy;
use kdfs::store::Store;
use krg_proto::kdfs::KdfsResponse;
use krg_proto::NodeId;

use super::{errno, Copies};
use crate::context::NodeContext;
use crate::service::kdfs::mirror::push::{self, Session};

impl Copies {
    /// Copy back what this node (its store `host`) keeps of `owner`'s
    /// store of file system `fs_id`; `ENOENT`: nothing.
    pub(super) async fn restore(
        &self,
        host: &Arc<Store>,
        ctx: &Arc<NodeContext>,
        owner: NodeId,
        fs_id: u128,
    ) -> KdfsResponse {
        let slot = self.get(owner);
        let guard = match &slot {
            Some(s) => Some(s.lock().await),
            None => None,
        };
        if let Some(c) = &guard {
            if let Some(served) = &c.served {
                if served.superblock().fs_id != fs_id {
                    return errno(libc::ENOENT);
                }
                let generation = c.generation;
                tracing::warn!(owner, generation, "kdfs mirror: the node's store was formatted again; handing back the store this node serves");
                drop(guard);
                return match self.hand_back(ctx, owner, generation).await {
                    KdfsResponse::Done => KdfsResponse::Restored { generation },
                    other => other,
                };
            }
            // (a copy fed by another mirror: that one serves the store
            // and answers for it)
            if let Some(view) = c.view.as_ref().filter(|_| c.fed_by == owner) {
                let (view, generation) = (view.clone(), c.generation);
                tracing::warn!(owner, generation, "kdfs mirror: the node's store was formatted again; copying back the full copy kept here");
                // Nobody changes it meanwhile: its owner serves nothing
                // until it has it back (the slot stays locked).
                return copy_back(ctx, &view, owner, generation, fs_id).await;
            }
        }
        // This krgd restarted since: the copy on disk, if it was complete.
        let Some((view, generation)) = complete_on_disk(host, owner) else {
            return errno(libc::ENOENT);
        };
        tracing::warn!(owner, generation, "kdfs mirror: the node's store was formatted again; copying back the copy on disk, complete when this krgd last stopped");
        copy_back(ctx, &view, owner, generation, fs_id).await
    }
}

impl Copies {
    /// `owner` asks for its store back, which this node served as
    /// `generation` before its krgd restarted: copy it back from the disk,
    /// where it is complete as that generation (`ENOENT` otherwise).
    pub(super) async fn hand_back_from_disk(
        &self,
        host: &Arc<Store>,
        ctx: &Arc<NodeContext>,
        owner: NodeId,
        generation: u32,
    ) -> KdfsResponse {
        let Some((view, _)) = complete_on_disk(host, owner).filter(|(_, g)| *g == generation)
        else {
            return errno(libc::ENOENT);
        };
        tracing::info!(owner, generation, "kdfs mirror: handing back the store this node served before it restarted, from its disk");
        let fs_id = view.superblock().fs_id;
        match copy_back(ctx, &view, owner, generation, fs_id).await {
            KdfsResponse::Restored { .. } => KdfsResponse::Done,
            other => other,
        }
    }
}

/// The copy of `owner`'s store on this node's disk (`host`), opened, and
/// the generation it was complete as; `None` unless it was complete.
fn complete_on_disk(host: &Store, owner: NodeId) -> Option<(Arc<Store>, u32)> {
    let disk = MirrorCopy::existing_in(host, owner)?;
    let Some(generation) = disk.complete() else {
        tracing::warn!(
            owner,
            "kdfs mirror: the copy on disk was not complete when this krgd stopped"
        );
        return None;
    };
    match Store::view(&disk.path(), owner) {
        Ok(v) => Some((Arc::new(v), generation)),
        Err(e) => {
            tracing::warn!(owner, error = %e, "kdfs mirror: the copy on disk does not open");
            None
        }
    }
}

/// Copy `copy` (of `owner`'s store, as generation `generation`) back to
/// `owner`, if it is of file system `fs_id`.
async fn copy_back(
    ctx: &Arc<NodeContext>,
    copy: &Arc<Store>,
    owner: NodeId,
    generation: u32,
    fs_id: u128,
) -> KdfsResponse {
    if copy.superblock().fs_id != fs_id {
        return errno(libc::ENOENT);
    }
    let session = tokio::sync::Mutex::new(Session {
        to: Some(owner),
        generation,
        source: super::super::standing::source_keeper(ctx, owner, copy),
        ..Session::default()
    });
    match push::full_copy(ctx, &session, copy, owner, owner).await {
        Ok(()) => KdfsResponse::Restored { generation },
        Err(why) => {
            tracing::warn!(owner, %why, "kdfs mirror: the store was not copied back");
            errno(libc::EAGAIN)
        }
    }
}
