//! The configfs-style tree as a plain data model, independent of FUSE so it
//! can be unit-tested. Every operation either applies completely or returns
//! an [`Error`] and leaves the tree untouched.
//!
//! ```text
//! probes/<probe>/probe_period            attribute (ms)
//! probes/<probe>/status                  read-only
//! probes/<probe>/<source>/{value,nodes,type}
//! filters/<kind>[.<tag>]/{value,nodes,type,<attrs>} + link `input`
//! schedulers/<scheduler>/<policy>[.<tag>]/{<attrs>,<outputs>} + links `port_*`
//! ```
//!
//! One module per concept; each uses only those listed before it:
//!
//! - `namespace`: numbered entries, names, paths, lookups.
//! - `data`: the data plane: loaded parts, their values on every live
//!   node, plug-in inputs and outputs, placement.
//! - `links`: link target text → the source it names; the cycle check.
//! - `render`: what reading a file shows.
//! - `ops`: the configfs operations and their rules.
//!
//! [`Tree`] (this file) owns one of each and is the crate's way in.

mod data;
mod links;
mod namespace;
mod ops;
mod render;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use data::Parts;
use links::LinkBase;
use namespace::Namespace;
use ops::Ops;

pub use data::{BalanceWork, FilterWork, PluginAnswer, PluginMoveWork, SharedValue};
pub use namespace::{kind_of, CompId, EntryType, Ino, SourceRef, ROOT};
pub use ops::{MkdirPlan, Removed};

use crate::error::{Error, Result};
use crate::filters::Filter;
use crate::plugin::{Decision, PluginKind, PortInput, PortSpec};
use crate::probes::SourceSpec;
use crate::value::{NodeId, Reading, Readings, ValueType};

pub struct Tree {
    ns: Namespace,
    parts: Parts,
    links: LinkBase,
}

impl Tree {
    /// An empty tree of node `node`, to be mounted at `mount`.
    pub fn new(node: NodeId, mount: &Path) -> Tree {
        Tree {
            ns: Namespace::new(),
            parts: Parts::new(node),
            links: LinkBase::new(mount),
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.parts.node()
    }

    fn ops(&mut self) -> Ops<'_> {
        Ops {
            ns: &mut self.ns,
            parts: &mut self.parts,
            links: &self.links,
        }
    }

    // ----- names ------------------------------------------------------------

    /// Path of an entry relative to the tree's root (`probes/mem_probe`).
    pub fn path(&self, ino: Ino) -> String {
        self.ns.path(ino)
    }

    /// Path of `name` in `parent`, for messages.
    pub fn child_path(&self, parent: Ino, name: &str) -> String {
        self.ns.child_path(parent, name)
    }

    pub fn lookup(&self, parent: Ino, name: &str) -> Result<Ino> {
        self.ns.lookup(parent, name)
    }

    pub fn parent(&self, ino: Ino) -> Result<Ino> {
        self.ns.parent(ino)
    }

    pub fn entry_type(&self, ino: Ino) -> Result<EntryType> {
        self.ns.entry_type(ino)
    }

    pub fn children(&self, ino: Ino) -> Result<Vec<(String, Ino, EntryType)>> {
        self.ns.children(ino)
    }

    pub fn readlink(&self, ino: Ino) -> Result<String> {
        self.ns.readlink(ino)
    }

    // ----- reading ------------------------------------------------------------

    /// The content of a file, generated now from live values.
    pub fn read(&self, ino: Ino) -> Result<String> {
        render::read(&self.ns, &self.parts, ino)
    }

    /// The type a source produces; `None` for a filter with no input yet.
    pub fn source_type(&self, src: SourceRef) -> Option<ValueType> {
        self.parts.source_type(src)
    }

    /// Current values of a source, over this node and the live remote nodes.
    pub fn readings(&self, src: SourceRef) -> Option<Readings> {
        self.parts.readings(src)
    }

    /// What every echo policy receives, as `(policy path, lines)`.
    pub fn echo_report(&self) -> Vec<(String, String)> {
        render::echo_report(&self.ns, &self.parts)
    }

