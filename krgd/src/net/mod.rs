//! The listening sockets: the admin Unix socket local tools talk to, and the
//! TCP listener other krgds connect to. Both hand each request to the
//! [`router`](crate::router). Outgoing peer connections are in
//! [`peers`](crate::peers), below the services that use them.

pub mod admin;
pub mod limits;
pub mod peer_server;
