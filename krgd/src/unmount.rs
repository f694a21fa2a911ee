//! Unmounting krgd's FUSE trees (`/krg`, the scheduler tree) at shutdown
//! without waiting forever.
//!
//! An unmount returns once the tree's FUSE session has ended, and the
//! kernel ends it only when no mount of it is left anywhere. Every job has
//! a mount namespace of its own (for its `/proc`), a copy of krgd's: where
//! the node's mounts are private, the copy of a tree stays mounted in it
//! until the job ends. krgd stops its own jobs before unmounting, but
//! another krgd's jobs on the same host (a local cluster, tests) may hold
//! a copy too: after [`WAIT`] krgd goes on stopping, and the session ends
//! when krgd exits (its `/dev/fuse` descriptor closes; the copies then
//! answer ENOTCONN).

use std::time::Duration;

/// How long an unmount may wait for the copies of a tree to go.
pub const WAIT: Duration = Duration::from_secs(3);

/// Run `unmount` (blocking) for at most [`WAIT`]; `what` names the tree
/// in the log.
pub async fn bounded(what: &str, unmount: impl FnOnce() + Send + 'static) {
    let task = tokio::task::spawn_blocking(unmount);
    if tokio::time::timeout(WAIT, task).await.is_err() {
        tracing::warn!(
            tree = what,
            "still mounted in another mount namespace (a job of another krgd of this host?): stopping without waiting; it ends with krgd"
        );
    }
}
