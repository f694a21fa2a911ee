//! What the owner of a striped file does on the other holders' copies
//! (the layout and the copies: `kdfs::store::striping`): a truncate cuts
//! them first, and a removed file's copies are dropped afterwards. The
//! FUSE client sends reads and writes to every holder itself. A holder
//! the cluster marks failed is asked through its mirror (a mirrored
//! store's copies are mirrored with it).

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use kdfs::store::Store;
use krg_proto::kdfs::{InodeId, KdfsRequest, KdfsResponse};
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::NodeId;

use super::KdfsService;

/// How long a holder may take to cut or drop its copy.
const HOLDER_WAIT: Duration = Duration::from_secs(15);

impl KdfsService {
    async fn ask_holder(&self, node: NodeId, req: KdfsRequest) -> Result<(), String> {
        match self.call_holder(node, req.clone()).await {
            Err(e) if super::mirror::is_failed(&self.ctx, node) => {
                // (every store of a file system keeps as many copies)
                let copies = self.current().map_or(0, |s| s.replicas().saturating_sub(1));
                let members = super::mirror::members(&self.ctx);
                let mut why = e;
                for m in kdfs::mirror::mirrors_of(node, &members, usize::from(copies)) {
                    let req = KdfsRequest::FromMirror {
                        node,
                        req: Box::new(req.clone()),
                    };
                    match self.call_holder(m, req).await {
                        Ok(()) => return Ok(()),
                        Err(m_err) => why = format!("{why}; its mirror node {m}: {m_err}"),
                    }
                }
                Err(why)
            }
            r => r,
        }
    }

    async fn call_holder(&self, node: NodeId, req: KdfsRequest) -> Result<(), String> {
        match self
            .ctx
            .peers
            .call(node, PeerRequest::Kdfs(req), HOLDER_WAIT)
            .await
        {
            Ok(PeerResponse::Kdfs(KdfsResponse::Done)) => Ok(()),
            Ok(PeerResponse::Kdfs(KdfsResponse::Errno(e))) => Err(format!("errno {e}")),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Before `ino` (owned here) is cut to `size`: when it is striped, cut
    /// every other holder's copy first, so that a file grown again later
    /// reads zeros there, not the old bytes. EIO if a holder could not.
    pub(super) async fn cut_stripes(
        &self,
        store: &Store,
        ino: InodeId,
        size: u64,
    ) -> Result<(), i32> {
        let Some(layout) = store.stripe_layout(ino) else {
            return Ok(());
        };
        let others = layout.others();
        let cuts = others
            .iter()
            .map(|&n| self.ask_holder(n, KdfsRequest::StripeTruncate { ino, size }));
        for (r, node) in join_all(cuts).await.into_iter().zip(&others) {
            if let Err(e) = r {
                tracing::warn!(ino, node, error = %e, "kdfs: a stripe holder could not cut its copy; truncate refused");
                return Err(libc::EIO);
            }
        }
        Ok(())
    }

    /// Tell the other holders of the striped files removed here to drop
    /// their copies (in the background; a copy left by a holder that was
    /// down stays until fsck.kdfs).
    pub(super) fn drop_gone_stripes(self: &Arc<Self>, store: &Store) {
        let gone = store.take_gone_stripes();
        if gone.is_empty() {
            return;
        }
        let svc = self.clone();
        tokio::spawn(async move {
            for (ino, layout) in gone {
                for node in layout.others() {
                    if let Err(e) = svc.ask_holder(node, KdfsRequest::StripeDrop { ino }).await {
                        tracing::warn!(ino, node, error = %e, "kdfs: a stripe holder did not drop its copy of a removed file");
                    }
                }
            }
        });
    }
}
