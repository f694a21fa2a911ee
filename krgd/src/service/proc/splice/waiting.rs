//! The joins this node's sessions wait for (see the parent module): a
//! token, the one node that may present it, and where its connection
//! goes.

use std::collections::HashMap;

use krg_proto::auth::Identity;
use krg_proto::seal::FrameKeys;
use krg_proto::NodeId;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A `JoinSession` connection, for the session it names.
pub struct Joining {
    /// The connection, past its handshake.
    pub stream: TcpStream,
    /// Its keys.
    pub keys: FrameKeys,
    /// Who joins.
    pub peer: Identity,
    /// Bytes of stdin the joining node had sent on the old path.
    pub sent: u64,
}

/// The joins this node's sessions wait for: token → (who may join, where
/// the connection goes).
#[derive(Default)]
pub struct Waiting(std::sync::Mutex<HashMap<u64, (NodeId, oneshot::Sender<Joining>)>>);

impl Waiting {
    pub(super) fn register(&self, token: u64, joiner: NodeId) -> oneshot::Receiver<Joining> {
        let (tx, rx) = oneshot::channel();
        crate::sync::lock(&self.0).insert(token, (joiner, tx));
        rx
    }

    pub(super) fn forget(&self, token: u64) {
        crate::sync::lock(&self.0).remove(&token);
    }

    /// The session waiting for `node` with `token`, taken.
    pub(super) fn take(&self, token: u64, node: NodeId) -> Option<oneshot::Sender<Joining>> {
        let mut w = crate::sync::lock(&self.0);
        match w.get(&token) {
            Some((joiner, _)) if *joiner == node => w.remove(&token).map(|(_, tx)| tx),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Waiting;

    #[test]
    fn a_join_is_handed_over_only_for_its_token_and_from_its_node() {
        let w = Waiting::default();
        let _rx = w.register(42, 1);
        assert!(w.take(41, 1).is_none(), "another token");
        assert!(w.take(42, 2).is_none(), "another node");
        assert!(w.take(42, 1).is_some(), "the awaited join");
        assert!(w.take(42, 1).is_none(), "once only");
    }

    #[test]
    fn a_forgotten_join_is_refused() {
        let w = Waiting::default();
        let _rx = w.register(7, 3);
        w.forget(7);
        assert!(w.take(7, 3).is_none());
    }
}
