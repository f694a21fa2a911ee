//! The global scheduler: serves the /config/krg_scheduler tree and answers
//! placement queries.

use std::sync::Arc;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::auth::Identity;
use krg_proto::sched::{SchedPeerReply, SchedPeerRequest, SchedReply, SchedRequest};

use crate::context::NodeContext;
use crate::net::admin::Caller;
use crate::DaemonError;

pub struct SchedService {
    _ctx: Arc<NodeContext>,
}

impl SchedService {
    pub async fn start(ctx: Arc<NodeContext>) -> Result<Arc<Self>, DaemonError> {
        Ok(Arc::new(Self { _ctx: ctx }))
    }

    pub async fn handle_admin(&self, _caller: &Caller, _req: SchedRequest) -> Result<SchedReply, AdminError> {
        Err(AdminError::new(ErrorKind::Unavailable, "no scheduler is loaded on this node"))
    }

    pub async fn handle_peer(&self, _from: &Identity, req: SchedPeerRequest) -> Result<SchedPeerReply, AdminError> {
        match req {
            SchedPeerRequest::ProbeValues => Ok(SchedPeerReply::ProbeValues(Vec::new())),
        }
    }

    pub async fn shutdown(&self) {}
}
