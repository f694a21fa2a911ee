//! What every part of the process service shares: the node context, the
//! process table, the spawner thread, the init to start and the run
//! policy.

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::Arc;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::NodeId;

use super::creds::RunPolicy;
use super::migrate::registry::Registry;
use super::spawner::Spawner;
use super::table::Table;
use crate::context::NodeContext;
use crate::service::chkpt::ChkptService;

/// Most copies of a job one run may start per node.
pub const MAX_PER_NODE: u32 = 1024;

/// Shared state of the process service.
pub struct ProcState {
    /// The node.
    pub ctx: Arc<NodeContext>,
    /// This node's jobs.
    pub table: Table,
    /// Starts inits.
    pub spawner: Spawner,
    /// Path of `krg-init`.
    pub init: CString,
    /// Who may run jobs here.
    pub policy: RunPolicy,
    /// Where detached jobs' output goes.
    pub detach_dir: PathBuf,
    /// Why jobs cannot run here (no usable `krg-init`), if they cannot.
    pub init_problem: Option<String>,
    /// Becomes true when krgd stops: sessions tell their users and
    /// send their jobs SIGTERM.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// The capability trackers (CAN_MIGRATE).
    pub caps: Arc<ChkptService>,
    /// Migrations in and out.
    pub migration: Registry,
    /// Sessions of moved jobs waiting for a node to join them.
    pub splices: Arc<super::splice::waiting::Waiting>,
    /// Where a migration's process runs, decided by the cluster (the
    /// handover fence, [`super::migrate::fence`]).
    pub placement: Arc<dyn crate::service::placement::Placement>,
    /// Where images of migrations are kept while they move
    /// (`<data_dir>/migrate`).
    pub spool: PathBuf,
    /// Parts of applications held stopped while the rest is saved.
    pub held: super::heldparts::Held,
}

impl ProcState {
    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.ctx.node_id()
    }

    /// Refuse runs when this node cannot start jobs.
    pub fn check_available(&self) -> Result<(), AdminError> {
        match &self.init_problem {
            None => Ok(()),
            Some(why) => Err(AdminError::new(
                ErrorKind::Unavailable,
                format!("node {} cannot run jobs: {why}", self.node()),
            )),
        }
    }
}
