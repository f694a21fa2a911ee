//! A leaving node's units of other nodes' striped files. For each file it
//! keeps units of (`stripes/`): the units go to another holder — a node
//! serving the file system that does not hold units of the file yet, if
//! any, else one that does (which then holds two positions of the layout,
//! in the same sparse copy: units never overlap), the owner last —, then the
//! file's owner names that holder instead in its layout (`ReplaceLayout`,
//! only if the layout is still the one read), and this node's I/O on the
//! file answers ESTALE from then on: a client that opened the file before
//! asks the owner for the layout again and goes on with the new holder.
//! Undone with the rest of a pass that fails.
//!
//! A striped file this node owns moves with the namespace walk, as any
//! file (`copy.rs`): its copy gets the layout with the target in this
//! node's place before its data, and then every other holder's units are
//! given the copy's id too (`StripeRename`, a second name: the old one
//! goes when the original does; the target merges its own into the
//! copy's object).

use futures::future::join_all;
use krg_proto::kdfs::{
    inode_node, InodeId, KdfsRequest as Q, KdfsResponse as A, SetAttr, SetTime, StripeLayout,
};
use krg_proto::NodeId;

use super::{unexpected, Drain, Failed, Res, CHUNK};

/// A holder's units of a striped file this node owned, given the id of
/// the file's copy too (`StripeRename`).
pub(super) struct RenamedStripe {
    node: NodeId,
    old: InodeId,
    new: InodeId,
}

/// One striped file whose units here went to another holder.
pub(super) struct MovedStripe {
    ino: InodeId,
    /// Its layout before, and after.
    old: StripeLayout,
    new: StripeLayout,
    /// The holder that took the units.
    to: NodeId,
    /// Whether `to` held none of the file's units before (its copy is
    /// dropped again by an undo).
    new_holder: bool,
}

impl Drain {
    /// Hand over the units of every striped file this node keeps units of.
    pub(super) async fn move_stripes(&mut self) -> Res<()> {
        let store = self.store.clone();
        let inos = tokio::task::spawn_blocking(move || store.stripe_copies())
            .await
            .map_err(|e| Failed::new(e.to_string()))?
            .map_err(|e| Failed::new(format!("listing its stripe copies: {e}")))?;
        for ino in inos {
            self.move_stripe(ino).await?;
        }
        Ok(())
    }

    async fn move_stripe(&mut self, ino: InodeId) -> Res<()> {
        let owner = inode_node(ino);
        let layout = match self.call(owner, Q::GetStripe { ino }).await {
            Ok(A::Stripe {
                layout: Some(l), ..
            }) => l,
            // removed meanwhile (its copy here goes with the store)
            Ok(A::Stripe { layout: None, .. }) => return Ok(()),
            Err(f) if f.errno == Some(libc::ENOENT) => return Ok(()),
            Ok(other) => return Err(unexpected(owner, &other)),
            Err(f) => return Err(f),
        };
        if !layout.nodes.contains(&self.me) {
            return Ok(()); // a copy the owner no longer counts on
        }
        let to = self.stripe_target(&layout);
        if to == owner {
            self.copy_units_to_owner(ino, &layout).await?;
        } else {
            self.copy_units(ino, &layout, to).await?;
        }
        let new = layout.replaced(self.me, to);
        let replace = Q::ReplaceLayout {
            ino,
            old: layout.clone(),
            new: new.clone(),
        };
        self.call(owner, replace).await?;
        self.store.set_stripe_moved(ino, true);
        self.written.insert(owner);
        self.written.insert(to);
        self.moved_stripes.push(MovedStripe {
            ino,
            new_holder: !layout.nodes.contains(&to),
            old: layout,
            new,
            to,
        });
        Ok(())
    }

    /// Before the data of striped file `old` (owned here, with `layout`)
    /// is copied into `copy` (new and empty, on the target): the copy gets
    /// the layout, the target in this node's place (twice, when it held
    /// units already).
    pub(super) async fn give_copy_layout(&self, copy: InodeId, layout: &StripeLayout) -> Res<()> {
        let layout = layout.replaced(self.me, self.to);
        self.call(self.to, Q::SetLayout { ino: copy, layout })
            .await
            .map(|_| ())
    }

    /// After it: every other holder's units of `old` become `copy`'s
    /// (a second name; the target's merged into the copy's object), and `old`'s
    /// I/O there answers ESTALE (descriptors of `old` fail, as those of any
    /// moved file do).
    pub(super) async fn rename_holders(
        &self,
        old: InodeId,
        copy: InodeId,
        layout: &StripeLayout,
    ) -> Res<()> {
        for node in layout.others().into_iter().filter(|&n| n != self.me) {
            // recorded first: an undo of a rename not made changes nothing
            self.renamed_stripes().push(RenamedStripe {
                node,
                old,
                new: copy,
            });
            self.call(node, Q::StripeRename { old, new: copy }).await?;
        }
        Ok(())
    }

    fn renamed_stripes(&self) -> std::sync::MutexGuard<'_, Vec<RenamedStripe>> {
        self.renamed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The holders whose copies got a new name (synced at the end).
    pub(super) fn renaming_holders(&self) -> Vec<NodeId> {
        self.renamed_stripes().iter().map(|r| r.node).collect()
    }

