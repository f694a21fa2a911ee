//! Sockets: the admin Unix socket, the peer TCP listener, and the pool of
//! outgoing peer connections.

pub mod admin;
pub mod peer_server;
pub mod pool;
