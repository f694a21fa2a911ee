//! The membership fault campaign (`tests/tests/faults.rs`): krgd on nodes
//! in network namespaces, clients running `krgadm nodes add/del` and
//! `cluster status` on every node, a nemesis killing, partitioning and
//! pausing krgd, then a check of the recorded history ([`check`]).
//!
//! Everything random comes from one seed (printed; `KRG_FAULTS_SEED` sets
//! it): the same seed gives the same schedule of faults and operations.
//! Timing is real, so two runs with one seed interleave differently.

pub mod check;
mod client;
mod nemesis;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use self::check::{Event, Observation, Op, Outcome};
use crate::TestCluster;

/// A small deterministic generator (splitmix64): enough for schedules.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

/// What to run.
pub struct Campaign {
    pub nodes: u32,
    pub duration: Duration,
    pub seed: u64,
}

impl Campaign {
    /// From the environment: `KRG_FAULTS_SEED` (else random),
    /// `KRG_FAULTS_SECS` (else `secs`), `KRG_FAULTS_NODES` (else `nodes`).
    pub fn from_env(nodes: u32, secs: u64) -> Self {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let seed = env("KRG_FAULTS_SEED").unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            Rng::new(t ^ u64::from(std::process::id())).next_u64() % 1_000_000_000
        });
        Self {
            nodes: env("KRG_FAULTS_NODES")
                .map(|n| n as u32)
                .unwrap_or(nodes)
                .clamp(3, 7),
            duration: Duration::from_secs(env("KRG_FAULTS_SECS").unwrap_or(secs)),
            seed,
        }
    }
}

/// What the campaign did and found.
#[derive(Default)]
pub struct Summary {
    pub ops: usize,
    pub by_outcome: BTreeMap<&'static str, usize>,
    pub reads: usize,
    pub faults: BTreeMap<&'static str, usize>,
    pub anomalies: Vec<String>,
    /// Why operations ended with an unknown outcome (message → count).
    pub unknown_causes: BTreeMap<String, usize>,
    /// Where the nodes' logs and data were kept (only when there are anomalies).
    pub kept: Option<std::path::PathBuf>,
}

impl Summary {
    pub fn line(&self, c: &Campaign) -> String {
        let outcomes: Vec<String> = self
            .by_outcome
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        format!(
            "fault campaign: seed {} ({} nodes, {} s): {} ops ({}), {} status reads, {} faults injected ({}), {} anomalies",
            c.seed,
            c.nodes,
            c.duration.as_secs(),
            self.ops,
            outcomes.join(", "),
            self.reads,
            self.faults.values().sum::<usize>(),
            faults.join(", "),
            self.anomalies.len()
        )
    }
}

/// What the clients and the nemesis share.
pub(crate) struct Shared {
    pub start: Instant,
    pub stop: AtomicBool,
    pub events: Mutex<Vec<Event>>,
    pub observations: Mutex<Vec<Observation>>,
    /// How many times each node's krgd was started (index: node id).
    pub incarnation: Mutex<Vec<u32>>,
    pub unknown_causes: Mutex<BTreeMap<String, usize>>,
}

impl Shared {
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn incarnation(&self, node: u32) -> u32 {
        self.incarnation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node as usize)
            .copied()
            .unwrap_or(0)
    }
}

