//! Scheduler-driven load balancing: runs every `balance_policy` of this
//! node's scheduler tree. Each round (every `interval`) it measures this
//! node's processes ([`super::load`]), lets the policy decide
//! ([`plugpropol::balance::choose`]) and carries out up to `max_moves`
//! moves through the migration code, as root on behalf of the system.
//! Every decision lands in the policy's `decisions` file and in krgd's log.
//!
//! After a move the next round waits until the nodes involved have
//! published two new samples on the port (or ten intervals passed), so
//! that no decision is taken on values from before the move.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use krg_proto::migrate::MigrateRequest;
use krg_proto::proc::Credentials;
use krg_proto::NodeId;
use plugpropol::balance::{choose, BalanceConfig, Candidate, Choice};
use plugpropol::tree::{BalanceWork, CompId};
use plugpropol::value::Readings;
use plugpropol::{Engine, Reading};

use super::creds::Origin;
use super::load::{self, Meter, Sample};
use super::migrate;
use super::state::ProcState;

/// How often the loop looks for policies whose interval has passed.
pub(super) const TICK: Duration = Duration::from_millis(200);
/// A process whose move was refused is not tried again for this long.
pub const REFUSED_BACKOFF: Duration = Duration::from_secs(60);
/// Samples a node must publish after a move before the next decision.
const SETTLE_SAMPLES: u64 = 2;
/// Intervals after which a move's settling is given up (a node that stopped
/// publishing).
const SETTLE_MAX_INTERVALS: u32 = 10;

/// What one policy remembers between rounds.
pub(super) struct PolicyState {
    next: Instant,
    pub(super) meter: Meter,
    /// (node, its port's sample counter at the last move).
    settle: Vec<(NodeId, u64)>,
    settle_since: Instant,
    /// PID → when its move was refused, and why.
    pub(super) refused: HashMap<i32, (Instant, String)>,
    /// The kind of the last "nothing moved" line, to collapse repeats.
    last_stay: Option<String>,
}

impl PolicyState {
    pub(super) fn new() -> Self {
        PolicyState {
            next: Instant::now(),
            meter: Meter::default(),
            settle: Vec::new(),
            settle_since: Instant::now(),
            refused: HashMap::new(),
            last_stay: None,
        }
    }
}

/// The balancing loop of this node (runs until aborted).
pub async fn run(st: Arc<ProcState>, engine: Arc<Engine>) {
    let mut states: HashMap<CompId, PolicyState> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        let work = engine.tree().balance_work();
        states.retain(|c, _| work.iter().any(|w| w.comp == *c));
        for w in work {
            let s = states.entry(w.comp).or_insert_with(PolicyState::new);
            if Instant::now() < s.next {
                continue;
            }
            s.next = Instant::now() + Duration::from_millis(w.config.interval_ms);
            round(&st, &engine, &w, s).await;
        }
    }
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Record a decision in the policy's `decisions` file and krgd's log.
pub(super) fn note(engine: &Engine, w: &BalanceWork, s: &mut PolicyState, line: String) {
    s.last_stay = None;
    tracing::info!(policy = %w.path, decision = %line, "balance_policy");
    let line = format!("{} {line}", now_text());
    engine.tree().note_decision(w.comp, line, false);
}

/// Record "nothing moved"; a repeat of the same kind replaces the last
/// line (and is logged at debug level only).
fn stay(engine: &Engine, w: &BalanceWork, s: &mut PolicyState, kind: &str, why: String) {
    let repeat = s.last_stay.as_deref() == Some(kind);
    if repeat {
        tracing::debug!(policy = %w.path, why, "balance_policy: nothing moved");
    } else {
        tracing::info!(policy = %w.path, why, "balance_policy: nothing moved");
    }
    s.last_stay = Some(kind.to_string());
    let line = format!("{} none: {why}", now_text());
    engine.tree().note_decision(w.comp, line, repeat);
}

/// Every node's current value on the port, with its sample counter.
fn port_values(load: &Readings) -> BTreeMap<NodeId, (f64, u64)> {
    match load {
        Readings::PerNode(m) => m
            .iter()
            .filter_map(|(n, series)| {
                Some((*n, (series.last().and_then(Reading::num)?, series.seq)))
            })
            .collect(),
        Readings::Cluster(_) => BTreeMap::new(),
    }
}

fn loads_text(loads: &BTreeMap<NodeId, f64>) -> String {
    let parts: Vec<String> = loads.iter().map(|(n, v)| format!("{n}={v:.2}")).collect();
    parts.join(" ")
}

/// This node's processes as candidates, each held back if it may not move.
pub(super) fn candidates(
    st: &ProcState,
    cfg: &BalanceConfig,
    s: &mut PolicyState,
    sample: &Sample,
) -> Vec<Candidate> {
    s.refused
        .retain(|_, (at, _)| at.elapsed() < REFUSED_BACKOFF);
    let residency = Duration::from_millis(cfg.min_residency_ms);
    sample
        .procs
        .iter()
        .map(|p| {
            let held = if !p.migratable {
                Some("not CAN_MIGRATE (a krg run job)".to_string())
            } else if let Some((at, why)) = s.refused.get(&p.pid) {
                Some(format!("refused {} s ago: {why}", at.elapsed().as_secs()))
            } else {
                migrate::arrived(st, p.pid)
                    .filter(|at| at.elapsed() < residency)
                    .map(|at| format!("arrived {} ms ago", at.elapsed().as_millis()))
            };
            Candidate {
                pid: p.pid,
                demand: p.run,
                held,
            }
        })
        .collect()
}

