//! Maps each incoming request to the service that owns it.

use krg_proto::admin::{AdminError, AdminRequest, AdminResponse};
use krg_proto::auth::Identity;
use krg_proto::peer::{PeerRequest, PeerResponse};

use crate::caller::Caller;
use crate::node::Node;

pub async fn admin(node: &Node, caller: &Caller, req: AdminRequest) -> AdminResponse {
    let result = match req {
        AdminRequest::Cluster(r) => node
            .cluster
            .handle_admin(caller, r)
            .await
            .map(AdminResponse::Cluster),
        AdminRequest::Chkpt(r) => node
            .chkpt
            .handle_admin(caller, r)
            .await
            .map(AdminResponse::Chkpt),
        AdminRequest::Sched(r) => node
            .sched
            .handle_admin(caller, r)
            .await
            .map(AdminResponse::Sched),
        AdminRequest::Kdfs(r) => node
            .kdfs
            .handle_admin(caller, r)
            .await
            .map(AdminResponse::Kdfs),
        AdminRequest::Proc(r) => node
            .proc
            .handle_admin(caller, r)
            .await
            .map(AdminResponse::Proc),
    };
    result.unwrap_or_else(|e: AdminError| {
        tracing::info!(uid = caller.uid, error = %e.message, "admin request refused");
        AdminResponse::Error(e)
    })
}

pub async fn peer(node: &Node, from: &Identity, req: PeerRequest) -> PeerResponse {
    let result = match req {
        PeerRequest::Cluster(r) => node
            .cluster
            .handle_peer(from, r)
            .await
            .map(PeerResponse::Cluster),
        PeerRequest::Sched(r) => node
            .sched
            .handle_peer(from, r)
            .await
            .map(PeerResponse::Sched),
        PeerRequest::Kdfs(r) => node.kdfs.handle_peer(from, r).await.map(PeerResponse::Kdfs),
        PeerRequest::Proc(r) => node.proc.handle_peer(from, r).await.map(PeerResponse::Proc),
    };
    result.unwrap_or_else(PeerResponse::Error)
}