pub fn run(cfg: &Campaign) -> Result<Summary> {
    let ids: Vec<u32> = (1..=cfg.nodes).collect();
    let mut c = TestCluster::namespaces(cfg.nodes)?;
    for id in &ids {
        c.start(*id)?;
    }
    c.wait_present(1, &ids, Duration::from_secs(20))?;
    c.krgadm_ok(1, &["cluster", "start"])?;
    let (members, _) = c.wait_agreement(&ids, Duration::from_secs(20))?;
    let initial: BTreeSet<u32> = members.iter().map(|m| *m as u32).collect();
    if initial.len() != ids.len() {
        bail!("the cluster formed with {initial:?}, not {ids:?}");
    }
    let shared = Arc::new(Shared {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        events: Mutex::default(),
        observations: Mutex::default(),
        incarnation: Mutex::new(vec![0; cfg.nodes as usize + 1]),
        unknown_causes: Mutex::default(),
    });
    let mut rng = Rng::new(cfg.seed);
    let clients: Vec<_> = ids
        .iter()
        .map(|id| {
            let socket = c.nodes[id].socket.clone();
            client::spawn(
                *id,
                socket,
                ids.clone(),
                Rng::new(rng.next_u64()),
                shared.clone(),
            )
        })
        .collect();
    let mut faults = BTreeMap::new();
    let nemesis = nemesis::run(&mut c, &mut rng, cfg.duration, &shared, &mut faults);
    shared.stop.store(true, Ordering::SeqCst);
    for t in clients {
        let _ = t.join();
    }
    let healed = nemesis::heal(&mut c, &shared).and(nemesis);
    let finals = match healed.and_then(|()| settle(&c, &ids, &shared)) {
        Ok(finals) => finals,
        Err(e) => return Err(keep_evidence(&mut c, e)),
    };

    let events = std::mem::take(&mut *shared.events.lock().unwrap_or_else(|p| p.into_inner()));
    let mut obs = std::mem::take(
        &mut *shared
            .observations
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    obs.extend(finals.iter().map(|(o, _)| o.clone()));
    let mut history = events.clone();
    history.extend(finals.into_iter().map(|(_, e)| e));

    let mut s = Summary {
        unknown_causes: std::mem::take(
            &mut *shared
                .unknown_causes
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        ),
        ops: events.len(),
        reads: obs.len(),
        faults,
        ..Summary::default()
    };
    for e in &events {
        let k = match e.outcome {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::NoEffect => "no effect",
            Outcome::Unknown => "unknown",
        };
        *s.by_outcome.entry(k).or_default() += 1;
    }
    s.anomalies = check::check_members(&initial, &history, &ids);
    s.anomalies
        .extend(check::invariant_anomalies(&obs, &history));
    if !s.anomalies.is_empty() {
        // The krgd logs (and Raft state) are what explains an anomaly.
        c.dir.disable_cleanup(true);
        let file = c.dir.path().join("history.txt");
        if let Err(e) = std::fs::write(&file, check::history_text(&history)) {
            eprintln!("cannot write {}: {e}", file.display());
        }
        s.kept = Some(c.dir.path().to_path_buf());
    }
    Ok(s)
}

/// How many last lines of each krgd's log a failed campaign prints (the
/// whole logs stay in the kept directory).
const LOG_TAIL: usize = 150;

/// A campaign that could not heal or settle: keep every krgd's log and Raft
/// state, print the end of each log, and say where the rest is.
fn keep_evidence(c: &mut TestCluster, e: anyhow::Error) -> anyhow::Error {
    let kept = c.keep_files();
    eprintln!("{}", c.log_tails(LOG_TAIL));
    e.context(format!("krgd logs and data kept in {}", kept.display()))
}

/// After healing: wait until the members agree, are all online and every
/// other node is outside the cluster; then read the member set on every
/// member (the final reads of the history).
fn settle(c: &TestCluster, ids: &[u32], shared: &Shared) -> Result<Vec<(Observation, Event)>> {
    let agreed = crate::wait_for(
        Duration::from_secs(60),
        "the healed cluster to settle",
        || {
            let all: Vec<serde_json::Value> = ids
                .iter()
                .map(|id| c.status(*id).ok())
                .collect::<Option<_>>()?;
            let inside: Vec<&serde_json::Value> = all
                .iter()
                .filter(|s| s["health"] != "not started")
                .collect();
            let first = inside.first()?;
            let members: BTreeSet<u64> = first["members"]
                .as_array()?
                .iter()
                .filter_map(|m| m.as_u64())
                .collect();
            let same = inside.iter().all(|s| {
                s["members"] == first["members"]
                    && s["epoch"] == first["epoch"]
                    && s["health"] == "healthy"
            });
            let placed = all.iter().all(|s| {
                let id = s["this_node"].as_u64().unwrap_or(0);
                members.contains(&id) == (s["health"] != "not started")
            });
            (same && placed).then_some(members)
        },
    );
    let agreed = agreed.map_err(|e| {
        let views: Vec<String> = ids
            .iter()
            .map(|id| match c.status(*id) {
                Ok(s) => format!(
                    "node {id}: {} epoch {} term {} leader {} members {}",
                    s["health"], s["epoch"], s["term"], s["leader"], s["members"]
                ),
                Err(e) => format!("node {id}: {e:#}"),
            })
            .collect();
        e.context(views.join("; "))
    })?;
    let mut out = Vec::new();
    for id in agreed.iter().map(|m| *m as u32) {
        let invoked = shared.now();
        let s = c.status(id)?;
        let completed = shared.now();
        let members: BTreeSet<u32> = s["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_u64().map(|m| m as u32))
            .collect();
        out.push((
            Observation {
                node: id,
                incarnation: shared.incarnation(id),
                at: completed,
                epoch: s["epoch"].as_u64().unwrap_or(0),
                term: s["term"].as_u64().unwrap_or(0),
                leader: s["leader"].as_u64().map(|l| l as u32),
                members: members.clone(),
            },
            Event {
                client: 0,
                op: Op::Read(members),
                outcome: Outcome::Ok,
                invoked,
                completed,
                said: String::new(),
            },
        ));
    }
    Ok(out)
}
