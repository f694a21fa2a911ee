//! How many nodes keep each inode (`kdfsctl replicas N DIR`). The file
//! system's count is the superblock's (`Store::replicas`); an inode may
//! have its own, kept in a `trusted.kdfs.replicas` xattr of its object,
//! and a directory a policy, `trusted.kdfs.replicas.new`, that the inodes
//! made in it take as their own count (a new directory also as its
//! policy). Both xattrs travel to the mirrors with the object's state, so
//! a mirror that serves the store knows the counts too.
//!
//! The count decides which mirrors keep the inode: the mirror at place
//! `p` in the store's mirror list (`kdfs::mirror::mirrors_of`) keeps the
//! inodes of more than `p + 1` copies (`kdfs::mirror::place`). The store
//! keeps as many mirrors as its largest count asks ([`Store::most_replicas`]:
//! found at open, raised when a count is set).

use std::sync::atomic::Ordering;

use krg_proto::kdfs::{inode_local, FileKind, InodeId, KdfsResponse, ObjectState};

use super::error::{Res, StoreError};
use super::Store;
use crate::format::MAX_REPLICAS;

/// An inode's own count.
pub(crate) const OWN_XATTR: &str = "trusted.kdfs.replicas";
/// A directory's policy for the inodes made in it.
pub(crate) const POLICY_XATTR: &str = "trusted.kdfs.replicas.new";

/// A count from anyone: 1 to [`MAX_REPLICAS`].
fn checked(count: u8) -> Res<u8> {
    if (1..=MAX_REPLICAS).contains(&count) {
        Ok(count)
    } else {
        Err(StoreError::Invalid("a replica count is 1 to 3"))
    }
}

/// A count as its xattr holds it (one byte), if it is one.
pub(crate) fn count_in(value: &[u8]) -> Option<u8> {
    match value {
        [n] if (1..=MAX_REPLICAS).contains(n) => Some(*n),
        _ => None,
    }
}

/// The own count an object's state carries, if it has one.
pub fn own_count(state: &ObjectState) -> Option<u8> {
    state
        .xattrs
        .iter()
        .find(|(k, _)| k.as_slice() == OWN_XATTR.as_bytes())
        .and_then(|(_, v)| count_in(v))
}

impl Store {
    /// The most copies any inode here keeps (at least the file system's):
    /// how many mirrors the store has.
    pub fn most_replicas(&self) -> u8 {
        self.most_replicas
            .load(Ordering::Acquire)
            .max(self.replicas())
    }

    /// Whether some inode here has a count of its own (else every inode
    /// keeps the file system's count: no need to ask each).
    pub fn has_own_counts(&self) -> bool {
        self.own_counts.load(Ordering::Acquire)
    }

    /// How many nodes keep local inode `local`: its own count, else the
    /// file system's (also for an object gone or unreadable: its own
    /// change says what became of it).
    pub fn replicas_of(&self, local: u64) -> u8 {
        if !self.has_own_counts() {
            return self.replicas();
        }
        let ino = krg_proto::kdfs::inode_id(self.node(), local);
        match self.objects.get_value::<u8>(ino, OWN_XATTR) {
            Ok(Some(n)) if (1..=MAX_REPLICAS).contains(&n) => n,
            _ => self.replicas(),
        }
    }

    /// Whether inode `ino`'s object is here (a mirror's partial copy
    /// lacks those of fewer copies).
    pub fn holds(&self, ino: InodeId) -> bool {
        self.objects.kind(ino).is_ok()
    }

    /// Note that an inode here keeps `count` copies.
    fn counted(&self, count: u8) {
        self.own_counts.store(true, Ordering::Release);
        self.most_replicas.fetch_max(count, Ordering::AcqRel);
    }

    /// At open: whether any inode has its own count, and the most.
    pub(super) fn find_counts(&self) {
        let Ok(locals) = self.object_locals() else {
            return;
        };
        for local in locals {
            let ino = krg_proto::kdfs::inode_id(self.node(), local);
            if let Ok(Some(n)) = self.objects.get_value::<u8>(ino, OWN_XATTR) {
                self.counted(n.min(MAX_REPLICAS));
            }
        }
    }

    /// Directory `dir`'s policy for new inodes (`None`: the file system's
    /// count).
    pub(super) fn replica_policy(&self, dir: InodeId) -> Res<Option<u8>> {
        if !self.has_own_counts() {
            return Ok(None);
        }
        Ok(self
            .objects
            .get_value::<u8>(dir, POLICY_XATTR)?
            .filter(|n| (1..=MAX_REPLICAS).contains(n)))
    }

    /// `GetReplicas`.
    pub(super) fn get_replicas(&self, ino: InodeId) -> Res<KdfsResponse> {
        let kind = self.objects.kind(ino)?;
        let policy = match kind {
            FileKind::Dir => self.replica_policy(ino)?,
            _ => None,
        };
        Ok(KdfsResponse::Replicas {
            own: self.replicas_of(inode_local(ino)),
            policy,
        })
    }

    /// `SetInodeReplicas`.
    pub(super) fn set_inode_replicas(
        &self,
        ino: InodeId,
        own: Option<u8>,
        policy: Option<Option<u8>>,
    ) -> Res<KdfsResponse> {
        let own = own.map(|n| self.checked_here(n)).transpose()?;
        let policy = policy
            .map(|p| p.map(|n| self.checked_here(n)).transpose())
            .transpose()?;
        let _g = self.stripes.lock(ino);
        let is_dir = self.objects.is_dir(ino)?;
        if policy.is_some() && !is_dir {
            return Err(StoreError::NotDir);
        }
        let before = self.replicas_of(inode_local(ino));
        if let Some(p) = policy {
            if let Some(n) = p {
                self.counted(n);
            }
            self.objects
                .set_value(ino, POLICY_XATTR, p.as_ref(), false)?;
        }
        if let Some(n) = own {
            self.counted(n);
            self.objects.set_value(ino, OWN_XATTR, Some(&n), false)?;
        }
        Ok(KdfsResponse::ReplicasSet {
            before,
            after: own.unwrap_or(before),
        })
    }

    /// A count for an inode of this store: 1 to 3, and more than 1 only
    /// when the store is mirrored (else its node's mount writes it in
    /// place, unseen: `kdfsctl replicas 2` converts it first).
    fn checked_here(&self, count: u8) -> Res<u8> {
        let n = checked(count)?;
        if n > 1 && self.replicas() < 2 {
            return Err(StoreError::NotSupported);
        }
        Ok(n)
    }

    /// Give new inode `ino` (of `kind`) its directory's policy `policy`.
    pub(super) fn give_replicas(&self, ino: InodeId, kind: FileKind, policy: u8) -> Res<()> {
        let n = self.checked_here(policy)?;
        self.counted(n);
        self.objects.set_value(ino, OWN_XATTR, Some(&n), true)?;
        if kind == FileKind::Dir {
            self.objects.set_value(ino, POLICY_XATTR, Some(&n), true)?;
        }
        Ok(())
    }
}
