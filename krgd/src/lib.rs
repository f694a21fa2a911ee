//! krgd, the krg node daemon, as a library: the binary in `main.rs` only
//! parses flags and calls [`daemon::run`]. Integration tests start the binary.

pub mod config;
pub mod context;
pub mod daemon;
pub mod error;
pub mod identity;
pub mod net;
pub mod router;
pub mod service;

pub use error::DaemonError;
