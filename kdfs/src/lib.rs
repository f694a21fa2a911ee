//! kDFS: one namespace over every node's local directory.
