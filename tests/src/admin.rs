//! A blocking client of krgd's admin socket for benchmarks and long tests:
//! one connection per node, kept open between calls and reopened when it
//! breaks, so that looking at a node costs a round trip on its Unix socket
//! rather than starting a `krgadm` process.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use krg_proto::admin::{AdminRequest, AdminResponse};
use krg_proto::client::AdminClient;
use krg_proto::cluster::{ClusterReply, ClusterRequest, ClusterStatus, NodeInfo};

/// Connections to the admin sockets of several nodes, sharing one runtime.
pub struct AdminPool {
    rt: tokio::runtime::Runtime,
    conns: Vec<(PathBuf, Mutex<Option<AdminClient>>)>,
}

impl AdminPool {
    pub fn new(sockets: &[PathBuf]) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        Ok(Self {
            rt,
            conns: sockets
                .iter()
                .map(|p| (p.clone(), Mutex::new(None)))
                .collect(),
        })
    }

    fn call(&self, i: usize, req: ClusterRequest) -> Option<ClusterReply> {
        let (path, slot) = self.conns.get(i)?;
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        let req = AdminRequest::Cluster(req);
        let answer = self.rt.block_on(async {
            if slot.is_none() {
                *slot = Some(AdminClient::connect(Path::new(path)).await.ok()?);
            }
            slot.as_mut()?.call(&req).await.ok()
        });
        if answer.is_none() {
            *slot = None;
        }
        match answer? {
            AdminResponse::Cluster(r) => Some(r),
            _ => None,
        }
    }

    /// `cluster status` of node number `i` (in the order given to `new`).
    pub fn status(&self, i: usize) -> Option<ClusterStatus> {
        match self.call(i, ClusterRequest::Status)? {
            ClusterReply::Status(s) => Some(s),
            _ => None,
        }
    }

    /// `nodes status` of node number `i`.
    pub fn nodes(&self, i: usize) -> Option<Vec<NodeInfo>> {
        match self.call(i, ClusterRequest::NodesStatus)? {
            ClusterReply::Nodes(n) => Some(n),
            _ => None,
        }
    }
}
