//! Undoing a pass that failed midway (the target failed, its disk filled,
//! a directory's owner stopped answering): every name pointed at a copy is
//! pointed back at its original, every layout names this node again
//! (`stripes.rs`), and the copies are removed, so that the
//! file system is as it was and the store can be writable again. Best
//! effort: what cannot be undone (a directory's owner is down) is logged.

use krg_proto::kdfs::{FileKind, InodeId, KdfsRequest as Q, KdfsResponse as A, RemoveWhat};

use super::{Drain, Res};

impl Drain {
    /// Point the names back, then remove the copies; how many steps failed.
    pub(super) async fn undo(&mut self) -> usize {
        let mut failed = self.undo_root(self.old_root).await;
        for r in std::mem::take(&mut self.repointed).into_iter().rev() {
            let back = Q::ReplaceEntry {
                dir: r.dir,
                name: r.name,
                old: r.copy,
                new: r.original,
                kind: r.kind,
            };
            if let Err(e) = self.call(krg_proto::kdfs::inode_node(r.dir), back).await {
                tracing::warn!(dir = %format!("{:x}", r.dir), why = %e.what,
                    "kdfs: could not point a name back at its original");
                failed += 1;
            }
        }
        failed += self.undo_stripes().await;
        let copies: Vec<InodeId> = self.copies.values().copied().collect();
        for copy in copies {
            if let Err(e) = self.remove_copy(copy).await {
                tracing::warn!(copy = %format!("{copy:x}"), why = %e.what,
                    "kdfs: could not remove a copy (fsck.kdfs finds it)");
                failed += 1;
            }
        }
        failed
    }

    /// Remove `copy` from the target: a directory emptied first (its
    /// entries name other copies or other nodes' inodes, which stay), a
    /// file by dropping its links.
    async fn remove_copy(&self, copy: InodeId) -> Res<()> {
        let attr = match self.call(self.to, Q::GetAttr { ino: copy }).await? {
            A::Attr(a) => a,
            other => return Err(super::unexpected(self.to, &other)),
        };
        if attr.kind != FileKind::Dir {
            for _ in 0..attr.nlink.max(1) {
                self.call(self.to, Q::DecLink { ino: copy }).await?;
            }
            return Ok(());
        }
        for e in self.list(copy).await? {
            let what = if e.kind == FileKind::Dir {
                RemoveWhat::Dir
            } else {
                RemoveWhat::NonDir
            };
            let remove = Q::RemoveEntry {
                dir: copy,
                name: e.name,
                what,
                expect: Some(e.ino),
            };
            self.call(self.to, remove).await?;
        }
        self.call(self.to, Q::RemoveDir { ino: copy }).await?;
        Ok(())
    }
}
