//! The figures krgd exports at `/metrics` (Prometheus / OpenMetrics text,
//! prometheus-client). Counters and histograms are bumped where things
//! happen (router, peer pool, failure detector); the cluster gauges are
//! filled from the membership service's status just before each scrape.
//! Names follow Prometheus conventions: `krg_…_total` counters, `_seconds`
//! and `_bytes` units.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// `service` and `outcome` (ok / error) of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: &'static str,
    pub outcome: &'static str,
}

/// The service a peer call went to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: &'static str,
}

/// A kDFS operation kind (`read`, `lookup`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

/// Bytes read or written.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

/// Who placed a job (`policy`: the scheduler tree; `least_load`: the
/// fallback) and on which node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlacementLabels {
    pub by: &'static str,
    pub node: String,
}

/// How a migration this node started ended: `moved`, `fell_back` (the
/// target failed after the handover; the process runs here again),
/// `refused` (bad request, not allowed: nothing was stopped) or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// Which capability tracker (`checkpointable`, `can_migrate`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrackerLabel {
    pub tracker: &'static str,
}

/// A probe source of this node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub probe: String,
    pub source: String,
    pub unit: String,
}

/// One node and one of the states it may be in.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeStateLabels {
    pub node: String,
    pub state: &'static str,
}

/// A member and who has it checked out (`""` and value 0: nobody).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OwnerLabels {
    pub node: String,
    pub owner: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric of a krgd and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// Admin-socket requests answered, by service and outcome.
    pub admin_requests: Family<RequestLabels, Counter>,
    /// Requests from other nodes (and kDFS clients) answered, by service and outcome.
    pub peer_requests: Family<RequestLabels, Counter>,
    /// Round trips of calls this node makes to other nodes.
    pub peer_rpc_seconds: HistogramFamily<ServiceLabel>,
    /// Members this node, as leader, marked failed.
    pub failure_detections: Counter,
    /// Silence of a member before it was marked failed.
    pub failure_detection_seconds: Histogram,
    /// Times this node became Raft leader.
    pub elections_won: Counter,
    /// Leader changes this node saw as a follower.
    pub leader_changes: Counter,
    /// kDFS operations this node served, by kind.
    pub kdfs_operations: Family<OpLabel, Counter>,
    /// Their latency on this node (excluding the network).
    pub kdfs_operation_seconds: HistogramFamily<OpLabel>,
    /// kDFS file data read from / written to this node's store.
    pub kdfs_bytes: Family<DirectionLabel, Counter>,
    /// kDFS handles closed here because the mount holding them was gone.
    pub kdfs_handles_reaped: Counter,
    /// Jobs `krg run` (and XCPU sessions) started on this node.
    pub jobs_started: Counter,
    /// Automatic placements decided here, by decider and chosen node.
    pub placements: Family<PlacementLabels, Counter>,
    /// Migrations this node started (as the origin), by outcome.
    pub migrations: Family<OutcomeLabel, Counter>,
    /// How long a migrated process was stopped (freeze to running again).
    pub migration_downtime_seconds: Histogram,
    /// Whole migrations, from the request to the answer.
    pub migration_seconds: Histogram,
    /// Memory pulled by this node (the target) after post-copy handovers.
    pub migration_pulled_bytes: Counter,
    /// How long this node waited for the cluster to place a migrated
    /// process (the handover fence), as target or origin.
    pub migration_placement_seconds: Histogram,
    /// Proc connector datagrams that reached a capability tracker (its
    /// in-kernel filter drops the forks and exits of untracked processes).
    pub proc_events: Family<TrackerLabel, Counter>,
    members: Gauge,
    online: Gauge,
    epoch: Gauge,
    term: Gauge,
    leader: Gauge,
    node_state: Family<NodeStateLabels, Gauge>,
    node_owned: Family<OwnerLabels, Gauge>,
    jobs_running: Gauge,
    standins: Gauge,
    probe_value: Family<ProbeLabels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The cluster figures a scrape reports, read from the membership service.
