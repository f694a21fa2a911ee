//! Inode ids: an inode is named cluster-wide by the owning node's id in
//! the top 16 bits and the inode number local to that node in the low 48.

use crate::NodeId;

/// Cluster-wide inode id: `node << 48 | local`.
pub type InodeId = u64;

/// Bits of an [`InodeId`] holding the node-local inode number.
pub const LOCAL_BITS: u32 = 48;

/// Largest node id a kDFS can hold (16 bits; 0 is not a valid node id).
pub const MAX_KDFS_NODE: NodeId = 0xffff;

/// The node that owns inode `id`.
pub fn inode_node(id: InodeId) -> NodeId {
    (id >> LOCAL_BITS) as NodeId
}

/// The node-local inode number of `id`.
pub fn inode_local(id: InodeId) -> u64 {
    id & ((1u64 << LOCAL_BITS) - 1)
}

/// Build an id from its parts (`local` is truncated to 48 bits).
pub fn inode_id(node: NodeId, local: u64) -> InodeId {
    (u64::from(node) << LOCAL_BITS) | (local & ((1u64 << LOCAL_BITS) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_ids_split_and_join() {
        let id = inode_id(3, 0xabc);
        assert_eq!((inode_node(id), inode_local(id)), (3, 0xabc));
    }
}
