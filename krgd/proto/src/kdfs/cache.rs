//! Kernel caches kept coherent: what a caching client must forget, sent by
//! the node whose inode or directory changed.
//!
//! A mount (mount.kdfs) lets its kernel cache names and attributes for a
//! while (`entry_timeout`, `attr_timeout`). Each node remembers which mounts
//! it gave what, and when something changes there, it tells each of them
//! ([`Inval`]) and waits for their acknowledgement before answering the
//! change — so a change that returned is seen by every mount's next look.

use serde::{Deserialize, Serialize};

use super::InodeId;

/// One thing a caching mount must forget.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Inval {
    /// Entry `name` of directory `dir` was removed, replaced or moved.
    Entry {
        /// The directory.
        dir: InodeId,
        /// The name that no longer names what it named.
        name: Vec<u8>,
    },
    /// The attributes of `ino` changed (size, mode, owner, times, links).
    Attr(InodeId),
    /// The regular file `ino` is open for writing through another node: its
    /// size and times may change at any moment, so its attributes are not
    /// to be cached until [`Inval::Stable`] (sent to the owner's own mounts,
    /// the only ones that cache a regular file's attributes).
    Volatile(InodeId),
    /// The last handle open for writing on `ino` through another node closed.
    Stable(InodeId),
    /// Directory `dir`, lent to this mount (`Lend`), is taken back: finish
    /// what is under way there, make the handles of the files made under
    /// the loan known (`Open`), then acknowledge; from then on every change
    /// there goes through krgd again.
    Recall(InodeId),
    /// Another mount of this node is up: keep none of the node's regular
    /// files' attributes in the kernel from now on (the other one writes
    /// them in place, unseen), and forget those kept.
    NotSole,
}
