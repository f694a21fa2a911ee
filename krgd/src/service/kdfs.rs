//! kDFS storage: serves this node's formatted kDFS directory to the cluster.

use std::sync::Arc;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::auth::Identity;
use krg_proto::kdfs::{KdfsAdminReply, KdfsAdminRequest, KdfsRequest, KdfsResponse};

use crate::context::NodeContext;
use crate::net::admin::Caller;
use crate::DaemonError;

pub struct KdfsService {
    _ctx: Arc<NodeContext>,
}

impl KdfsService {
    pub async fn start(ctx: Arc<NodeContext>) -> Result<Arc<Self>, DaemonError> {
        Ok(Arc::new(Self { _ctx: ctx }))
    }

    pub async fn handle_admin(&self, _caller: &Caller, _req: KdfsAdminRequest) -> Result<KdfsAdminReply, AdminError> {
        Err(AdminError::new(ErrorKind::Unavailable, "kDFS storage is not part of this krgd build"))
    }

    pub async fn handle_peer(&self, _from: &Identity, req: KdfsRequest) -> Result<KdfsResponse, AdminError> {
        match req {
            KdfsRequest::Hello => Ok(KdfsResponse::Hello { fs_id: None }),
        }
    }

    pub async fn shutdown(&self) {}
}
