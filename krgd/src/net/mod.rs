//! The listening sockets: the admin Unix socket local tools talk to, the
//! TCP listener other krgds connect to (both hand each request to the
//! [`router`](crate::router)), and the read-only HTTP listener of
//! `/metrics` and the status page. Outgoing peer connections are in
//! [`peers`](crate::peers), below the services that use them.

pub mod admin;
pub mod http;
pub mod limits;
pub mod page;
pub mod peer_server;
pub mod status;
