//! A single-copy store converted to more copies while this mount is up
//! (`kdfsctl replicas 2`): every second, the mount tells its node's krgd
//! whether it still writes the store in place (`KdfsRequest::Conversion`).
//! Once krgd says a conversion waits, the mount stops doing so
//! ([`LocalStore::stop_writing_in_place`](super::local::LocalStore)) and
//! reports the files it still has open with passthrough; krgd converts
//! when every mount of the node reports none. Once converted, the mount
//! asks a node's mirrors when it does not answer, as a mount of a
//! mirrored file system does from its start.

use std::sync::Weak;
use std::time::Duration;

use krg_proto::kdfs::{KdfsRequest, KdfsResponse};

use super::ops::Ops;

/// How often the mount asks.
const EVERY: Duration = Duration::from_secs(1);

/// Follow the conversion of this node's store, until it is mirrored or
/// the mount ends.
pub async fn follow(ops: Weak<Ops>) {
    let pid = std::process::id();
    loop {
        tokio::time::sleep(EVERY).await;
        let Some(ops) = ops.upgrade() else { return };
        let store = &ops.local_store;
        let req = KdfsRequest::Conversion {
            pid,
            switched: store.is_mirrored(),
            writers: store.handles_in_place(),
        };
        let (copies, pending) = match ops.cluster.call(ops.local, req).await {
            Ok(KdfsResponse::Conversion { copies, pending }) => (copies, pending),
            // (krgd restarting, or an older one: asked again)
            _ => continue,
        };
        if (pending.is_some() || copies > 1) && !store.is_mirrored() {
            tracing::info!(
                "kdfs: this node's store is being converted to more copies: every change goes through krgd from now on"
            );
            store.stop_writing_in_place();
            ops.cache.no_longer_sole();
            ops.give_back_all().await;
        }
        if copies > 1 {
            tracing::info!(copies, "kdfs: this node's store keeps {copies} copies now");
            ops.cluster.now_mirrored();
            return;
        }
    }
}
