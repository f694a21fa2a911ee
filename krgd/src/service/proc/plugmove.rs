//! Policy plug-ins that move processes (they declared `moves`, see
//! `plugpropol::plugin::PluginPolicy`): every second this loop measures
//! this node's processes as `balance_policy` does and hands the list to
//! each such plug-in (through the tree: its thread sends it with the next
//! request), then carries out the `move <pid> <node>` answers with the
//! built-in policy's rules and machinery ([`super::balance`]): only this
//! node's CAN_MIGRATE processes, not one that arrived less than
//! `min_residency` ago or was refused in the last 60 s, at most
//! `max_moves` per `interval`, through the migration code as root. Every
//! move, refusal and unreadable answer lands in the policy's `decisions`
//! file and krgd's log, in the built-in policy's format.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use krg_proto::NodeId;
use plugpropol::balance::Candidate;
use plugpropol::engine::POLICY_PERIOD;
use plugpropol::tree::{BalanceWork, CompId, PluginAnswer};
use plugpropol::Engine;

use super::balance::{candidates, carry_out, note, PolicyState, TICK};
use super::load;
use super::state::ProcState;

/// What one moving plug-in's policy remembers.
struct PlugState {
    base: PolicyState,
    /// This node's processes as last measured (what the plug-in was told).
    procs: Vec<Candidate>,
    measured: Option<Instant>,
    /// When the moves of the current `interval` were made.
    moved: VecDeque<Instant>,
}

impl PlugState {
    fn new() -> Self {
        PlugState {
            base: PolicyState::new(),
            procs: Vec::new(),
            measured: None,
            moved: VecDeque::new(),
        }
    }
}

/// The loop of this node's moving policy plug-ins (runs until aborted).
pub async fn run(st: Arc<ProcState>, engine: Arc<Engine>) {
    let mut states: HashMap<CompId, PlugState> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        let work = engine.tree().plugin_move_work();
        states.retain(|c, _| work.iter().any(|w| w.work.comp == *c));
        for w in work {
            let s = states.entry(w.work.comp).or_insert_with(PlugState::new);
            if s.measured.is_none_or(|t| t.elapsed() >= POLICY_PERIOD) {
                measure(&st, &engine, &w.work, s);
            }
            for a in w.answers {
                apply(&st, &engine, &w.work, s, a).await;
            }
        }
    }
}

/// Measure this node's processes and tell the plug-in.
fn measure(st: &ProcState, engine: &Engine, w: &BalanceWork, s: &mut PlugState) {
    let sample = s.base.meter.sample(&load::own_processes(st));
    s.procs = if sample.fresh {
        candidates(st, &w.config, &mut s.base, &sample)
    } else {
        Vec::new()
    };
    s.measured = Some(Instant::now());
    engine.tree().set_plugin_processes(w.comp, s.procs.clone());
}

/// Why `pid` may not move to `to` now, or None.
fn check(me: NodeId, w: &BalanceWork, s: &mut PlugState, pid: i32, to: NodeId) -> Option<String> {
    if to == me {
        return Some(format!("node {to} is this node"));
    }
    let Some(c) = s.procs.iter().find(|c| c.pid == pid) else {
        return Some(format!(
            "{pid} is not one of this node's processes (as measured now)"
        ));
    };
    if let Some(held) = &c.held {
        return Some(held.clone());
    }
    let interval = Duration::from_millis(w.config.interval_ms);
    s.moved.retain(|t| t.elapsed() < interval);
    (s.moved.len() >= w.config.max_moves as usize).then(|| {
        format!(
            "max_moves {} per interval {} ms already made",
            w.config.max_moves, w.config.interval_ms
        )
    })
}

/// Carry out (or refuse) one answer of the plug-in.
async fn apply(
    st: &Arc<ProcState>,
    engine: &Engine,
    w: &BalanceWork,
    s: &mut PlugState,
    answer: PluginAnswer,
) {
    let (pid, to, reason) = match answer {
        PluginAnswer::Garbage(why) => {
            let line = format!("refused the plug-in's answer: {why}");
            return note(engine, w, &mut s.base, line);
        }
        PluginAnswer::Move { pid, to, reason } => (pid, to, reason),
    };
    let context = format!("plug-in: {reason}");
    if let Some(why) = check(st.node(), w, s, pid, to) {
        let line = format!("refused {pid} to node {to}: {why} ({context})");
        return note(engine, w, &mut s.base, line);
    }
    if carry_out(st, engine, w, &mut s.base, (pid, to), &context, &context).await {
        s.moved.push_back(Instant::now());
    }
    // moved or refused, the plug-in is told at once that it is no longer
    // a candidate
    let refused = s.base.refused.contains_key(&pid);
    s.procs.retain(|c| c.pid != pid || refused);
    if let Some(c) = s.procs.iter_mut().find(|c| c.pid == pid) {
        c.held = Some("refused a moment ago".into());
    }
    engine.tree().set_plugin_processes(w.comp, s.procs.clone());
}
