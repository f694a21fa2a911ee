//! The global scheduler: serves the /config/krg_scheduler tree (plugpropol
//! over FUSE), pulls the probe values of the other online members so that
//! policies see the whole cluster, and answers placement queries.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::auth::Identity;
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::sched::{ProbeValue, SchedPeerReply, SchedPeerRequest, SchedReply, SchedRequest};
use krg_proto::NodeId;
use plugpropol::mount::Mounted;
use plugpropol::{Engine, Reading, SharedValue, Unit};
use tokio::task::JoinHandle;

use crate::caller::Caller;
use crate::context::NodeContext;
use crate::sync;
use crate::DaemonError;

/// Bounds on how often other nodes' values are pulled (the shortest local
/// probe period, clamped).
const MIN_PULL: Duration = Duration::from_millis(50);
const MAX_PULL: Duration = Duration::from_secs(5);
/// Pull period when no probe is loaded (only the live-node set is refreshed).
const IDLE_PULL: Duration = Duration::from_secs(1);
/// How often echo policies log what they receive.
const ECHO_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct SchedService {
    ctx: Arc<NodeContext>,
    engine: Arc<Engine>,
    mounted: Mutex<Option<Mounted>>,
    puller: Mutex<Option<JoinHandle<()>>>,
}

impl SchedService {
    pub async fn start(ctx: Arc<NodeContext>) -> Result<Arc<Self>, DaemonError> {
        let mount_path = ctx.config.scheduler_mount.clone();
        let link_base = mount_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(krg_proto::DEFAULT_SCHEDULER_MOUNT));
        let engine = Engine::new(
            ctx.node_id(),
            &link_base,
            Some(ctx.config.plugin_registry.clone()),
        );
        let mounted = match &mount_path {
            Some(path) => {
                let (e, p) = (engine.clone(), path.clone());
                let m = tokio::task::spawn_blocking(move || plugpropol::mount::mount(e, &p))
                    .await
                    .map_err(|source| DaemonError::Task {
                        what: "mounting the scheduler tree",
                        source,
                    })?
                    .map_err(DaemonError::SchedulerTree)?;
                tracing::info!(path = %path.display(), "scheduler tree mounted");
                Some(m)
            }
            None => None,
        };
        let svc = Arc::new(Self {
            ctx,
            engine,
            mounted: Mutex::new(mounted),
            puller: Mutex::new(None),
        });
        let task = tokio::spawn(pull_loop(svc.ctx.clone(), svc.engine.clone()));
        *sync::lock(&svc.puller) = Some(task);
        Ok(svc)
    }

    /// The tree and its running parts.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub async fn handle_admin(
        &self,
        _caller: &Caller,
        req: SchedRequest,
    ) -> Result<SchedReply, AdminError> {
        match req {
            SchedRequest::Place { scheduler } => {
                let placed = self.engine.tree().place(scheduler.as_deref());
                let (node, reason) = placed.map_err(|e| {
                    let kind = match e {
                        plugpropol::Error::NotFound(_) => ErrorKind::NotFound,
                        plugpropol::Error::Invalid(_) => ErrorKind::InvalidArgument,
                        _ => ErrorKind::Unavailable,
                    };
                    AdminError::new(kind, format!("no placement: {e}"))
                })?;
                Ok(SchedReply::Placement { node, reason })
            }
        }
    }

    /// This node's latest numeric probe samples: (probe, source, unit,
    /// value), for `/metrics` (text values are left out).
    pub fn probe_values(&self) -> Vec<(String, String, String, f64)> {
        self.engine
            .tree()
            .shared_values()
            .into_iter()
            .filter_map(|v| match v.value {
                plugpropol::value::Reading::Num(n) => {
                    Some((v.probe, v.source, v.unit.name().to_string(), n))
                }
                plugpropol::value::Reading::Text(_) => None,
            })
            .collect()
    }

    pub async fn handle_peer(
        &self,
        _from: &Identity,
        req: SchedPeerRequest,
    ) -> Result<SchedPeerReply, AdminError> {
        match req {
            SchedPeerRequest::ProbeValues => {
                let values = self
                    .engine
                    .tree()
                    .shared_values()
                    .into_iter()
                    .map(to_wire)
                    .collect();
                Ok(SchedPeerReply::ProbeValues(values))
            }
        }
    }

    pub async fn shutdown(&self) {
        if let Some(t) = sync::lock(&self.puller).take() {
            t.abort();
        }
        let mounted = sync::lock(&self.mounted).take();
        if let Some(m) = mounted {
            let path = m.path().display().to_string();
            crate::unmount::bounded("the scheduler tree", move || {
                m.unmount();
                tracing::info!(path, "scheduler tree unmounted");
            })
            .await;
        }
        // Stopping plug-ins waits for them to exit: it blocks.
        let engine = self.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    }
}

fn to_wire(v: SharedValue) -> ProbeValue {
    ProbeValue {
        value: v.value.render(v.unit),
        probe: v.probe,
        source: v.source,
        unit: v.unit.name().to_string(),
        seq: v.seq,
    }
}

fn from_wire(v: ProbeValue) -> Option<SharedValue> {
    let unit = Unit::parse(&v.unit)?;
    let value = Reading::parse(unit, &v.value)?;
    Some(SharedValue {
        probe: v.probe,
        source: v.source,
        unit,
        value,
        seq: v.seq,
    })
}

/// Every pull period: refresh the set of online members, then fetch each
/// one's probe values (all at once, each bounded by the period) so that a
/// remote sample reaches local policies within one period plus latency.
async fn pull_loop(ctx: Arc<NodeContext>, engine: Arc<Engine>) {
    let mut view_rx = ctx.watch_view();
    let mut last_echo = Instant::now();
    loop {
        let period = engine
            .tree()
            .shortest_period()
            .map(|p| p.clamp(MIN_PULL, MAX_PULL));
        let wait = period.unwrap_or(IDLE_PULL);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            changed = view_rx.changed() => {
                if changed.is_err() {
                    // The view publisher is gone: keep polling on the timer.
                    tokio::time::sleep(wait).await;
                }
            },
        }
        let me = ctx.node_id();
        let others: BTreeSet<NodeId> = ctx
            .view()
            .online_members()
            .map(|n| n.id)
            .filter(|id| *id != me)
            .collect();
        engine.tree().set_live(others.clone());
        if let Some(period) = period {
            let timeout = period.max(Duration::from_millis(500));
            let calls = others.iter().map(|&node| {
                let ctx = ctx.clone();
                async move {
                    (
                        node,
                        ctx.peers
                            .call(
                                node,
                                PeerRequest::Sched(SchedPeerRequest::ProbeValues),
                                timeout,
                            )
                            .await,
                    )
                }
            });
            for (node, answer) in futures::future::join_all(calls).await {
                match answer {
                    Ok(PeerResponse::Sched(SchedPeerReply::ProbeValues(values))) => {
                        let values: Vec<SharedValue> =
                            values.into_iter().filter_map(from_wire).collect();
                        engine.tree().store_remote(node, &values);
                    }
                    Ok(other) => {
                        tracing::debug!(node, answer = ?other, "unexpected answer to ProbeValues")
                    }
                    Err(e) => tracing::debug!(node, error = %e, "could not pull probe values"),
                }
            }
        }
        if last_echo.elapsed() >= ECHO_LOG_EVERY {
            last_echo = Instant::now();
            for (policy, received) in engine.tree().echo_report() {
                tracing::info!(policy, received = %received.trim_end().replace('\n', "; "), "echo_policy");
            }
        }
    }
}
