//! Maps each incoming request to the service that owns it, and counts it
//! (per service and outcome; kDFS per operation kind, with its latency and
//! bytes) for `/metrics`.

use krg_proto::admin::{AdminError, AdminRequest, AdminResponse};
use krg_proto::auth::Identity;
use krg_proto::kdfs::{KdfsRequest, KdfsResponse};
use krg_proto::peer::{PeerRequest, PeerResponse};

use crate::caller::Caller;
use crate::metrics::{kdfs_op, DirectionLabel, Metrics, OpLabel};
use crate::node::Node;

pub async fn admin(node: &Node, caller: &Caller, req: AdminRequest) -> AdminResponse {
    let service = match &req {
        AdminRequest::Cluster(_) => "cluster",
        AdminRequest::Chkpt(_) => "chkpt",
        AdminRequest::Sched(_) => "sched",
        AdminRequest::Kdfs(_) => "kdfs",
        AdminRequest::Proc(_) => "proc",
    };
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
    Metrics::count(&node.ctx.metrics.admin_requests, service, result.is_ok());
    result.unwrap_or_else(|e: AdminError| {
        tracing::info!(uid = caller.uid, error = %e.message, "admin request refused");
        AdminResponse::Error(e)
    })
}

pub async fn peer(node: &Node, from: &Identity, req: PeerRequest) -> PeerResponse {
    let service = crate::peers::service_of(&req);
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
        PeerRequest::Kdfs(r) => kdfs(node, from, r).await.map(PeerResponse::Kdfs),
        PeerRequest::Proc(r) => node.proc.handle_peer(from, r).await.map(PeerResponse::Proc),
    };
    Metrics::count(&node.ctx.metrics.peer_requests, service, result.is_ok());
    result.unwrap_or_else(PeerResponse::Error)
}

/// A kDFS operation, counted by kind with its latency and bytes.
async fn kdfs(node: &Node, from: &Identity, req: KdfsRequest) -> Result<KdfsResponse, AdminError> {
    let m = &node.ctx.metrics;
    let op = kdfs_op(&req);
    // A caching mount's requests come wrapped (`As`).
    let inner = match &req {
        KdfsRequest::As { req, .. } => &**req,
        req => req,
    };
    let written = match inner {
        KdfsRequest::Write { data, .. } | KdfsRequest::StripeWrite { data, .. } => {
            Some(data.0.len() as u64)
        }
        _ => None,
    };
    let start = std::time::Instant::now();
    let result = node.kdfs.handle_peer(from, req).await;
    m.kdfs_operation_seconds
        .get_or_create(&OpLabel { op })
        .observe(start.elapsed().as_secs_f64());
    m.kdfs_operations.get_or_create(&OpLabel { op }).inc();
    let moved = match (&result, written) {
        (Ok(KdfsResponse::Data(d)), _) => Some(("read", d.0.len() as u64)),
        (Ok(KdfsResponse::Written(n)), Some(_)) => Some(("written", u64::from(*n))),
        _ => None,
    };
    if let Some((direction, n)) = moved {
        m.kdfs_bytes
            .get_or_create(&DirectionLabel { direction })
            .inc_by(n);
    }
    result
}
