//! The data plane: the loaded parts (probes, filters, policies), the values
//! their sources hold for this node and the live remote nodes, and how
//! values move: local samples in, remote samples in and out, plug-in
//! outputs and decisions in, readings and placements out. Knows entries
//! only as the numbers of the links that feed a part.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use super::namespace::{CompId, Ino, SourceRef};
use crate::balance::{self, BalanceConfig, Candidate};
use crate::error::{Error, Result};
use crate::filters::Filter;
use crate::plugin::{Decision, FilterInput, PortInput};
use crate::policies::{self, Policy};
use crate::probes::SourceSpec;
use crate::value::{NodeId, Reading, Readings, Scope, Series, Unit, ValueType};

/// A link held by a filter's input or a policy's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Linked {
    /// What the link names.
    pub source: SourceRef,
    /// The link entry itself.
    pub link: Ino,
}

#[derive(Debug, Clone)]
pub(super) struct SourceState {
    pub spec: SourceSpec,
    pub values: BTreeMap<NodeId, Series>,
}

#[derive(Debug, Clone)]
pub(super) struct ProbeComp {
    /// Its directory name (`mem_probe.2`): remote values land in the local
    /// probe of the same name.
    pub kind: String,
    pub period: Duration,
    pub sources: Vec<SourceState>,
    pub status: String,
    pub seq: u64,
}

#[derive(Debug, Clone)]
pub(super) struct FilterComp {
    pub filter: Filter,
    pub input: Option<Linked>,
}

#[derive(Debug, Clone)]
pub(super) struct PolicyComp {
    pub policy: Policy,
    pub ports: BTreeMap<String, Linked>,
    /// The last decision of a plug-in policy.
    pub decision: Option<Decision>,
    /// A balance policy's last decisions, oldest first.
    pub decisions: VecDeque<String>,
    /// A moving plug-in's answers not yet carried out by the embedder.
    pub pending: VecDeque<PluginAnswer>,
    /// This node's processes, as the embedder last told a moving plug-in.
    pub processes: Vec<Candidate>,
}

/// What a policy plug-in that moves processes answered, for the embedder
/// to check and carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginAnswer {
    /// `move <pid> <node> <reason>`.
    Move {
        pid: i32,
        to: NodeId,
        reason: String,
    },
    /// An answer that could not be read (the error says why).
    Garbage(String),
}

/// The moving plug-in answers of one policy, taken by the embedder.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginMoveWork {
    /// The policy, its path and moving rules (`load` is None).
    pub work: BalanceWork,
    pub answers: Vec<PluginAnswer>,
}

/// At most this many answers wait for the embedder.
const PENDING_KEPT: usize = 16;

impl PolicyComp {
    fn push_answer(&mut self, a: PluginAnswer) {
        if self.pending.len() >= PENDING_KEPT {
            self.pending.pop_front();
        }
        self.pending.push_back(a);
    }
}

#[derive(Debug, Clone)]
pub(super) enum Comp {
    Probe(ProbeComp),
    Filter(FilterComp),
    Policy(PolicyComp),
}

/// A value of a local probe source as sent to other nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedValue {
    pub probe: String,
    pub source: String,
    pub unit: Unit,
    pub value: Reading,
    pub seq: u64,
}

/// What a filter plug-in has to work on now.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterWork {
    /// The filter was removed: its thread ends.
    Gone,
    /// Its input is not linked (or has no type yet): it has no output.
    Unlinked,
    /// Values to transform.
    Input(FilterInput),
}

/// What a balance policy has to decide on now.
#[derive(Debug, Clone, PartialEq)]
pub struct BalanceWork {
    pub comp: CompId,
    /// Its path in the tree (`schedulers/balance/balance_policy`).
    pub path: String,
    pub config: BalanceConfig,
    /// What its `port_load` carries (None while it is not linked).
    pub load: Option<Readings>,
}

/// The parts and their values.
pub(super) struct Parts {
    comps: HashMap<CompId, Comp>,
    node: NodeId,
    /// Nodes whose values count (online members); this node always does.
    live: BTreeSet<NodeId>,
}