    /// Where the units of a file with `layout` go: the first node serving
    /// the file system (most free space first) that holds none of its
    /// units, so that its reads stay spread; else one that holds some, not
    /// the owner (whose object's times a write changes); else the owner.
    fn stripe_target(&self, layout: &StripeLayout) -> NodeId {
        let owner = layout.nodes.first().copied();
        let serving = || self.serving.iter().copied();
        serving()
            .find(|n| !layout.nodes.contains(n))
            .or_else(|| serving().find(|&n| Some(n) != owner))
            .unwrap_or(self.to)
    }

    /// Copy the units into the file's object on its owner, keeping the
    /// object's access and modification times (the user's file did not
    /// change).
    async fn copy_units_to_owner(&mut self, ino: InodeId, layout: &StripeLayout) -> Res<()> {
        let owner = inode_node(ino);
        let before = match self.call(owner, Q::GetAttr { ino }).await? {
            A::Attr(a) => a,
            other => return Err(unexpected(owner, &other)),
        };
        self.copy_units(ino, layout, owner).await?;
        let set = SetAttr {
            atime: Some(SetTime::At(before.atime)),
            mtime: Some(SetTime::At(before.mtime)),
            ..SetAttr::default()
        };
        self.call(owner, Q::SetAttr { ino, set }).await?;
        Ok(())
    }

    /// This node's units of `ino` (`layout` says which) into `to`'s copy,
    /// at the same offsets. Only this node's units are written: `to` may
    /// hold others of the file in the same copy. Units of zeros are not
    /// written (holes stay holes; what no holder has reads as zeros).
    async fn copy_units(&mut self, ino: InodeId, layout: &StripeLayout, to: NodeId) -> Res<()> {
        // `to` may have left once and handed its units of `ino` over.
        self.call(to, Q::StripeAdopt { ino }).await?;
        let mut offset = 0;
        loop {
            let read = Q::StripeRead {
                ino,
                offset,
                len: CHUNK,
            };
            let data = match self.call(self.me, read).await? {
                A::Data(d) if d.0.is_empty() => return Ok(()),
                A::Data(d) => d.0,
                other => return Err(unexpected(self.me, &other)),
            };
            let len = data.len() as u32;
            let mine: Vec<(u64, &[u8])> = layout
                .pieces(offset, len)
                .into_iter()
                .filter(|p| p.node == self.me)
                .map(|p| {
                    let start = (p.offset - offset) as usize;
                    (p.offset, &data[start..start + p.len as usize])
                })
                .filter(|(_, bytes)| bytes.iter().any(|b| *b != 0))
                .collect();
            let writes = mine.iter().map(|&(at, bytes)| {
                let write = Q::StripeWrite {
                    ino,
                    offset: at,
                    data: bytes.to_vec().into(),
                };
                self.call(to, write)
            });
            for ((_, bytes), answer) in mine.iter().zip(join_all(writes).await) {
                match answer? {
                    A::Written(n) if n as usize == bytes.len() => {}
                    other => return Err(unexpected(to, &other)),
                }
                self.bytes += bytes.len() as u64;
            }
            offset += u64::from(len);
        }
    }

    /// Undo: each layout back as it was, this node's units served here
    /// again, and the copies new holders got dropped. How many steps
    /// failed.
    pub(super) async fn undo_stripes(&mut self) -> usize {
        let mut failed = 0;
        let renamed = std::mem::take(&mut *self.renamed_stripes());
        for r in renamed.into_iter().rev() {
            let back = Q::StripeRename {
                old: r.new,
                new: r.old,
            };
            // The copy kept its old name: the new one goes (the target's
            // merged units go with the copy's object).
            let drop_new = (r.node != inode_node(r.new)).then_some(Q::StripeDrop { ino: r.new });
            for q in std::iter::once(back).chain(drop_new) {
                if let Err(e) = self.call(r.node, q).await {
                    tracing::warn!(ino = %format!("{:x}", r.old), node = r.node, why = %e.what,
                        "kdfs: could not give a holder's stripe units their file back");
                    failed += 1;
                }
            }
        }
        for m in std::mem::take(&mut self.moved_stripes).into_iter().rev() {
            let back = Q::ReplaceLayout {
                ino: m.ino,
                old: m.new,
                new: m.old,
            };
            if let Err(e) = self.call(inode_node(m.ino), back).await {
                tracing::warn!(ino = %format!("{:x}", m.ino), why = %e.what,
                    "kdfs: could not give a striped file its layout back");
                failed += 1;
                continue;
            }
            self.store.set_stripe_moved(m.ino, false);
            if m.new_holder && m.to != inode_node(m.ino) {
                if let Err(e) = self.call(m.to, Q::StripeDrop { ino: m.ino }).await {
                    tracing::warn!(ino = %format!("{:x}", m.ino), node = m.to, why = %e.what,
                        "kdfs: could not drop a copy of stripe units (fsck.kdfs finds it)");
                    failed += 1;
                }
            }
        }
        failed
    }

    /// The striped files whose units here were handed over (their copies
    /// here are removed with the originals).
    pub(super) fn moved_stripe_inos(&self) -> Vec<InodeId> {
        self.moved_stripes.iter().map(|m| m.ino).collect()
    }
}