#[derive(Debug, Clone, Default)]
pub struct ClusterFigures {
    pub members: usize,
    pub online: usize,
    pub epoch: u64,
    pub term: u64,
    pub leader: Option<u32>,
    /// (node id, state name) of every known node.
    pub nodes: Vec<(u32, &'static str)>,
    /// (member id, owner's user name if checked out) of every member.
    pub owners: Vec<(u32, Option<String>)>,
    pub jobs_running: usize,
    /// Stand-ins on this node of processes that moved away.
    pub standins: usize,
    /// (probe, source, unit, value) of this node's loaded probes.
    pub probes: Vec<(String, String, String, f64)>,
}

/// Every state name `krg_node_state` reports, one series per node each.
pub const NODE_STATES: &[&str] = &["present", "online", "failed", "leaving"];

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("krg"),
            admin_requests: Family::default(),
            peer_requests: Family::default(),
            peer_rpc_seconds: Family::new_with_constructor(latency_histogram),
            failure_detections: Counter::default(),
            failure_detection_seconds: Histogram::new(exponential_buckets(0.05, 1.5, 14)),
            elections_won: Counter::default(),
            leader_changes: Counter::default(),
            kdfs_operations: Family::default(),
            kdfs_operation_seconds: Family::new_with_constructor(latency_histogram),
            kdfs_bytes: Family::default(),
            kdfs_handles_reaped: Counter::default(),
            jobs_started: Counter::default(),
            placements: Family::default(),
            migrations: Family::default(),
            // 1 ms .. ~33 s
            migration_downtime_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            // 10 ms .. ~164 s
            migration_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 15)),
            migration_pulled_bytes: Counter::default(),
            // 1 ms .. ~33 s: a cut-off node waits until it hears
            migration_placement_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            proc_events: Family::default(),
            members: Gauge::default(),
            online: Gauge::default(),
            epoch: Gauge::default(),
            term: Gauge::default(),
            leader: Gauge::default(),
            node_state: Family::default(),
            node_owned: Family::default(),
            jobs_running: Gauge::default(),
            standins: Gauge::default(),
            probe_value: Family::default(),
        };
        m.register_all();
        m
    }

    fn register_all(&mut self) {
        let r = &mut self.registry;
        r.register(
            "cluster_members",
            "Members of the cluster (online, failed or leaving)",
            self.members.clone(),
        );
        r.register(
            "cluster_online_members",
            "Members that answer",
            self.online.clone(),
        );
        r.register(
            "cluster_epoch",
            "Committed membership changes so far",
            self.epoch.clone(),
        );
        r.register(
            "raft_term",
            "Current Raft term (grows by one per election)",
            self.term.clone(),
        );
        r.register(
            "cluster_leader",
            "Node id of the Raft leader (0: none known)",
            self.leader.clone(),
        );
        r.register(
            "node_state",
            "1 for the state each known node is in, else 0",
            self.node_state.clone(),
        );
        r.register(
            "node_owned",
            "1 if the member is checked out (krgadm nodes checkout), with its owner's user name; else 0 with owner=\"\"",
            self.node_owned.clone(),
        );
        r.register(
            "raft_elections_won",
            "Times this node became the Raft leader",
            self.elections_won.clone(),
        );
        r.register(
            "cluster_leader_changes",
            "Leader changes this node saw as a follower",
            self.leader_changes.clone(),
        );
        r.register(
            "failure_detections",
            "Members this node, as leader, marked failed",
            self.failure_detections.clone(),
        );
        r.register(
            "failure_detection_seconds",
            "Silence of a member before it was marked failed",
            self.failure_detection_seconds.clone(),
        );
        r.register(
            "admin_requests",
            "Admin-socket requests answered, by service and outcome",
            self.admin_requests.clone(),
        );
        r.register(
            "peer_requests",
            "Requests of other nodes and kDFS clients answered, by service and outcome",
            self.peer_requests.clone(),
        );
        r.register(
            "peer_rpc_seconds",
            "Round trip of calls to other nodes, by service",
            self.peer_rpc_seconds.clone(),
        );
        r.register(
            "kdfs_operations",
            "kDFS operations served by this node, by kind",
            self.kdfs_operations.clone(),
        );
        r.register(
            "kdfs_operation_seconds",
            "Time this node took to serve a kDFS operation, by kind",
            self.kdfs_operation_seconds.clone(),
        );
        r.register(
            "kdfs_bytes",
            "kDFS file data read from or written to this node's store",
            self.kdfs_bytes.clone(),
        );
        r.register(
            "kdfs_handles_reaped",
            "kDFS handles this node closed because the mount that held them was gone (died, or its node failed or left, for a lease)",
            self.kdfs_handles_reaped.clone(),
        );
        r.register(
            "jobs_started",
            "Jobs krg run and XCPU sessions started on this node",
            self.jobs_started.clone(),
        );
        r.register(
            "jobs_running",
            "Jobs this node runs now",
            self.jobs_running.clone(),
        );
        r.register(
            "standins",
            "Stand-ins on this node of processes that moved to another node",
            self.standins.clone(),
        );
        r.register(
            "placements",
            "Automatic placements of krg run jobs decided here, by decider (policy, least_load) and chosen node",
            self.placements.clone(),
        );
        r.register(
            "migrations",
            "Migrations this node started as the origin, by outcome (moved, fell_back, refused, failed)",
            self.migrations.clone(),
        );
        r.register(
            "migration_downtime_seconds",
            "How long a migrated process was stopped, from its freeze to running again (moved or fell back)",
            self.migration_downtime_seconds.clone(),
        );
        r.register(
            "migration_seconds",
            "Whole migrations this node started, from the request to the answer (moved or fell back)",
            self.migration_seconds.clone(),
        );
        r.register(
            "migration_pulled_bytes",
            "Bytes of memory this node pulled from the origins of post-copy migrations after their processes ran here",
            self.migration_pulled_bytes.clone(),
        );
        r.register(
            "migration_placement_seconds",
            "How long this node waited for the cluster to place a migrated process after the handover (the fence), as target or origin",
            self.migration_placement_seconds.clone(),
        );
        r.register(
            "proc_connector_events",
            "Proc connector events (forks, exits) that reached a capability tracker, by tracker",
            self.proc_events.clone(),
        );
        r.register(
            "probe_value",
            "Latest sample of each source of the probes loaded in this node's scheduler tree",
            self.probe_value.clone(),
        );
    }

    /// Count one automatic placement.
    pub fn placed(&self, by: &'static str, node: u32) {
        self.placements
            .get_or_create(&PlacementLabels {
                by,
                node: node.to_string(),
            })
            .inc();
    }

    /// Count one migration this node started, and time it when it moved
    /// the process (or took it back).
    pub fn migrated(
        &self,
        r: &Result<krg_proto::migrate::MigrateReport, krg_proto::admin::AdminError>,
    ) {
        use krg_proto::admin::ErrorKind as K;
        let outcome = match r {
            Ok(rep) if rep.fell_back.is_none() => "moved",
            Ok(_) => "fell_back",
            Err(e) => match e.kind {
                K::InvalidArgument | K::NotFound | K::PermissionDenied | K::Conflict => "refused",
                K::NoQuorum | K::Unavailable | K::Internal => "failed",
            },
        };
        self.migrations
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        if let Ok(rep) = r {
            self.migration_downtime_seconds
                .observe(rep.stopped_ms as f64 / 1000.0);
            self.migration_seconds.observe(rep.total_ms as f64 / 1000.0);
        }
    }

    /// Count one request of `service` with its outcome.
    pub fn count(family: &Family<RequestLabels, Counter>, service: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        family
            .get_or_create(&RequestLabels { service, outcome })
            .inc();
    }

    /// The figures of a scrape, then the whole text exposition.
    pub fn encode(&self, cluster: &ClusterFigures) -> Result<String, std::fmt::Error> {
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.members.set(to_i64(cluster.members as u64));
        self.online.set(to_i64(cluster.online as u64));
        self.epoch.set(to_i64(cluster.epoch));
        self.term.set(to_i64(cluster.term));
        self.leader.set(i64::from(cluster.leader.unwrap_or(0)));
        self.jobs_running.set(to_i64(cluster.jobs_running as u64));
        self.standins.set(to_i64(cluster.standins as u64));
        // Nodes that left the view must not linger as stale series.
        self.node_state.clear();
        for (node, state) in &cluster.nodes {
            for s in NODE_STATES {
                self.node_state
                    .get_or_create(&NodeStateLabels {
                        node: node.to_string(),
                        state: s,
                    })
                    .set(i64::from(s == state));
            }
        }
        self.node_owned.clear();
        for (node, owner) in &cluster.owners {
            let labels = OwnerLabels {
                node: node.to_string(),
                owner: owner.clone().unwrap_or_default(),
            };
            self.node_owned
                .get_or_create(&labels)
                .set(i64::from(owner.is_some()));
        }
        self.probe_value.clear();
        for (probe, source, unit, value) in &cluster.probes {
            let labels = ProbeLabels {
                probe: probe.clone(),
                source: source.clone(),
                unit: unit.clone(),
            };
            self.probe_value.get_or_create(&labels).set(*value);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The name of a kDFS request kind, for the `op` label (a fixed set, so
/// the number of series stays bounded).
pub fn kdfs_op(req: &krg_proto::kdfs::KdfsRequest) -> &'static str {
    use krg_proto::kdfs::KdfsRequest as R;
    match req {
        R::Hello => "hello",
        R::Root => "root",
        R::Statfs => "statfs",
        R::GetAttr { .. } => "getattr",
        R::SetAttr { .. } => "setattr",
        R::Readlink { .. } => "readlink",
        R::Lookup { .. } => "lookup",
        R::MakeInode { .. } => "make_inode",
        R::Create { .. } => "create",
        R::AddEntry { .. } => "add_entry",
        R::RemoveEntry { .. } => "remove_entry",
        R::Rename { .. } => "rename",
        R::IncLink { .. } => "inc_link",
        R::DecLink { .. } => "dec_link",
        R::Touch { .. } => "touch",
        R::RemoveDir { .. } => "rmdir",
        R::IsEmptyDir { .. } => "is_empty_dir",
        R::Open { .. } => "open",
        R::Read { .. } => "read",
        R::Write { .. } => "write",
        R::Fsync { .. } => "fsync",
        R::Release { .. } => "release",
        R::Fallocate { .. } => "fallocate",
        R::OpenDir { .. } => "opendir",
        R::ReadDir { .. } => "readdir",
        R::ReleaseDir { .. } => "releasedir",
        R::FsyncDir { .. } => "fsyncdir",
        R::GetXattr { .. } => "getxattr",
        R::ListXattr { .. } => "listxattr",
        R::SetXattr { .. } => "setxattr",
        R::RemoveXattr { .. } => "removexattr",
        R::SetLock { .. } => "setlock",
        R::GetLock { .. } => "getlock",
        R::ReleaseLocks { .. } => "release_locks",
        R::LockLease { .. } => "lock_lease",
        R::ReclaimLock { .. } => "reclaim_lock",
        R::As { req, .. } | R::HeldBy { req, .. } => kdfs_op(req),
        R::Watch { .. } => "watch",
        R::Unlink { .. } => "unlink",
        R::ReleaseMany { .. } => "release_many",
        R::GetStripe { .. } => "get_stripe",
        R::SetStripePolicy { .. } => "set_stripe_policy",
        R::GetReplicas { .. } => "get_replicas",
        R::Conversion { .. } => "conversion",
        R::Lend { .. } => "lend",
        R::SetInodeReplicas { .. } => "set_inode_replicas",
        R::SetLayout { .. } => "set_layout",
        R::StripeRead { .. } => "stripe_read",
        R::StripeWrite { .. } => "stripe_write",
        R::StripeSync { .. } => "stripe_sync",
        R::StripeTruncate { .. } => "stripe_truncate",
        R::StripeDrop { .. } => "stripe_drop",
        R::Extend { .. } => "extend",
        R::Unwatch { .. } => "unwatch",
        R::ReplaceEntry { .. } => "replace_entry",
        R::HandOver => "hand_over",
        R::SyncStore => "sync_store",
        R::ReplaceLayout { .. } => "replace_layout",
        R::StripeRename { .. } => "stripe_rename",
        R::SetRoot { .. } => "set_root",
        R::StripeAdopt { .. } => "stripe_adopt",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}