impl Parts {
    pub fn new(node: NodeId) -> Parts {
        Parts {
            comps: HashMap::new(),
            node,
            live: BTreeSet::from([node]),
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn live(&self) -> &BTreeSet<NodeId> {
        &self.live
    }

    pub fn insert(&mut self, c: CompId, comp: Comp) {
        self.comps.insert(c, comp);
    }

    pub fn remove(&mut self, c: CompId) -> Option<Comp> {
        self.comps.remove(&c)
    }

    /// How many parts are loaded.
    pub fn len(&self) -> usize {
        self.comps.len()
    }

    pub fn get(&self, c: CompId) -> Option<&Comp> {
        self.comps.get(&c)
    }

    pub fn get_mut(&mut self, c: CompId) -> Option<&mut Comp> {
        self.comps.get_mut(&c)
    }

    fn probes(&self) -> impl Iterator<Item = &ProbeComp> {
        self.comps.values().filter_map(|c| match c {
            Comp::Probe(p) => Some(p),
            _ => None,
        })
    }

    fn probes_mut(&mut self) -> impl Iterator<Item = &mut ProbeComp> {
        self.comps.values_mut().filter_map(|c| match c {
            Comp::Probe(p) => Some(p),
            _ => None,
        })
    }

    /// The type a source produces; `None` for a filter with no input yet.
    pub fn source_type(&self, src: SourceRef) -> Option<ValueType> {
        match (src, self.comps.get(&src.comp())?) {
            (SourceRef::Probe(_, i), Comp::Probe(p)) => Some(ValueType {
                unit: p.sources.get(i)?.spec.unit,
                scope: Scope::PerNode,
            }),
            (SourceRef::Filter(_), Comp::Filter(f)) => {
                let input = f.input?.source;
                Some(f.filter.output_type(self.source_type(input)?))
            }
            _ => None,
        }
    }

    /// Current values of a source, over this node and the live remote nodes.
    pub fn readings(&self, src: SourceRef) -> Option<Readings> {
        match (src, self.comps.get(&src.comp())?) {
            (SourceRef::Probe(_, i), Comp::Probe(p)) => {
                Some(Readings::PerNode(p.sources.get(i)?.values.clone()))
            }
            (SourceRef::Filter(_), Comp::Filter(f)) => {
                Some(f.filter.apply(&self.readings(f.input?.source)?))
            }
            _ => None,
        }
    }

    /// The links (entry numbers) that point at part `target`.
    pub fn links_into(&self, target: CompId) -> Vec<Ino> {
        let into = |l: &&Linked| l.source.comp() == target;
        let mut out = Vec::new();
        for comp in self.comps.values() {
            match comp {
                Comp::Filter(f) => out.extend(f.input.iter().filter(into).map(|l| l.link)),
                Comp::Policy(p) => out.extend(p.ports.values().filter(into).map(|l| l.link)),
                Comp::Probe(_) => {}
            }
        }
        out
    }

    // ----- probes -----------------------------------------------------------

    pub fn probe_period(&self, c: CompId) -> Option<Duration> {
        match self.comps.get(&c)? {
            Comp::Probe(p) => Some(p.period),
            _ => None,
        }
    }

    /// The shortest period of the loaded probes (how often remote values
    /// are worth pulling).
    pub fn shortest_period(&self) -> Option<Duration> {
        self.probes().map(|p| p.period).min()
    }

    /// Store a local sample (one reading per source).
    pub fn store_sample(&mut self, c: CompId, readings: Vec<Reading>) {
        let node = self.node;
        if let Some(Comp::Probe(p)) = self.comps.get_mut(&c) {
            p.seq += 1;
            for (s, r) in p.sources.iter_mut().zip(readings) {
                s.values.entry(node).or_default().push(r, p.seq);
            }
        }
    }

    pub fn set_status(&mut self, c: CompId, status: &str) {
        if let Some(Comp::Probe(p)) = self.comps.get_mut(&c) {
            p.status = status.to_string();
        }
    }

    // ----- the cluster --------------------------------------------------------

    /// This node's current probe values, for other nodes.
    pub fn shared_values(&self) -> Vec<SharedValue> {
        let mut out = Vec::new();
        for p in self.probes() {
            for s in &p.sources {
                let Some(series) = s.values.get(&self.node) else {
                    continue;
                };
                if let Some(v) = series.last() {
                    out.push(SharedValue {
                        probe: p.kind.clone(),
                        source: s.spec.name.clone(),
                        unit: s.spec.unit,
                        value: v.clone(),
                        seq: series.seq,
                    });
                }
            }
        }
        out
    }

    /// Store the values pulled from `node`. They land in this node's probe
    /// of the same name (a remote probe this node has not loaded is not
    /// shown); sources the node no longer reports are forgotten.
    pub fn store_remote(&mut self, node: NodeId, values: &[SharedValue]) {
        if node == self.node || !self.live.contains(&node) {
            return;
        }
        for p in self.probes_mut() {
            for s in &mut p.sources {
                let got = values.iter().find(|v| {
                    v.probe == p.kind && v.source == s.spec.name && v.unit == s.spec.unit
                });
                let Some(v) = got else {
                    s.values.remove(&node);
                    continue;
                };
                let series = s.values.entry(node).or_default();
                // A pulled value is a new point only when it is a new sample.
                if series.seq != v.seq || series.points.is_empty() {
                    series.push(v.value.clone(), v.seq);
                }
            }
        }
    }

    /// The nodes whose values count; values of other nodes are dropped.
    pub fn set_live(&mut self, nodes: BTreeSet<NodeId>) {
        let mut live = nodes;
        live.insert(self.node);
        for p in self.probes_mut() {
            for s in &mut p.sources {
                s.values.retain(|n, _| live.contains(n));
            }
        }
        self.live = live;
    }

    // ----- plug-in filters and policies ------------------------------------------

    /// What plug-in policy `c`'s linked ports carry; None once it is gone.
    pub fn policy_inputs(&self, c: CompId) -> Option<Vec<PortInput>> {
        let Some(Comp::Policy(p)) = self.comps.get(&c) else {
            return None;
        };
        let inputs = p.ports.iter().filter_map(|(port, l)| {
            Some(PortInput {
                port: port.clone(),
                unit: self.source_type(l.source)?.unit,
                readings: self.readings(l.source)?,
            })
        });
        Some(inputs.collect())
    }

    /// What plug-in filter `c` has to transform now.
    pub fn filter_work(&self, c: CompId) -> FilterWork {
        let Some(Comp::Filter(f)) = self.comps.get(&c) else {
            return FilterWork::Gone;
        };
        let Some(input) = f.input.map(|l| l.source) else {
            return FilterWork::Unlinked;
        };
        let (Some(t), Some(readings), Some(out)) = (
            self.source_type(input),
            self.readings(input),
            self.source_type(SourceRef::Filter(c)),
        ) else {
            return FilterWork::Unlinked;
        };
        FilterWork::Input(FilterInput {
            readings,
            unit: t.unit,
            output: out.unit,
        })
    }

    /// Store what plug-in filter `c` computed (None: no output).
    pub fn set_filter_output(&mut self, c: CompId, out: Option<Readings>) {
        if let Some(Comp::Filter(f)) = self.comps.get_mut(&c) {
            if let Some(ext) = &mut f.filter.external {
                ext.cache = out;
            }
        }
    }

    pub fn set_decision(&mut self, c: CompId, d: Decision) {
        if let Some(Comp::Policy(p)) = self.comps.get_mut(&c) {
            if let Decision::Move { pid, node, reason } = &d {
                p.push_answer(PluginAnswer::Move {
                    pid: *pid,
                    to: *node,
                    reason: reason.clone(),
                });
            }
            p.decision = Some(d);
        }
    }

    /// A moving plug-in answered something unreadable.
    pub fn note_bad_answer(&mut self, c: CompId, why: String) {
        if let Some(Comp::Policy(p)) = self.comps.get_mut(&c) {
            p.push_answer(PluginAnswer::Garbage(why));
        }
    }

    /// This node's processes as moving plug-in `c` is told them.
    pub fn plugin_processes(&self, c: CompId) -> Vec<Candidate> {
        match self.comps.get(&c) {
            Some(Comp::Policy(p)) => p.processes.clone(),
            _ => Vec::new(),
        }
    }

    pub fn set_plugin_processes(&mut self, c: CompId, procs: Vec<Candidate>) {
        if let Some(Comp::Policy(p)) = self.comps.get_mut(&c) {
            p.processes = procs;
        }
    }

    /// Every moving plug-in policy, with the answers it gave since the
    /// last call (taken).
    pub fn plugin_move_work(&mut self) -> Vec<PluginMoveWork> {
        let mut out: Vec<PluginMoveWork> = self
            .comps
            .iter_mut()
            .filter_map(|(c, comp)| match comp {
                Comp::Policy(p) => match p.policy {
                    Policy::External {
                        moves: Some(config),
                        ..
                    } => Some(PluginMoveWork {
                        work: BalanceWork {
                            comp: *c,
                            path: String::new(),
                            config,
                            load: None,
                        },
                        answers: p.pending.drain(..).collect(),
                    }),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        out.sort_by_key(|w| w.work.comp);
        out
    }

    // ----- balancing ------------------------------------------------------------

    /// Every balance policy, with its settings and load values.
    pub fn balance_work(&self) -> Vec<BalanceWork> {
        let mut out: Vec<BalanceWork> = self
            .comps
            .iter()
            .filter_map(|(c, comp)| match comp {
                Comp::Policy(PolicyComp {
                    policy: Policy::Balance(config),
                    ports,
                    ..
                }) => Some(BalanceWork {
                    comp: *c,
                    path: String::new(),
                    config: *config,
                    load: ports
                        .get(balance::PORT)
                        .and_then(|l| self.readings(l.source)),
                }),
                _ => None,
            })
            .collect();
        out.sort_by_key(|w| w.comp);
        out
    }

    /// Add a line to balance policy `c`'s `decisions`; `replace_last`
    /// overwrites the last line instead (a repeated "nothing moved").
    pub fn note_decision(&mut self, c: CompId, line: String, replace_last: bool) {
        if let Some(Comp::Policy(p)) = self.comps.get_mut(&c) {
            if replace_last {
                p.decisions.pop_back();
            }
            if p.decisions.len() >= balance::DECISIONS_KEPT {
                p.decisions.pop_front();
            }
            p.decisions.push_back(line);
        }
    }

    // ----- placement ------------------------------------------------------------

    /// Whether part `c` answers placement queries (`placement_policy` or a
    /// policy plug-in).
    pub fn places(&self, c: CompId) -> bool {
        matches!(
            self.comps.get(&c),
            Some(Comp::Policy(PolicyComp {
                policy: Policy::Placement { .. } | Policy::External { .. },
                ..
            }))
        )
    }

    /// Where placement policy `c` would run a new process, and why.
    pub fn place_with(&self, c: CompId) -> Result<(NodeId, String)> {
        match self.comps.get(&c) {
            Some(Comp::Policy(PolicyComp {
                policy: Policy::Placement { mode },
                ports,
                ..
            })) => {
                let port = |name| ports.get(name).and_then(|l| self.readings(l.source));
                let (mem, load) = (port(policies::PORT_MEM), port(policies::PORT_LOAD));
                policies::place(*mode, mem.as_ref(), load.as_ref(), &self.live)
            }
            Some(Comp::Policy(PolicyComp {
                policy: Policy::External { .. },
                decision,
                ..
            })) => self.plugin_placement(decision.as_ref()),
            _ => Err(Error::NotFound("not a placement policy".into())),
        }
    }

    /// A policy plug-in's last decision, if it names an online node.
    fn plugin_placement(&self, decision: Option<&Decision>) -> Result<(NodeId, String)> {
        match decision {
            None => Err(Error::NotFound(
                "the policy plug-in has not decided yet".into(),
            )),
            Some(Decision::Nowhere { why }) => Err(Error::NotFound(why.clone())),
            Some(Decision::Place { node, .. }) if !self.live.contains(node) => {
                Err(Error::NotFound(format!(
                    "the policy plug-in chose node {node}, which is not online"
                )))
            }
            Some(Decision::Place { node, reason }) => Ok((*node, reason.clone())),
            Some(Decision::Move { pid, node, .. }) => Err(Error::NotFound(format!(
                "the policy plug-in moves processes (its last answer: move {pid} to node {node})"
            ))),
        }
    }
}
