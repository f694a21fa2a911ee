//! A leaving root node's root directory. Its entries move as any
//! directory's (the walk points them at copies); then the directory itself
//! is copied to the target, and every store of the file system is told
//! that the root is that copy on the target now (`SetRoot`: the target
//! first, then every other member serving it, this node last). Mounts
//! follow their own store's superblock (`kdfs::client::root`), so the pass
//! waits a little before the old root goes. A member that is down would
//! keep naming this node as the root: the pass is then refused before
//! anything moves.

use krg_proto::cluster::NodeState;
use krg_proto::kdfs::{FileKind, InodeId, KdfsRequest as Q};
use krg_proto::NodeId;

use super::{Drain, Failed, Res};

impl Drain {
    /// Refuse to move the root when a member is down: its store would
    /// keep naming this node as the root node.
    pub(super) fn root_can_move(&self) -> Res<()> {
        let view = self.svc.ctx.view();
        let down: Vec<NodeId> = view
            .members()
            .filter(|n| n.state == NodeState::Failed)
            .map(|n| n.id)
            .collect();
        if down.is_empty() {
            return Ok(());
        }
        Err(Failed::new(format!(
            "this is the root node and members {down:?} are down: their stores would not learn where the root directory went"
        )))
    }

    /// The root directory `root` copied to the target (its entries name
    /// no inode of this node any more: the walks moved them).
    pub(super) async fn copy_root(&mut self, root: InodeId) -> Res<InodeId> {
        self.copy(root, FileKind::Dir).await
    }

    /// Every store is told that the root is `new_root` on the target now:
    /// the target first (it must answer for it before anyone asks), this
    /// node last. Recorded for the undo as it goes.
    pub(super) async fn switch_root(&mut self, new_root: InodeId) -> Res<()> {
        let to = self.to;
        self.root_moved.push(to);
        self.call(
            to,
            Q::SetRoot {
                root_node: to,
                root: Some(new_root),
            },
        )
        .await?;
        if kdfs::store::crash::fails("handover-root-moved") {
            return Err(Failed::new("failure point handover-root-moved"));
        }
        let others = self.fs_members().await;
        for node in others.into_iter().chain([self.me]) {
            self.root_moved.push(node);
            let set = Q::SetRoot {
                root_node: to,
                root: None,
            };
            self.call(node, set).await?;
        }
        // Mounts read their store's superblock every FOLLOW_EVERY: the old
        // root stays until they have all had the time to.
        tokio::time::sleep(kdfs::client::root::FOLLOW_EVERY * 3).await;
        Ok(())
    }

    /// The members other than this node and the target whose krgd serves
    /// this file system (leaving ones too: they hand over after this).
    async fn fs_members(&self) -> Vec<NodeId> {
        let fs_id = self.store.superblock().fs_id;
        let view = self.svc.ctx.view();
        let mut out = Vec::new();
        for n in view.members() {
            if n.id == self.me || n.id == self.to || n.state == NodeState::Failed {
                continue;
            }
            if self.serves(n.id, fs_id).await {
                out.push(n.id);
            }
        }
        out
    }

    /// Undo: every store told names this node's root `old_root` again.
    pub(super) async fn undo_root(&mut self, old_root: Option<InodeId>) -> usize {
        let mut failed = 0;
        for node in std::mem::take(&mut self.root_moved).into_iter().rev() {
            let root = (node == self.me).then_some(old_root).flatten();
            let set = Q::SetRoot {
                root_node: self.me,
                root,
            };
            if let Err(e) = self.call(node, set).await {
                tracing::warn!(node, why = %e.what,
                    "kdfs: could not tell a store the root is this node's again");
                failed += 1;
            }
        }
        failed
    }
}