    // ----- configfs operations ---------------------------------------------------

    /// `echo text > file`. Returns the probe whose period changed, if any.
    pub fn write(&mut self, ino: Ino, text: &str) -> Result<Option<CompId>> {
        self.ops().write(ino, text)
    }

    /// First half of `mkdir parent/name`, without plug-ins: validates, and
    /// creates everything except probes (which the caller must start first).
    pub fn mkdir(
        &mut self,
        parent: Ino,
        name: &str,
        is_probe: impl Fn(&str) -> bool,
    ) -> Result<MkdirPlan> {
        self.ops().mkdir(parent, name, is_probe, |_, _| false)
    }

    /// [`Tree::mkdir`], where `is_plugin(name, kind)` says whether the
    /// registry has a filter or policy plug-in of that name (their start is
    /// left to the caller too).
    pub fn mkdir_with_plugins(
        &mut self,
        parent: Ino,
        name: &str,
        is_probe: impl Fn(&str) -> bool,
        is_plugin: impl Fn(&str, PluginKind) -> bool,
    ) -> Result<MkdirPlan> {
        self.ops().mkdir(parent, name, is_probe, is_plugin)
    }

    /// Second half of `mkdir filters/<plug-in>`: the plug-in runs and
    /// declared its types in `filter`.
    pub fn add_external_filter(
        &mut self,
        parent: Ino,
        name: &str,
        filter: Filter,
    ) -> Result<(Ino, CompId)> {
        self.ops().add_external_filter(parent, name, filter)
    }

    /// Second half of `mkdir schedulers/<s>/<plug-in>`: the plug-in runs
    /// and declared `ports` (and `moves`: it may move processes).
    pub fn add_external_policy(
        &mut self,
        parent: Ino,
        name: &str,
        ports: Vec<PortSpec>,
        moves: bool,
    ) -> Result<(Ino, CompId)> {
        self.ops().add_external_policy(parent, name, ports, moves)
    }

    /// Second half of `mkdir probes/<name>`: the probe exists and has taken
    /// its first sample (`first`, one reading per source).
    pub fn add_probe(
        &mut self,
        parent: Ino,
        name: &str,
        specs: Vec<SourceSpec>,
        period: Duration,
        first: Vec<Reading>,
    ) -> Result<(Ino, CompId)> {
        self.ops().add_probe(parent, name, specs, period, first)
    }

    /// `rmdir parent/name`: EBUSY while links point at it.
    pub fn rmdir(&mut self, parent: Ino, name: &str) -> Result<Removed> {
        self.ops().rmdir(parent, name)
    }

    /// `ln -s target parent/name`.
    pub fn symlink(&mut self, parent: Ino, name: &str, target: &str) -> Result<Ino> {
        self.ops().symlink(parent, name, target)
    }

    /// `rm parent/name` of a link.
    pub fn unlink(&mut self, parent: Ino, name: &str) -> Result<()> {
        self.ops().unlink(parent, name)
    }

    // ----- probes, plug-ins and the cluster -----------------------------------------

    pub fn probe_period(&self, c: CompId) -> Option<Duration> {
        self.parts.probe_period(c)
    }

    /// The shortest period of the loaded probes (how often remote values
    /// are worth pulling).
    pub fn shortest_period(&self) -> Option<Duration> {
        self.parts.shortest_period()
    }

    /// Store a local sample (one reading per source).
    pub fn store_sample(&mut self, c: CompId, readings: Vec<Reading>) {
        self.parts.store_sample(c, readings)
    }

    pub fn set_status(&mut self, c: CompId, status: &str) {
        self.parts.set_status(c, status)
    }

    /// This node's current probe values, for other nodes.
    pub fn shared_values(&self) -> Vec<SharedValue> {
        self.parts.shared_values()
    }

    /// Store the values pulled from `node` (ignored unless it is live).
    pub fn store_remote(&mut self, node: NodeId, values: &[SharedValue]) {
        self.parts.store_remote(node, values)
    }

