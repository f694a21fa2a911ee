//! The services of a node. Each owns its state and tasks; the router hands
//! them requests. Every service has the same shape:
//!
//! ```ignore
//! async fn start(ctx: Arc<NodeContext>) -> Result<Arc<Self>, DaemonError>;
//! async fn handle_admin(&self, caller: &Caller, req: XRequest) -> Result<XReply, AdminError>;
//! async fn handle_peer(&self, from: &Identity, req: XPeerRequest) -> Result<XPeerReply, AdminError>; // if it talks to peers
//! async fn shutdown(&self);
//! ```
//!
//! Services do not import each other; where one needs another, a trait
//! between them says what ([`placement`]), and the daemon connects them.

pub mod chkpt;
pub mod cluster;
pub mod kdfs;
pub mod placement;
pub mod proc;
pub mod sched;
