//! The configfs operations and their rules: `mkdir` (in two halves when a
//! probe or plug-in must start first), `rmdir`, `ln -s`, `rm` of a link and
//! `echo > attribute`. Each one checks everything before it changes
//! anything, so a refused operation leaves the tree as it was.

use std::collections::BTreeMap;
use std::time::Duration;

use super::data::{Comp, FilterComp, Linked, Parts, PolicyComp, ProbeComp, SourceState};
use super::links::{feeds_from, LinkBase};
use super::namespace::SourceRef;
use super::namespace::{check_name, kind_of, CompId, DirRole, FileRole, Ino, Kind, Namespace};
use crate::balance::BalanceConfig;
use crate::error::{Error, Result};
use crate::filters::{Filter, BUILTIN_FILTERS};
use crate::plugin::{PluginKind, PortSpec};
use crate::policies::{Policy, BUILTIN_POLICIES};
use crate::probes::{SourceSpec, MAX_PERIOD_MS, MIN_PERIOD_MS};
use crate::value::{Reading, ValueType};

/// What a successful `mkdir` asks of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MkdirPlan {
    /// Instantiate the probe `name` (`<kind>[.<tag>]`, built-in or
    /// plug-in), then call [`super::Tree::add_probe`] with that same name.
    Probe { name: String },
    /// Start the policy plug-in `name`, then call
    /// [`super::Tree::add_external_policy`].
    Policy { name: String },
    /// Start the filter plug-in `name`, then call
    /// [`super::Tree::add_external_filter`].
    Filter { name: String },
    /// Already done.
    Done(Ino),
}

/// What a successful `rmdir` asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// Stop the probe's sampling task.
    Probe(CompId),
    /// Stop the plug-in policy's task.
    Policy(CompId),
    /// Stop the plug-in filter's task.
    Filter(CompId),
    Other,
}

/// Where `mkdir` may create directories.
const MKDIR_PLACES: &str = "only in probes/, filters/, schedulers/ and schedulers/<name>/";

/// A link `ln -s` is about to make, resolved and typed.
struct NewLink<'a> {
    parent: Ino,
    name: &'a str,
    text: &'a str,
    target: SourceRef,
    t: ValueType,
}

/// The tree, borrowed for one operation.
pub(super) struct Ops<'t> {
    pub ns: &'t mut Namespace,
    pub parts: &'t mut Parts,
    pub links: &'t LinkBase,
}