/// Whether the nodes of the last moves have published fresh values.
fn settled(s: &mut PolicyState, values: &BTreeMap<NodeId, (f64, u64)>, interval: Duration) -> bool {
    if s.settle_since.elapsed() > interval * SETTLE_MAX_INTERVALS {
        s.settle.clear();
    }
    s.settle.retain(|(n, seq)| {
        values
            .get(n)
            .is_some_and(|(_, now)| *now < seq + SETTLE_SAMPLES)
    });
    s.settle.is_empty()
}

/// One round of policy `w`.
async fn round(st: &Arc<ProcState>, engine: &Engine, w: &BalanceWork, s: &mut PolicyState) {
    let me = st.node();
    let cfg = w.config;
    let procs = load::own_processes(st);
    let sample = s.meter.sample(&procs);
    let Some(readings) = &w.load else {
        return stay(
            engine,
            w,
            s,
            "unlinked",
            format!("{} is not linked", plugpropol::balance::PORT),
        );
    };
    let values = port_values(readings);
    if !sample.fresh {
        return stay(
            engine,
            w,
            s,
            "measuring",
            "measuring this node's processes".into(),
        );
    }
    if !settled(s, &values, Duration::from_millis(cfg.interval_ms)) {
        let nodes: Vec<String> = s.settle.iter().map(|(n, _)| n.to_string()).collect();
        let why = format!(
            "waiting for new load values of node(s) {} after the last move",
            nodes.join(", ")
        );
        return stay(engine, w, s, "settling", why);
    }
    let mut loads: BTreeMap<NodeId, f64> = values.iter().map(|(n, (v, _))| (*n, *v)).collect();
    let mut cands = candidates(st, &cfg, s, &sample);
    for _ in 0..cfg.max_moves {
        let before = loads_text(&loads);
        let (pid, to, size, gap) = match choose(&cfg, me, &loads, &cands) {
            Choice::Stay { why } => {
                // the same reason with other figures is a repeat
                let kind: String = why.chars().filter(|c| !c.is_ascii_digit()).collect();
                return stay(engine, w, s, &kind, format!("{why} (loads {before})"));
            }
            Choice::Move { pid, to, size, gap } => (pid, to, size, gap),
        };
        cands.retain(|c| c.pid != pid);
        let detail = format!(
            "loads {before}, process {size:.2}, gap {gap:.2} >= threshold {}",
            cfg.threshold
        );
        let context = format!("loads {before}");
        if carry_out(st, engine, w, s, (pid, to), &detail, &context).await {
            *loads.entry(me).or_default() -= size;
            *loads.entry(to).or_default() += size;
            // the next round waits for new values of every node this
            // round touched
            for n in [me, to] {
                if let Some((_, seq)) = values.get(&n) {
                    if !s.settle.iter().any(|(m, _)| *m == n) {
                        s.settle.push((n, *seq));
                    }
                }
            }
            s.settle_since = Instant::now();
        }
    }
}

/// Move `pid` to node `to` through the migration code, as root on behalf
/// of the system, and note the outcome: `moved … from node N to node L:
/// {detail} (… ms, stopped … ms)`, or a refusal (remembered for
/// [`REFUSED_BACKOFF`]) ending in `({context})`. Whether it moved.
pub(super) async fn carry_out(
    st: &Arc<ProcState>,
    engine: &Engine,
    w: &BalanceWork,
    s: &mut PolicyState,
    (pid, to): (i32, NodeId),
    detail: &str,
    context: &str,
) -> bool {
    let me = st.node();
    let req = MigrateRequest {
        from: None,
        pid,
        to,
        tree: false,
        postcopy: false,
        no_stand_in: false,
    };
    let root = Credentials::root();
    match migrate::migrate(st, req, root, Origin::Local).await {
        Ok(r) if r.fell_back.is_none() => {
            note(
                engine,
                w,
                s,
                format!(
                    "moved {pid} from node {me} to node {to}: {detail} ({} ms, stopped {} ms)",
                    r.total_ms, r.stopped_ms
                ),
            );
            true
        }
        Ok(r) => {
            let why = format!(
                "the target failed, it runs here again: {}",
                r.fell_back.unwrap_or_default()
            );
            refused(engine, w, s, pid, to, context, why);
            false
        }
        Err(e) => {
            refused(engine, w, s, pid, to, context, e.message);
            false
        }
    }
}

fn refused(
    engine: &Engine,
    w: &BalanceWork,
    s: &mut PolicyState,
    pid: i32,
    to: NodeId,
    context: &str,
    why: String,
) {
    note(
        engine,
        w,
        s,
        format!(
            "refused {pid} to node {to}: {why}; not tried again for {} s ({context})",
            REFUSED_BACKOFF.as_secs()
        ),
    );
    s.refused.insert(pid, (Instant::now(), why));
}
