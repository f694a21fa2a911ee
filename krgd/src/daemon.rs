//! Start-up and shutdown of a node: resolve identity, bind sockets, start the
//! services, serve until SIGTERM/SIGINT, then stop everything in order.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::context::NodeContext;
use crate::net;
use crate::node::Node;
use crate::service::{
    chkpt::ChkptService,
    cluster::ClusterService,
    kdfs::{KdfsHandOver, KdfsService},
    proc::ProcService,
    sched::SchedService,
};
use crate::DaemonError;

/// Run krgd with `config` until a termination signal arrives.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let key = krg_proto::auth::ClusterKey::from_file(&config.cluster_key_file)?;
    let net_info = crate::identity::interface_for(config.advertise.ip()).await;
    let mut config = config;
    if config.broadcast.is_none() {
        config.broadcast = net_info.broadcast;
    }
    if config.advertise.ip().is_unspecified() {
        // Listening on every address: tell peers the address of the interface found.
        let ip = net_info.addr.ok_or_else(|| {
            DaemonError::invalid(
                "advertise",
                "listening on an unspecified address and no interface address found: pass --advertise",
            )
        })?;
        config.advertise.set_ip(ip);
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| DaemonError::io(format!("creating {}", config.data_dir.display()), e))?;
    let tcp = TcpListener::bind(config.listen)
        .await
        .map_err(|e| DaemonError::io(format!("listening on {}", config.listen), e))?;
    // `--listen ADDR:0`: the kernel chose the port; peers must be told that one.
    if config.listen.port() == 0 {
        let bound = tcp
            .local_addr()
            .map_err(|e| DaemonError::io(format!("listening on {}", config.listen), e))?;
        config.listen.set_port(bound.port());
        if config.advertise.port() == 0 {
            config.advertise.set_port(bound.port());
        }
    }
    let admin = net::admin::bind(&config.socket).await?;
    let http = match config.http_listen {
        Some(addr) => net::http::bind(addr).await,
        None => None,
    };
    let ctx = Arc::new(NodeContext::new(config, key, net_info.mac));
    tracing::info!(node = ctx.node_id(), session = ctx.config.session_id, listen = %ctx.config.listen,
        mac = ?ctx.mac.map(|m| m.to_string()), "krgd starting");

    let cluster = ClusterService::start(ctx.clone()).await?;
    let chkpt = ChkptService::start(ctx.clone()).await?;
    let sched = SchedService::start(ctx.clone()).await?;
    // Where a migration's process runs, and who serves a mirrored kDFS
    // store, is the membership's to decide.
    let placement = Arc::new(cluster.clone());
    let kdfs = KdfsService::start(ctx.clone(), placement.clone()).await?;
    let proc = ProcService::start(ctx.clone(), sched.clone(), chkpt.clone(), placement).await?;
    // A node removed while it runs hands its CAN_MIGRATE processes over,
    // then its kDFS data (in this order: processes that moved may still
    // read its files meanwhile).
    cluster.register_handover(proc.handover());
    cluster.register_handover(KdfsHandOver::new(kdfs.clone()));
    let node = Arc::new(Node {
        cluster,
        chkpt,
        sched,
        kdfs,
        proc,
        ctx: ctx.clone(),
    });
    let tcp_task = tokio::spawn(net::peer_server::serve(tcp, node.clone()));
    let admin_task = tokio::spawn(net::admin::serve(admin, node.clone()));
    let http_task = http.map(|l| tokio::spawn(net::http::serve(l, node.clone())));

    // A krgd that finds its node id already in use at start-up yields.
    let outcome = tokio::select! {
        _ = wait_for_termination() => Ok(()),
        addr = node.cluster.identity_conflict() => Err(DaemonError::IdTaken {
            node: ctx.node_id(),
            addr,
        }),
    };
    tracing::info!(node = ctx.node_id(), "krgd stopping");
    admin_task.abort();
    if let Some(t) = http_task {
        t.abort();
    }
    node.proc.shutdown().await;
    node.kdfs.shutdown().await;
    node.sched.shutdown().await;
    node.chkpt.shutdown().await;
    node.cluster.shutdown().await;
    tcp_task.abort();
    let _ = std::fs::remove_file(&ctx.config.socket);
    outcome
}

async fn wait_for_termination() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon can only be killed; keep serving.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