impl Ops<'_> {
    /// `echo text > file`. Returns the probe whose period changed, if any.
    pub fn write(&mut self, ino: Ino, text: &str) -> Result<Option<CompId>> {
        let (c, name) = match &self.ns.entry(ino)?.kind {
            Kind::File(FileRole::Attr(c, name)) => (*c, *name),
            _ => {
                let path = self.ns.path(ino);
                return Err(Error::NotPermitted(format!("{path} is read-only")));
            }
        };
        let text = text.trim();
        match self.parts.get_mut(c) {
            Some(Comp::Probe(p)) => {
                p.period = Duration::from_millis(parse_period(text)?);
                Ok(Some(c))
            }
            Some(Comp::Filter(f)) => f.filter.set(name, text).map(|_| None),
            Some(Comp::Policy(p)) => p.policy.set(name, text).map(|_| None),
            None => Err(Error::NotFound("the attribute's owner is gone".into())),
        }
    }

    /// First half of `mkdir parent/name`: validates, and creates everything
    /// except probes and plug-ins (which the caller must start first).
    /// `is_probe(kind)` says whether a probe of that kind exists,
    /// `is_plugin(kind, what)` whether the registry has such a plug-in.
    pub fn mkdir(
        &mut self,
        parent: Ino,
        name: &str,
        is_probe: impl Fn(&str) -> bool,
        is_plugin: impl Fn(&str, PluginKind) -> bool,
    ) -> Result<MkdirPlan> {
        let role = self.ns.dir_role(parent)?;
        check_name(name)?;
        self.ns.check_free(parent, name)?;
        let kind = kind_of(name);
        let plugin = |what| is_plugin(kind, what);
        let name = name.to_string();
        match role {
            DirRole::Probes if is_probe(kind) => Ok(MkdirPlan::Probe { name }),
            DirRole::Probes => Err(Error::NotFound(format!(
                "no probe named {kind} (built-in or in the plug-in registry)"
            ))),
            DirRole::Filters if Filter::new(kind).is_none() && plugin(PluginKind::Filter) => {
                Ok(MkdirPlan::Filter { name })
            }
            DirRole::Filters => self.mkdir_filter(parent, &name),
            DirRole::Schedulers => {
                let dir = self.ns.add_dir(parent, &name, DirRole::Scheduler);
                Ok(MkdirPlan::Done(dir))
            }
            DirRole::Scheduler if Policy::new(kind).is_none() && plugin(PluginKind::Policy) => {
                Ok(MkdirPlan::Policy { name })
            }
            DirRole::Scheduler => self.mkdir_policy(parent, &name),
            _ => Err(Error::NotPermitted(format!(
                "cannot create directories in {}: {MKDIR_PLACES}",
                self.ns.path(parent)
            ))),
        }
    }

    fn mkdir_filter(&mut self, parent: Ino, name: &str) -> Result<MkdirPlan> {
        let kind = kind_of(name);
        let filter = Filter::new(kind).ok_or_else(|| {
            let known = BUILTIN_FILTERS.join(", ");
            Error::NotFound(format!("no filter kind {kind} (known: {known})"))
        })?;
        Ok(MkdirPlan::Done(self.add_filter(parent, name, filter).0))
    }

    fn mkdir_policy(&mut self, parent: Ino, name: &str) -> Result<MkdirPlan> {
        let kind = kind_of(name);
        let policy = Policy::new(kind).ok_or_else(|| {
            let known = BUILTIN_POLICIES.join(", ");
            Error::NotFound(format!("no policy kind {kind} (known: {known})"))
        })?;
        Ok(MkdirPlan::Done(self.add_policy(parent, name, policy).0))
    }

    /// Second half of `mkdir filters/<plug-in>`: the plug-in runs and
    /// declared its types in `filter`.
    pub fn add_external_filter(
        &mut self,
        parent: Ino,
        name: &str,
        filter: Filter,
    ) -> Result<(Ino, CompId)> {
        if self.ns.dir_role(parent)? != DirRole::Filters {
            return Err(Error::NotPermitted("filters live in filters/".into()));
        }
        self.ns.check_free(parent, name)?;
        Ok(self.add_filter(parent, name, filter))
    }

    /// Second half of `mkdir schedulers/<s>/<plug-in>`: the plug-in runs
    /// and declared `ports`.
    pub fn add_external_policy(
        &mut self,
        parent: Ino,
        name: &str,
        ports: Vec<PortSpec>,
        moves: bool,
    ) -> Result<(Ino, CompId)> {
        if self.ns.dir_role(parent)? != DirRole::Scheduler {
            return Err(Error::NotPermitted(
                "policies live in schedulers/<name>/".into(),
            ));
        }
        self.ns.check_free(parent, name)?;
        let moves = moves.then(BalanceConfig::default);
        Ok(self.add_policy(parent, name, Policy::External { ports, moves }))
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
        if self.ns.dir_role(parent)? != DirRole::Probes {
            return Err(Error::NotPermitted("probes live in probes/".into()));
        }
        self.ns.check_free(parent, name)?;
        let c = self.ns.alloc();
        let dir = self.ns.add_dir(parent, name, DirRole::Probe(c));
        self.ns
            .add_file(dir, "probe_period", FileRole::Attr(c, "probe_period"));
        self.ns.add_file(dir, "status", FileRole::Status(c));
        let mut sources = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let sdir = self.ns.add_dir(dir, &spec.name, DirRole::Source(c, i));
            self.add_source_files(sdir, SourceRef::Probe(c, i));
            let values = BTreeMap::new();
            sources.push(SourceState { spec, values });
        }
        let probe = ProbeComp {
            kind: name.to_string(),
            period,
            sources,
            status: "running".into(),
            seq: 0,
        };
        self.parts.insert(c, Comp::Probe(probe));
        self.parts.store_sample(c, first);
        Ok((dir, c))
    }

    fn add_source_files(&mut self, dir: Ino, src: SourceRef) {
        self.ns.add_file(dir, "value", FileRole::Value(src));
        self.ns.add_file(dir, "nodes", FileRole::Nodes(src));
        self.ns.add_file(dir, "type", FileRole::Type(src));
    }

    fn add_filter(&mut self, parent: Ino, name: &str, filter: Filter) -> (Ino, CompId) {
        let c = self.ns.alloc();
        let dir = self.ns.add_dir(parent, name, DirRole::Filter(c));
        for a in filter.attributes() {
            self.ns.add_file(dir, a, FileRole::Attr(c, a));
        }
        self.add_source_files(dir, SourceRef::Filter(c));
        let comp = FilterComp {
            filter,
            input: None,
        };
        self.parts.insert(c, Comp::Filter(comp));
        (dir, c)
    }

    fn add_policy(&mut self, parent: Ino, name: &str, policy: Policy) -> (Ino, CompId) {
        let c = self.ns.alloc();
        let dir = self.ns.add_dir(parent, name, DirRole::Policy(c));
        for a in policy.attributes() {
            self.ns.add_file(dir, a, FileRole::Attr(c, a));
        }
        for o in policy.outputs() {
            self.ns.add_file(dir, o, FileRole::Output(c, o));
        }
        let ports = BTreeMap::new();
        let comp = PolicyComp {
            policy,
            ports,
            decision: None,
            decisions: Default::default(),
            pending: Default::default(),
            processes: Vec::new(),
        };
        self.parts.insert(c, Comp::Policy(comp));
        (dir, c)
    }

    /// The paths of the links that point at part `c`, sorted (for messages).
    fn users(&self, c: CompId) -> Vec<String> {
        let mut users: Vec<String> = self
            .parts
            .links_into(c)
            .into_iter()
            .map(|l| self.ns.path(l))
            .collect();
        users.sort();
        users
    }

    /// `rmdir parent/name`. A probe or filter that links point at is busy:
    /// the links must go first (EBUSY). A policy or filter takes its own
    /// outgoing links with it. A scheduler must be empty.
    pub fn rmdir(&mut self, parent: Ino, name: &str) -> Result<Removed> {
        let ino = self.ns.lookup(parent, name)?;
        let path = self.ns.path(ino);
        let role = match &self.ns.entry(ino)?.kind {
            Kind::Dir { role, .. } => *role,
            _ => return Err(Error::Invalid(format!("{path} is not a directory"))),
        };
        let removed = match role {
            DirRole::Probe(c) | DirRole::Filter(c) => {
                let users = self.users(c);
                if !users.is_empty() {
                    let users = users.join(", ");
                    return Err(Error::Busy(format!(
                        "{path} is linked from {users}: remove those links first"
                    )));
                }
                self.unload(role, c)
            }
            DirRole::Policy(c) => self.unload(role, c),
            DirRole::Scheduler if !self.ns.is_empty_dir(ino) => {
                return Err(Error::NotEmpty(format!(
                    "{path} still holds policies: remove them first"
                )))
            }
            DirRole::Scheduler => Removed::Other,
            _ => {
                return Err(Error::NotPermitted(format!(
                    "{path} is part of the tree and cannot be removed on its own"
                )))
            }
        };
        self.ns.remove_subtree(ino);
        Ok(removed)
    }

    /// Take part `c` (of directory role `role`) out of the data plane; says
    /// which thread, if any, the caller must stop.
    fn unload(&mut self, role: DirRole, c: CompId) -> Removed {
        match (role, self.parts.remove(c)) {
            (DirRole::Probe(_), _) => Removed::Probe(c),
            (_, Some(Comp::Filter(f))) if f.filter.external.is_some() => Removed::Filter(c),
            (
                _,
                Some(Comp::Policy(PolicyComp {
                    policy: Policy::External { .. },
                    ..
                })),
            ) => Removed::Policy(c),
            _ => Removed::Other,
        }
    }

    /// `ln -s target parent/name`. Legal pairs: filter `input` → probe source
    /// or filter; policy port → probe source or filter; with matching types
    /// and no cycle.
    pub fn symlink(&mut self, parent: Ino, name: &str, text: &str) -> Result<Ino> {
        let role = self.ns.dir_role(parent)?;
        check_name(name)?;
        let here = self.ns.child_path(parent, name);
        if self.ns.lookup(parent, name).is_ok() {
            return Err(Error::Exists(format!(
                "{here} already exists (a port takes one link)"
            )));
        }
        let target = self.links.resolve(self.ns, parent, text)?;
        if let DirRole::Filter(c) = role {
            if feeds_from(self.parts, target, c) {
                return Err(Error::Invalid(format!(
                    "linking {here} to {text} would make a cycle"
                )));
            }
        }
        let Some(t) = self.parts.source_type(target) else {
            return Err(Error::Invalid(format!(
                "{text} is a filter whose input is not linked yet: link it first"
            )));
        };
        let new = NewLink {
            parent,
            name,
            text,
            target,
            t,
        };
        match role {
            DirRole::Filter(c) => self.link_input(c, new),
            DirRole::Policy(c) => self.link_port(c, new),
            _ => {
                let here = self.ns.path(parent);
                Err(Error::Invalid(format!(
                    "links can only be made in a filter (input) or a policy (ports) directory, not in {here}"
                )))
            }
        }
    }

    /// Link filter `c`'s `input`, if the filter accepts the target's type.
    fn link_input(&mut self, c: CompId, new: NewLink) -> Result<Ino> {
        if new.name != "input" {
            return Err(Error::Invalid(format!(
                "a filter's only port is `input`, not {}",
                new.name
            )));
        }
        let Some(Comp::Filter(f)) = self.parts.get(c) else {
            return Err(Error::NotFound("filter is gone".into()));
        };
        f.filter.accepts(new.t)?;
        let link = self.ns.add_link(new.parent, new.name, new.text);
        if let Some(Comp::Filter(f)) = self.parts.get_mut(c) {
            f.input = Some(Linked {
                source: new.target,
                link,
            });
        }
        Ok(link)
    }

    /// Link port `new.name` of policy `c`, if the policy has that port and
    /// it accepts the target's type.
    fn link_port(&mut self, c: CompId, new: NewLink) -> Result<Ino> {
        let Some(Comp::Policy(p)) = self.parts.get(c) else {
            return Err(Error::NotFound("policy is gone".into()));
        };
        p.policy.check_port(new.name, new.t)?;
        let link = self.ns.add_link(new.parent, new.name, new.text);
        if let Some(Comp::Policy(p)) = self.parts.get_mut(c) {
            p.ports.insert(
                new.name.to_string(),
                Linked {
                    source: new.target,
                    link,
                },
            );
        }
        Ok(link)
    }

    /// `rm parent/name` of a link. A filter's input cannot be unlinked while
    /// something links to the filter (its output type would vanish).
    pub fn unlink(&mut self, parent: Ino, name: &str) -> Result<()> {
        let ino = self.ns.lookup(parent, name)?;
        if !matches!(self.ns.entry(ino)?.kind, Kind::Link { .. }) {
            let path = self.ns.path(ino);
            return Err(Error::NotPermitted(format!(
                "{path} is not a link; only links can be removed with unlink"
            )));
        }
        match self.ns.dir_role(parent)? {
            DirRole::Filter(c) => {
                let users = self.users(c);
                if !users.is_empty() {
                    let (feeder, users) = (self.ns.path(parent), users.join(", "));
                    return Err(Error::Busy(format!(
                        "{feeder} feeds {users}: remove those links first"
                    )));
                }
                if let Some(Comp::Filter(f)) = self.parts.get_mut(c) {
                    f.input = None;
                }
            }
            DirRole::Policy(c) => {
                if let Some(Comp::Policy(p)) = self.parts.get_mut(c) {
                    p.ports.remove(name);
                }
            }
            _ => {}
        }
        self.ns.remove_subtree(ino);
        Ok(())
    }
}

/// A `probe_period` value: whole milliseconds within the bounds.
fn parse_period(text: &str) -> Result<u64> {
    text.parse()
        .ok()
        .filter(|ms| (MIN_PERIOD_MS..=MAX_PERIOD_MS).contains(ms))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "probe_period must be milliseconds from {MIN_PERIOD_MS} to {MAX_PERIOD_MS}, not {text:?}"
            ))
        })
}
