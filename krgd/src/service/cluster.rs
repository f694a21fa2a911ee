//! Cluster membership (placeholder until the Raft-backed service lands).

use std::sync::Arc;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::auth::Identity;
use krg_proto::cluster::{ClusterReply, ClusterRequest};
use krg_proto::peer::{PeerRequest, PeerResponse};

use crate::context::NodeContext;
use crate::net::admin::Caller;
use crate::DaemonError;

pub struct ClusterService {
    _ctx: Arc<NodeContext>,
}

impl ClusterService {
    pub async fn start(ctx: Arc<NodeContext>) -> Result<Arc<Self>, DaemonError> {
        Ok(Arc::new(Self { _ctx: ctx }))
    }

    pub async fn handle_admin(&self, _caller: &Caller, _req: ClusterRequest) -> Result<ClusterReply, AdminError> {
        Err(AdminError::new(ErrorKind::Unavailable, "membership service starting"))
    }

    pub async fn handle_peer(&self, _from: &Identity, req: PeerRequest) -> Result<PeerResponse, AdminError> {
        match req {
            PeerRequest::Ping { .. } => Ok(PeerResponse::Pong { epoch: 0 }),
            _ => Err(AdminError::new(ErrorKind::Unavailable, "membership service starting")),
        }
    }

    pub async fn shutdown(&self) {}
}
