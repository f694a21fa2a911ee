//! krgd, the krg node daemon, as a library: the binary in `main.rs` only
//! parses flags and calls [`daemon::run`]. Integration tests start the binary.
//!
//! Modules depend one way, from the top down: [`daemon`] starts everything;
//! [`net`] accepts requests and hands them to [`router`], which picks the
//! service of the [`node`]; the [`service`]s share a [`context`] (with the
//! outgoing [`peers`] pool) and authorise admin requests by their [`caller`].
//! [`sync`] and [`unmount`] are helpers below them all.
//! No module imports from one above it.

pub mod caller;
pub mod config;
pub mod context;
pub mod daemon;
pub mod error;
pub mod identity;
pub mod manpages;
pub mod metrics;
pub mod net;
pub mod node;
pub mod peers;
pub mod router;
pub mod service;
pub mod sync;
pub mod unmount;

pub use error::DaemonError;
