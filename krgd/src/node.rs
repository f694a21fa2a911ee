//! A running node as the listeners and the router see it: the context every
//! service shares and one handle per service. `daemon` builds it; `net`
//! hands it to `router`, which picks the service.

use std::sync::Arc;

use crate::context::NodeContext;
use crate::service::{
    chkpt::ChkptService, cluster::ClusterService, kdfs::KdfsService, proc::ProcService,
    sched::SchedService,
};

/// A running node: its context and its services.
pub struct Node {
    pub ctx: Arc<NodeContext>,
    pub cluster: Arc<ClusterService>,
    pub chkpt: Arc<ChkptService>,
    pub sched: Arc<SchedService>,
    pub kdfs: Arc<KdfsService>,
    pub proc: Arc<ProcService>,
}