    /// The nodes whose values count; values of other nodes are dropped.
    pub fn set_live(&mut self, nodes: BTreeSet<NodeId>) {
        self.parts.set_live(nodes)
    }

    pub fn live(&self) -> &BTreeSet<NodeId> {
        self.parts.live()
    }

    /// What plug-in policy `c`'s linked ports carry; None once it is gone.
    pub fn policy_inputs(&self, c: CompId) -> Option<Vec<PortInput>> {
        self.parts.policy_inputs(c)
    }

    /// What plug-in filter `c` has to transform now.
    pub fn filter_work(&self, c: CompId) -> FilterWork {
        self.parts.filter_work(c)
    }

    /// Store what plug-in filter `c` computed (None: no output).
    pub fn set_filter_output(&mut self, c: CompId, out: Option<Readings>) {
        self.parts.set_filter_output(c, out)
    }

    pub fn set_decision(&mut self, c: CompId, d: Decision) {
        self.parts.set_decision(c, d)
    }

    /// Every balance policy, with its settings and load values.
    pub fn balance_work(&self) -> Vec<BalanceWork> {
        let mut work = self.parts.balance_work();
        for w in &mut work {
            w.path = self.policy_path(w.comp);
        }
        work
    }

    /// The path of policy `c` in the tree.
    fn policy_path(&self, c: CompId) -> String {
        for (ino, e) in self.ns.entries() {
            if let namespace::Kind::Dir {
                role: namespace::DirRole::Policy(d),
                ..
            } = e.kind
            {
                if d == c {
                    return self.ns.path(ino);
                }
            }
        }
        String::new()
    }

    /// Every policy plug-in that moves processes, with the answers it gave
    /// since the last call (taken: each is carried out once).
    pub fn plugin_move_work(&mut self) -> Vec<PluginMoveWork> {
        let mut work = self.parts.plugin_move_work();
        for w in &mut work {
            w.work.path = self.policy_path(w.work.comp);
        }
        work
    }

    /// A moving policy plug-in answered something unreadable.
    pub fn note_bad_answer(&mut self, c: CompId, why: String) {
        self.parts.note_bad_answer(c, why)
    }

    /// This node's processes as moving plug-in `c` is told them.
    pub fn plugin_processes(&self, c: CompId) -> Vec<crate::balance::Candidate> {
        self.parts.plugin_processes(c)
    }

    /// Set what moving plug-in `c` is told of this node's processes.
    pub fn set_plugin_processes(&mut self, c: CompId, procs: Vec<crate::balance::Candidate>) {
        self.parts.set_plugin_processes(c, procs)
    }

    /// Add a line to balance policy `c`'s `decisions` (`replace_last`:
    /// instead of the last line).
    pub fn note_decision(&mut self, c: CompId, line: String, replace_last: bool) {
        self.parts.note_decision(c, line, replace_last)
    }

    /// Ask the placement policy of scheduler `name` (or of the first
    /// scheduler, by name, that has one) where a new process should run.
    pub fn place(&self, scheduler: Option<&str>) -> Result<(NodeId, String)> {
        let c = self.placement_policy(scheduler)?;
        self.parts.place_with(c)
    }

    fn placement_policy(&self, scheduler: Option<&str>) -> Result<CompId> {
        let scheds = self.ns.lookup(ROOT, "schedulers")?;
        for (sname, sino, _) in self.ns.children(scheds)? {
            if scheduler.is_some_and(|want| want != sname) {
                continue;
            }
            for (_, pino, _) in self.ns.children(sino)? {
                if let Ok(namespace::DirRole::Policy(c)) = self.ns.dir_role(pino) {
                    if self.parts.places(c) {
                        return Ok(c);
                    }
                }
            }
        }
        Err(Error::NotFound(match scheduler {
            Some(s) => {
                format!("scheduler {s} does not exist or has no placement_policy or policy plug-in")
            }
            None => "no scheduler has a placement_policy or policy plug-in loaded".into(),
        }))
    }
}

#[cfg(test)]
mod tests;
