//! Directories lent to the node's sole mount (`client::loans` has the
//! whole story): krgd checks that a directory may be lent and reserves the
//! loan's inode numbers; the mount's view of the store then makes regular
//! files there, and removes those it made, with the very code krgd runs
//! (same steps, same order, so a crash leaves what fsck knows).

use krg_proto::kdfs::{inode_node, Attr, FileKind, InodeId, NewInode, RemoveWhat};

use super::error::{Res, StoreError};
use super::Store;

impl Store {
    /// Lend directory `dir` (krgd): the first of `count` local inode
    /// numbers reserved for the loan. Refused (`Busy`) while this store
    /// keeps more than one copy of anything (every change must reach the
    /// mirror through krgd), or when creates in `dir` need krgd: a striping
    /// policy (the new file's units go to other nodes) or a count of
    /// copies of its own.
    pub fn lend(&self, dir: InodeId, count: u64) -> Res<u64> {
        if self.replicas() > 1 || self.most_replicas() > 1 {
            return Err(StoreError::Busy);
        }
        if inode_node(dir) != self.node() {
            return Err(StoreError::NotHere(dir));
        }
        if !self.objects.is_dir(dir)? {
            return Err(StoreError::NotDir);
        }
        if self.objects.policy(dir)?.is_some() || self.replica_policy(dir)?.is_some() {
            return Err(StoreError::Busy);
        }
        self.alloc.lend(&self.top, count)
    }

    /// Under a loan of `dir` (the mount's view): make regular file `ino`, a
    /// number of the loan, named `name` there, as krgd's `Create` would.
    pub fn create_lent(
        &self,
        dir: InodeId,
        name: &[u8],
        new: &NewInode,
        ino: InodeId,
    ) -> Res<Attr> {
        if new.kind != FileKind::File {
            return Err(StoreError::Invalid(
                "only regular files are made under a loan",
            ));
        }
        self.create_numbered(dir, name, new, Some(ino))
    }

    /// Under a loan of `dir` (the mount's view): remove entry `name`, which
    /// names `ino`, a regular file made under the loan that nothing holds
    /// open, then its object, as krgd's `Unlink` would. `false`, nothing
    /// done: `ino` has other names (krgd drops a link of those).
    pub fn unlink_lent(&self, dir: InodeId, name: &[u8], ino: InodeId) -> Res<bool> {
        if self.objects.kind(ino)? != FileKind::File || self.objects.nlink(ino)? != 1 {
            return Ok(false);
        }
        self.remove_entry(dir, name, RemoveWhat::NonDir, Some(ino))?;
        super::crash::point("remove-entry");
        self.objects.remove_file(ino)?;
        Ok(true)
    }
}
