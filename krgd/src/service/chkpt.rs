//! CHECKPOINTABLE capability tracking (krgcapset).

use std::sync::Arc;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::chkpt::{ChkptReply, ChkptRequest};

use crate::context::NodeContext;
use crate::net::admin::Caller;
use crate::DaemonError;

pub struct ChkptService {
    _ctx: Arc<NodeContext>,
}

impl ChkptService {
    pub async fn start(ctx: Arc<NodeContext>) -> Result<Arc<Self>, DaemonError> {
        Ok(Arc::new(Self { _ctx: ctx }))
    }

    pub async fn handle_admin(&self, _caller: &Caller, _req: ChkptRequest) -> Result<ChkptReply, AdminError> {
        Err(AdminError::new(ErrorKind::Unavailable, "this krgd does not track CHECKPOINTABLE processes yet"))
    }

    pub async fn shutdown(&self) {}
}
