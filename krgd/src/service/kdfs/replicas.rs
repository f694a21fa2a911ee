//! `kdfsctl replicas 2`: a store that kept one copy of its files keeps
//! two from now on. Its superblock says so, the store served takes it in
//! place (the handles other nodes hold stay good), and its mirroring
//! starts as at a mirrored store's first start
//! (a claim, then a full copy to the mirror, in the background; `kdfsctl
//! status` shows it). Refused while something else uses the store on
//! this node: a mount reads and writes its node's store in place
//! (passthrough, the sole mount's attribute changes), which its mirror
//! would never see — it is mounted again after.

use std::sync::Arc;

use kdfs::format::{other_users, MAX_REPLICAS};
use kdfs::store::Store;
use krg_proto::kdfs::KdfsResponse;

use super::KdfsService;

impl KdfsService {
    /// Keep `copies` copies of `store` (this node's) from now on.
    pub(super) async fn set_replicas(&self, store: &Arc<Store>, copies: u8) -> KdfsResponse {
        let errno = KdfsResponse::Errno;
        if copies == 0 || copies > MAX_REPLICAS {
            return errno(libc::EINVAL);
        }
        if copies == store.replicas() {
            return KdfsResponse::Done;
        }
        if copies < store.replicas() {
            return errno(libc::ENOTSUP);
        }
        match other_users(store.dir()) {
            Ok(pids) if !pids.is_empty() => {
                tracing::warn!(
                    ?pids,
                    "kdfs: the store keeps one copy still: processes use it here (unmount kdfs on this node first)"
                );
                return errno(libc::EBUSY);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "kdfs: cannot tell who uses the store");
                return errno(libc::EIO);
            }
        }
        // In place: the handles other nodes' mounts hold stay good.
        if let Err(e) = store.set_replicas(copies) {
            tracing::error!(error = %e, "kdfs: cannot write the superblock");
            return errno(libc::EIO);
        }
        tracing::info!(
            copies,
            "kdfs: this store keeps {copies} copies from now on; its mirror gets a full copy"
        );
        KdfsResponse::Done
    }
}
