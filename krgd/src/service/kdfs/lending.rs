//! `Lend`: a directory of this node's store lent to the node's sole mount,
//! which then makes files there without asking (`kdfs::callback::loans`
//! decides and recalls; `kdfs::store` checks the directory and reserves
//! the loan's inode numbers).

use std::sync::Arc;

use kdfs::store::Store;
use krg_proto::kdfs::{InodeId, KdfsResponse};
use krg_proto::NodeId;

use super::KdfsService;

/// Inode numbers reserved per loan (a mount asks again once it used them).
const LOAN_INODES: u64 = 4096;

impl KdfsService {
    /// Lend `dir` to mount `client` of node `node`, or `EBUSY`: not a
    /// caching mount of this node, the store keeps more than one copy or
    /// is about to (a conversion waits), this node hands its store over,
    /// or another mount holds or asks something of `dir`.
    pub(super) fn lend(
        &self,
        store: &Arc<Store>,
        client: Option<u64>,
        node: NodeId,
        dir: InodeId,
    ) -> KdfsResponse {
        let busy = KdfsResponse::Errno(libc::EBUSY);
        let Some(client) = client else { return busy };
        if self.is_draining() || self.converting().is_some() {
            return busy;
        }
        let reserve = || match store.lend(dir, LOAN_INODES) {
            Ok(first) => Some((first, LOAN_INODES)),
            Err(e) => {
                tracing::debug!(dir = %format!("{dir:x}"), error = %e, "kdfs: directory not lent");
                None
            }
        };
        match self.callbacks.lend(client, node, dir, reserve) {
            Some((first, count)) => KdfsResponse::Lent { first, count },
            None => busy,
        }
    }
}
