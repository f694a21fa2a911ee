//! The configfs-style tree as a plain data model, independent of FUSE so it
//! can be unit-tested. Entries are numbered (the numbers become inode
//! numbers); every operation either applies completely or returns an
//! [`Error`] and leaves the tree untouched.
//!
//! ```text
//! probes/<probe>/probe_period            attribute (ms)
//! probes/<probe>/status                  read-only
//! probes/<probe>/<source>/{value,nodes,type}
//! filters/<kind>[.<tag>]/{value,nodes,type,<attrs>} + link `input`
//! schedulers/<scheduler>/<policy>[.<tag>]/{<attrs>,<outputs>} + links `port_*`
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::filters::{Filter, BUILTIN_FILTERS};
use crate::plugin::{Decision, PluginKind, PortSpec};
use crate::policies::{self, Policy, BUILTIN_POLICIES};
use crate::probes::SourceSpec;
use crate::value::{NodeId, Reading, Readings, Scope, Series, Unit, ValueType};

pub type Ino = u64;
pub type CompId = u64;
pub const ROOT: Ino = 1;

/// Bounds of `probe_period`, in milliseconds.
pub const MIN_PERIOD_MS: u64 = 10;
pub const MAX_PERIOD_MS: u64 = 3_600_000;

/// Something a link can point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRef {
    Probe(CompId, usize),
    Filter(CompId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirRole {
    Root,
    Probes,
    Filters,
    Schedulers,
    Probe(CompId),
    Source(CompId, usize),
    Filter(CompId),
    Scheduler,
    Policy(CompId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileRole {
    Attr(CompId, &'static str),
    Value(SourceRef),
    Nodes(SourceRef),
    Type(SourceRef),
    Status(CompId),
    Output(CompId, &'static str),
}

#[derive(Debug, Clone)]
enum Kind {
    Dir {
        role: DirRole,
        children: BTreeMap<String, Ino>,
    },
    File(FileRole),
    Link {
        text: String,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    parent: Ino,
    name: String,
    kind: Kind,
}

/// What `stat` needs to know about an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    Dir,
    File { writable: bool },
    Link,
}

#[derive(Debug, Clone)]
pub struct SourceState {
    pub spec: SourceSpec,
    pub values: BTreeMap<NodeId, Series>,
}

#[derive(Debug, Clone)]
struct ProbeComp {
    kind: String,
    period: Duration,
    sources: Vec<SourceState>,
    status: String,
    seq: u64,
}

#[derive(Debug, Clone)]
struct FilterComp {
    filter: Filter,
    input: Option<(SourceRef, Ino)>,
}

#[derive(Debug, Clone)]
struct PolicyComp {
    policy: Policy,
    ports: BTreeMap<String, (SourceRef, Ino)>,
    /// The last decision of a plug-in policy.
    decision: Option<Decision>,
}

#[derive(Debug, Clone)]
enum Comp {
    Probe(ProbeComp),
    Filter(FilterComp),
    Policy(PolicyComp),
}

/// What a successful `mkdir` asks of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MkdirPlan {
    /// Instantiate the probe named `kind` (`<kind>[.<tag>]`, built-in or
    /// plug-in), then call [`Tree::add_probe`] with that same name.
    Probe { kind: String },
    /// Start the policy plug-in named `kind`, then call
    /// [`Tree::add_external_policy`].
    Policy { kind: String },
    /// Start the filter plug-in named `kind`, then call
    /// [`Tree::add_external_filter`].
    Filter { kind: String },
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

/// A value of a local probe source as sent to other nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedValue {
    pub probe: String,
    pub source: String,
    pub unit: Unit,
    pub value: Reading,
    pub seq: u64,
}

pub struct Tree {
    entries: HashMap<Ino, Entry>,
    comps: HashMap<CompId, Comp>,
    next: u64,
    node: NodeId,
    /// Where the tree is mounted: absolute link targets are resolved
    /// relative to it.
    mount: PathBuf,
    /// The mount point with symlinks resolved, computed before mounting
    /// (resolving it later from a FUSE handler would call into ourselves).
    mount_canonical: Option<PathBuf>,
    /// Nodes whose values count (online members); this node always does.
    live: BTreeSet<NodeId>,
}

impl Tree {
    pub fn new(node: NodeId, mount: &Path) -> Tree {
        let mut t = Tree {
            entries: HashMap::new(),
            comps: HashMap::new(),
            next: ROOT + 1,
            node,
            mount: mount.to_path_buf(),
            mount_canonical: mount.canonicalize().ok(),
            live: BTreeSet::from([node]),
        };
        t.entries.insert(
            ROOT,
            Entry {
                parent: ROOT,
                name: String::new(),
                kind: dir(DirRole::Root),
            },
        );
        t.add_dir(ROOT, "probes", DirRole::Probes);
        t.add_dir(ROOT, "filters", DirRole::Filters);
        t.add_dir(ROOT, "schedulers", DirRole::Schedulers);
        t
    }

    pub fn node_id(&self) -> NodeId {
        self.node
    }

    // ----- entry plumbing -------------------------------------------------

    fn alloc(&mut self) -> u64 {
        self.next += 1;
        self.next - 1
    }

    fn insert(&mut self, parent: Ino, name: &str, kind: Kind) -> Ino {
        let ino = self.alloc();
        self.entries.insert(
            ino,
            Entry {
                parent,
                name: name.to_string(),
                kind,
            },
        );
        if let Some(Entry {
            kind: Kind::Dir { children, .. },
            ..
        }) = self.entries.get_mut(&parent)
        {
            children.insert(name.to_string(), ino);
        }
        ino
    }

    fn add_dir(&mut self, parent: Ino, name: &str, role: DirRole) -> Ino {
        self.insert(parent, name, dir(role))
    }

    fn add_file(&mut self, parent: Ino, name: &str, role: FileRole) -> Ino {
        self.insert(parent, name, Kind::File(role))
    }

    /// Remove `ino` and everything below it.
    fn remove_subtree(&mut self, ino: Ino) {
        let Some(e) = self.entries.remove(&ino) else {
            return;
        };
        if let Kind::Dir { children, .. } = &e.kind {
            for c in children.values() {
                self.remove_subtree(*c);
            }
        }
        if let Some(Entry {
            kind: Kind::Dir { children, .. },
            ..
        }) = self.entries.get_mut(&e.parent)
        {
            children.remove(&e.name);
        }
    }

    fn entry(&self, ino: Ino) -> Result<&Entry> {
        self.entries
            .get(&ino)
            .ok_or_else(|| Error::NotFound(format!("no entry {ino}")))
    }

    fn dir_role(&self, ino: Ino) -> Result<DirRole> {
        match &self.entry(ino)?.kind {
            Kind::Dir { role, .. } => Ok(*role),
            _ => Err(Error::Invalid(format!(
                "{} is not a directory",
                self.path(ino)
            ))),
        }
    }

    /// Path of an entry relative to the tree's root (`probes/mem_probe`).
    pub fn path(&self, ino: Ino) -> String {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let Some(e) = self.entries.get(&cur) else {
                break;
            };
            parts.push(e.name.as_str());
            cur = e.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// Path of `name` in `parent`, for messages.
    pub fn child_path(&self, parent: Ino, name: &str) -> String {
        let p = self.path(parent);
        if p.is_empty() {
            name.to_string()
        } else {
            format!("{p}/{name}")
        }
    }

    // ----- read side --------------------------------------------------------

    pub fn lookup(&self, parent: Ino, name: &str) -> Result<Ino> {
        match &self.entry(parent)?.kind {
            Kind::Dir { children, .. } => children.get(name).copied().ok_or_else(|| {
                Error::NotFound(format!("{} does not exist", self.child_path(parent, name)))
            }),
            _ => Err(Error::NotFound(format!(
                "{} is not a directory",
                self.path(parent)
            ))),
        }
    }

    pub fn parent(&self, ino: Ino) -> Result<Ino> {
        Ok(self.entry(ino)?.parent)
    }

    pub fn entry_type(&self, ino: Ino) -> Result<EntryType> {
        Ok(match &self.entry(ino)?.kind {
            Kind::Dir { .. } => EntryType::Dir,
            Kind::File(role) => EntryType::File {
                writable: matches!(role, FileRole::Attr(..)),
            },
            Kind::Link { .. } => EntryType::Link,
        })
    }

    pub fn children(&self, ino: Ino) -> Result<Vec<(String, Ino, EntryType)>> {
        match &self.entry(ino)?.kind {
            Kind::Dir { children, .. } => children
                .iter()
                .map(|(n, c)| Ok((n.clone(), *c, self.entry_type(*c)?)))
                .collect(),
            _ => Err(Error::Invalid(format!(
                "{} is not a directory",
                self.path(ino)
            ))),
        }
    }

    pub fn readlink(&self, ino: Ino) -> Result<String> {
        match &self.entry(ino)?.kind {
            Kind::Link { text, .. } => Ok(text.clone()),
            _ => Err(Error::Invalid(format!("{} is not a link", self.path(ino)))),
        }
    }

    /// The content of a file, generated now from live values.
    pub fn read(&self, ino: Ino) -> Result<String> {
        let role = match &self.entry(ino)?.kind {
            Kind::File(role) => *role,
            _ => return Err(Error::Invalid(format!("{} is not a file", self.path(ino)))),
        };
        Ok(match role {
            FileRole::Attr(c, name) => format!("{}\n", self.attr_value(c, name)?),
            FileRole::Value(src) => self.value_text(src),
            FileRole::Nodes(src) => self.nodes_text(src),
            FileRole::Type(src) => match self.source_type(src) {
                Some(t) => format!("{t}\n"),
                None => "unknown (input not linked)\n".to_string(),
            },
            FileRole::Status(c) => match self.comps.get(&c) {
                Some(Comp::Probe(p)) => format!("{}\n", p.status),
                _ => String::new(),
            },
            FileRole::Output(c, name) => self.output_text(c, name),
        })
    }

    fn attr_value(&self, c: CompId, name: &str) -> Result<String> {
        let v = match (self.comps.get(&c), name) {
            (Some(Comp::Probe(p)), "probe_period") => Some(p.period.as_millis().to_string()),
            (Some(Comp::Filter(f)), _) => f.filter.get(name),
            (Some(Comp::Policy(p)), _) => p.policy.get(name),
            _ => None,
        };
        v.ok_or_else(|| Error::NotFound(format!("no attribute {name}")))
    }

    /// The type a source produces; `None` for a filter with no input yet.
    pub fn source_type(&self, src: SourceRef) -> Option<ValueType> {
        match src {
            SourceRef::Probe(c, i) => match self.comps.get(&c)? {
                Comp::Probe(p) => Some(ValueType {
                    unit: p.sources.get(i)?.spec.unit,
                    scope: Scope::PerNode,
                }),
                _ => None,
            },
            SourceRef::Filter(c) => match self.comps.get(&c)? {
                Comp::Filter(f) => {
                    let (input, _) = f.input?;
                    Some(f.filter.output_type(self.source_type(input)?))
                }
                _ => None,
            },
        }
    }

    /// Current values of a source, over this node and the live remote nodes.
    pub fn readings(&self, src: SourceRef) -> Option<Readings> {
        match src {
            SourceRef::Probe(c, i) => match self.comps.get(&c)? {
                Comp::Probe(p) => Some(Readings::PerNode(p.sources.get(i)?.values.clone())),
                _ => None,
            },
            SourceRef::Filter(c) => match self.comps.get(&c)? {
                Comp::Filter(f) => Some(f.filter.apply(&self.readings(f.input?.0)?)),
                _ => None,
            },
        }
    }

    fn value_text(&self, src: SourceRef) -> String {
        let (Some(t), Some(r)) = (self.source_type(src), self.readings(src)) else {
            return String::new();
        };
        let last = match &r {
            Readings::PerNode(m) => m.get(&self.node).and_then(Series::last),
            Readings::Cluster(s) => s.last(),
        };
        last.map(|v| format!("{}\n", v.render(t.unit)))
            .unwrap_or_default()
    }

    fn nodes_text(&self, src: SourceRef) -> String {
        let (Some(t), Some(r)) = (self.source_type(src), self.readings(src)) else {
            return String::new();
        };
        let one_line = |v: &Reading| v.render(t.unit).replace('\n', " | ");
        match r {
            Readings::PerNode(m) => m
                .iter()
                .filter_map(|(n, s)| Some(format!("{n} {}\n", one_line(s.last()?))))
                .collect(),
            Readings::Cluster(s) => s
                .last()
                .map(|v| format!("cluster {}\n", one_line(v)))
                .unwrap_or_default(),
        }
    }

    fn output_text(&self, c: CompId, name: &str) -> String {
        let Some(Comp::Policy(p)) = self.comps.get(&c) else {
            return String::new();
        };
        match (&p.policy, name) {
            (Policy::Echo, "received") => {
                let ports = p
                    .ports
                    .iter()
                    .filter_map(|(port, (src, _))| {
                        Some((
                            port.clone(),
                            (self.source_type(*src)?, self.readings(*src)?),
                        ))
                    })
                    .collect();
                policies::echo_lines(&ports)
            }
            (Policy::Placement { .. }, "placement") | (Policy::External { .. }, "decision") => {
                match self.place_with(c) {
                    Ok((node, reason)) => format!("{node} {reason}\n"),
                    Err(e) => format!("none: {e}\n"),
                }
            }
            _ => String::new(),
        }
    }

    // ----- write side -------------------------------------------------------

    /// `echo text > file`. Returns the probe whose period changed, if any.
    pub fn write(&mut self, ino: Ino, text: &str) -> Result<Option<CompId>> {
        let (c, name) = match &self.entry(ino)?.kind {
            Kind::File(FileRole::Attr(c, name)) => (*c, *name),
            _ => {
                return Err(Error::NotPermitted(format!(
                    "{} is read-only",
                    self.path(ino)
                )))
            }
        };
        let text = text.trim();
        match self.comps.get_mut(&c) {
            Some(Comp::Probe(p)) => {
                let ms: u64 = text
                    .parse()
                    .ok()
                    .filter(|ms| (MIN_PERIOD_MS..=MAX_PERIOD_MS).contains(ms))
                    .ok_or_else(|| Error::Invalid(format!(
                        "probe_period must be milliseconds from {MIN_PERIOD_MS} to {MAX_PERIOD_MS}, not {text:?}"
                    )))?;
                p.period = Duration::from_millis(ms);
                Ok(Some(c))
            }
            Some(Comp::Filter(f)) => f.filter.set(name, text).map(|_| None),
            Some(Comp::Policy(p)) => p.policy.set(name, text).map(|_| None),
            None => Err(Error::NotFound("the attribute's owner is gone".into())),
        }
    }

    /// First half of `mkdir parent/name`: validates, and creates everything
    /// except probes (which the caller must instantiate first).
    pub fn mkdir(
        &mut self,
        parent: Ino,
        name: &str,
        is_probe: impl Fn(&str) -> bool,
    ) -> Result<MkdirPlan> {
        self.mkdir_with_plugins(parent, name, is_probe, |_, _| false)
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
        let role = self.dir_role(parent)?;
        check_name(name)?;
        if self.lookup(parent, name).is_ok() {
            return Err(Error::Exists(format!(
                "{} already exists",
                self.child_path(parent, name)
            )));
        }
        match role {
            DirRole::Probes if is_probe(kind_of(name)) => Ok(MkdirPlan::Probe { kind: name.to_string() }),
            DirRole::Probes => {
                Err(Error::NotFound(format!("no probe named {} (built-in or in the plug-in registry)", kind_of(name))))
            }
            DirRole::Filters if Filter::new(kind_of(name)).is_none() && is_plugin(kind_of(name), PluginKind::Filter) => {
                Ok(MkdirPlan::Filter { kind: name.to_string() })
            }
            DirRole::Filters => {
                let filter = Filter::new(kind_of(name))
                    .ok_or_else(|| Error::NotFound(format!("no filter kind {} (known: {})", kind_of(name), BUILTIN_FILTERS.join(", "))))?;
                Ok(MkdirPlan::Done(self.add_filter(parent, name, filter)))
            }
            DirRole::Schedulers => Ok(MkdirPlan::Done(self.add_dir(parent, name, DirRole::Scheduler))),
            DirRole::Scheduler if Policy::new(kind_of(name)).is_none() && is_plugin(kind_of(name), PluginKind::Policy) => {
                Ok(MkdirPlan::Policy { kind: name.to_string() })
            }
            DirRole::Scheduler => {
                let policy = Policy::new(kind_of(name))
                    .ok_or_else(|| Error::NotFound(format!("no policy kind {} (known: {})", kind_of(name), BUILTIN_POLICIES.join(", "))))?;
                Ok(MkdirPlan::Done(self.add_policy(parent, name, policy)))
            }
            _ => Err(Error::NotPermitted(format!(
                "cannot create directories in {}: only in probes/, filters/, schedulers/ and schedulers/<name>/",
                self.path(parent)
            ))),
        }
    }

    /// Second half of `mkdir filters/<plug-in>`: the plug-in runs and
    /// declared its types in `filter`.
    pub fn add_external_filter(
        &mut self,
        parent: Ino,
        name: &str,
        filter: Filter,
    ) -> Result<(Ino, CompId)> {
        if self.dir_role(parent)? != DirRole::Filters {
            return Err(Error::NotPermitted("filters live in filters/".into()));
        }
        if self.lookup(parent, name).is_ok() {
            return Err(Error::Exists(format!(
                "{} already exists",
                self.child_path(parent, name)
            )));
        }
        let dir = self.add_filter(parent, name, filter);
        match self.dir_role(dir)? {
            DirRole::Filter(c) => Ok((dir, c)),
            _ => Err(Error::NotFound("filter directory vanished".into())),
        }
    }

    /// Second half of `mkdir schedulers/<s>/<plug-in>`: the plug-in runs
    /// and declared `ports`.
    pub fn add_external_policy(
        &mut self,
        parent: Ino,
        name: &str,
        ports: Vec<PortSpec>,
    ) -> Result<(Ino, CompId)> {
        if self.dir_role(parent)? != DirRole::Scheduler {
            return Err(Error::NotPermitted(
                "policies live in schedulers/<name>/".into(),
            ));
        }
        if self.lookup(parent, name).is_ok() {
            return Err(Error::Exists(format!(
                "{} already exists",
                self.child_path(parent, name)
            )));
        }
        let dir = self.add_policy(parent, name, Policy::External { ports });
        match self.dir_role(dir)? {
            DirRole::Policy(c) => Ok((dir, c)),
            _ => Err(Error::NotFound("policy directory vanished".into())),
        }
    }

    /// Second half of `mkdir probes/<kind>`: the probe exists and has taken
    /// its first sample (`first`, one reading per source).
    pub fn add_probe(
        &mut self,
        parent: Ino,
        kind: &str,
        specs: Vec<SourceSpec>,
        period: Duration,
        first: Vec<Reading>,
    ) -> Result<(Ino, CompId)> {
        if self.dir_role(parent)? != DirRole::Probes {
            return Err(Error::NotPermitted("probes live in probes/".into()));
        }
        if self.lookup(parent, kind).is_ok() {
            return Err(Error::Exists(format!("probes/{kind} already exists")));
        }
        let c = self.alloc();
        let dir = self.add_dir(parent, kind, DirRole::Probe(c));
        self.add_file(dir, "probe_period", FileRole::Attr(c, "probe_period"));
        self.add_file(dir, "status", FileRole::Status(c));
        let mut sources = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let sdir = self.add_dir(dir, &spec.name, DirRole::Source(c, i));
            self.add_source_files(sdir, SourceRef::Probe(c, i));
            sources.push(SourceState {
                spec,
                values: BTreeMap::new(),
            });
        }
        let comp = ProbeComp {
            kind: kind.to_string(),
            period,
            sources,
            status: "running".into(),
            seq: 0,
        };
        self.comps.insert(c, Comp::Probe(comp));
        self.store_sample(c, first);
        Ok((dir, c))
    }

    fn add_source_files(&mut self, dir: Ino, src: SourceRef) {
        self.add_file(dir, "value", FileRole::Value(src));
        self.add_file(dir, "nodes", FileRole::Nodes(src));
        self.add_file(dir, "type", FileRole::Type(src));
    }

    fn add_filter(&mut self, parent: Ino, name: &str, filter: Filter) -> Ino {
        let c = self.alloc();
        let dir = self.add_dir(parent, name, DirRole::Filter(c));
        for a in filter.attributes() {
            self.add_file(dir, a, FileRole::Attr(c, a));
        }
        self.add_source_files(dir, SourceRef::Filter(c));
        self.comps.insert(
            c,
            Comp::Filter(FilterComp {
                filter,
                input: None,
            }),
        );
        dir
    }

    fn add_policy(&mut self, parent: Ino, name: &str, policy: Policy) -> Ino {
        let c = self.alloc();
        let dir = self.add_dir(parent, name, DirRole::Policy(c));
        for a in policy.attributes() {
            self.add_file(dir, a, FileRole::Attr(c, a));
        }
        for o in policy.outputs() {
            self.add_file(dir, o, FileRole::Output(c, o));
        }
        self.comps.insert(
            c,
            Comp::Policy(PolicyComp {
                policy,
                ports: BTreeMap::new(),
                decision: None,
            }),
        );
        dir
    }

    /// Links that point at `target`'s component, as paths (for messages).
    fn links_into(&self, target: CompId) -> Vec<String> {
        let hits = |s: &SourceRef| match s {
            SourceRef::Probe(c, _) | SourceRef::Filter(c) => *c == target,
        };
        let mut out = Vec::new();
        for comp in self.comps.values() {
            match comp {
                Comp::Filter(f) => out.extend(
                    f.input
                        .iter()
                        .filter(|(s, _)| hits(s))
                        .map(|(_, l)| self.path(*l)),
                ),
                Comp::Policy(p) => out.extend(
                    p.ports
                        .values()
                        .filter(|(s, _)| hits(s))
                        .map(|(_, l)| self.path(*l)),
                ),
                Comp::Probe(_) => {}
            }
        }
        out.sort();
        out
    }

    /// `rmdir parent/name`. A probe or filter that links point at is busy:
    /// the links must go first (EBUSY). A policy or filter takes its own
    /// outgoing links with it. A scheduler must be empty.
    pub fn rmdir(&mut self, parent: Ino, name: &str) -> Result<Removed> {
        let ino = self.lookup(parent, name)?;
        let path = self.path(ino);
        let role = match &self.entry(ino)?.kind {
            Kind::Dir { role, .. } => *role,
            _ => return Err(Error::Invalid(format!("{path} is not a directory"))),
        };
        let removed = match role {
            DirRole::Probe(c) | DirRole::Filter(c) => {
                let users = self.links_into(c);
                if !users.is_empty() {
                    return Err(Error::Busy(format!(
                        "{path} is linked from {}: remove those links first",
                        users.join(", ")
                    )));
                }
                let gone = self.comps.remove(&c);
                if let Some(Comp::Filter(FilterComp {
                    filter:
                        Filter {
                            external: Some(_), ..
                        },
                    ..
                })) = gone
                {
                    Removed::Filter(c)
                } else if matches!(role, DirRole::Probe(_)) {
                    Removed::Probe(c)
                } else {
                    Removed::Other
                }
            }
            DirRole::Policy(c) => match self.comps.remove(&c) {
                Some(Comp::Policy(PolicyComp {
                    policy: Policy::External { .. },
                    ..
                })) => Removed::Policy(c),
                _ => Removed::Other,
            },
            DirRole::Scheduler => {
                if !matches!(&self.entry(ino)?.kind, Kind::Dir { children, .. } if children.is_empty())
                {
                    return Err(Error::NotEmpty(format!(
                        "{path} still holds policies: remove them first"
                    )));
                }
                Removed::Other
            }
            _ => {
                return Err(Error::NotPermitted(format!(
                    "{path} is part of the tree and cannot be removed on its own"
                )))
            }
        };
        self.remove_subtree(ino);
        Ok(removed)
    }

    /// `ln -s target parent/name`. Legal pairs: filter `input` → probe source
    /// or filter; policy port → probe source or filter; with matching types
    /// and no cycle.
    pub fn symlink(&mut self, parent: Ino, name: &str, target_text: &str) -> Result<Ino> {
        let role = self.dir_role(parent)?;
        check_name(name)?;
        let here = self.child_path(parent, name);
        if self.lookup(parent, name).is_ok() {
            return Err(Error::Exists(format!(
                "{here} already exists (a port takes one link)"
            )));
        }
        let target = self.resolve_target(parent, target_text)?;
        if let DirRole::Filter(c) = role {
            if self.feeds_from(target, c) {
                return Err(Error::Invalid(format!(
                    "linking {here} to {target_text} would make a cycle"
                )));
            }
        }
        let Some(t) = self.source_type(target) else {
            return Err(Error::Invalid(format!(
                "{target_text} is a filter whose input is not linked yet: link it first"
            )));
        };
        match role {
            DirRole::Filter(c) => {
                if name != "input" {
                    return Err(Error::Invalid(format!("a filter's only port is `input`, not {name}")));
                }
                let Some(Comp::Filter(f)) = self.comps.get(&c) else { return Err(Error::NotFound("filter is gone".into())) };
                f.filter.accepts(t)?;
                let link = self.insert(parent, name, Kind::Link { text: target_text.to_string() });
                if let Some(Comp::Filter(f)) = self.comps.get_mut(&c) {
                    f.input = Some((target, link));
                }
                Ok(link)
            }
            DirRole::Policy(c) => {
                let Some(Comp::Policy(p)) = self.comps.get(&c) else { return Err(Error::NotFound("policy is gone".into())) };
                p.policy.check_port(name, t)?;
                let link = self.insert(parent, name, Kind::Link { text: target_text.to_string() });
                if let Some(Comp::Policy(p)) = self.comps.get_mut(&c) {
                    p.ports.insert(name.to_string(), (target, link));
                }
                Ok(link)
            }
            _ => Err(Error::Invalid(format!(
                "links can only be made in a filter (input) or a policy (ports) directory, not in {}",
                self.path(parent)
            ))),
        }
    }

    /// Whether `src` is, or is computed from, filter `c`.
    fn feeds_from(&self, src: SourceRef, c: CompId) -> bool {
        let mut cur = src;
        for _ in 0..=self.comps.len() {
            match cur {
                SourceRef::Probe(..) => return false,
                SourceRef::Filter(f) if f == c => return true,
                SourceRef::Filter(f) => match self.comps.get(&f) {
                    Some(Comp::Filter(FilterComp {
                        input: Some((next, _)),
                        ..
                    })) => cur = *next,
                    _ => return false,
                },
            }
        }
        true
    }

    /// Turn a link target (absolute under the mount point, or relative to
    /// the link's directory) into the source it names.
    fn resolve_target(&self, link_dir: Ino, text: &str) -> Result<SourceRef> {
        let bad = |why: String| Error::Invalid(format!("link target {text}: {why}"));
        let p = Path::new(text);
        let (base, rel): (Vec<String>, &Path) = if p.is_absolute() {
            let rel = p
                .strip_prefix(&self.mount)
                .ok()
                .or_else(|| {
                    self.mount_canonical
                        .as_deref()
                        .and_then(|m| p.strip_prefix(m).ok())
                })
                .ok_or_else(|| bad(format!("not inside {}", self.mount.display())))?;
            (Vec::new(), rel)
        } else {
            (
                self.path(link_dir)
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                p,
            )
        };
        let parts = self
            .normalize(base, rel)
            .ok_or_else(|| bad("goes above the tree's root".into()))?;
        self.source_at(&parts, text)
    }

    fn normalize(&self, mut parts: Vec<String>, rel: &Path) -> Option<Vec<String>> {
        for c in rel.components() {
            match c {
                Component::Normal(s) => parts.push(s.to_str()?.to_string()),
                Component::ParentDir => {
                    parts.pop()?;
                }
                _ => {}
            }
        }
        Some(parts)
    }

    /// The source at a path; links are not followed (a link is not a source).
    fn source_at(&self, parts: &[String], text: &str) -> Result<SourceRef> {
        let mut ino = ROOT;
        for part in parts {
            ino = self
                .lookup(ino, part)
                .map_err(|_| Error::Invalid(format!("link target {text} does not exist")))?;
        }
        match &self.entry(ino)?.kind {
            Kind::Dir { role: DirRole::Source(c, i), .. } => Ok(SourceRef::Probe(*c, *i)),
            Kind::Dir { role: DirRole::Filter(c), .. } => Ok(SourceRef::Filter(*c)),
            _ => Err(Error::Invalid(format!(
                "link target {text} is not a probe source or a filter (probes/<probe>/<source> or filters/<filter>)"
            ))),
        }
    }

    /// `rm parent/name` of a link. A filter's input cannot be unlinked while
    /// something links to the filter (its output type would vanish).
    pub fn unlink(&mut self, parent: Ino, name: &str) -> Result<()> {
        let ino = self.lookup(parent, name)?;
        let path = self.path(ino);
        if !matches!(self.entry(ino)?.kind, Kind::Link { .. }) {
            return Err(Error::NotPermitted(format!(
                "{path} is not a link; only links can be removed with unlink"
            )));
        }
        match self.dir_role(parent)? {
            DirRole::Filter(c) => {
                let users = self.links_into(c);
                if !users.is_empty() {
                    return Err(Error::Busy(format!(
                        "{} feeds {}: remove those links first",
                        self.path(parent),
                        users.join(", ")
                    )));
                }
                if let Some(Comp::Filter(f)) = self.comps.get_mut(&c) {
                    f.input = None;
                }
            }
            DirRole::Policy(c) => {
                if let Some(Comp::Policy(p)) = self.comps.get_mut(&c) {
                    p.ports.remove(name);
                }
            }
            _ => {}
        }
        self.remove_subtree(ino);
        Ok(())
    }

    // ----- probes and the cluster --------------------------------------------

    pub fn probe_period(&self, c: CompId) -> Option<Duration> {
        match self.comps.get(&c)? {
            Comp::Probe(p) => Some(p.period),
            _ => None,
        }
    }

    /// The shortest period of the loaded probes (how often remote values
    /// are worth pulling).
    pub fn shortest_period(&self) -> Option<Duration> {
        self.comps
            .values()
            .filter_map(|c| match c {
                Comp::Probe(p) => Some(p.period),
                _ => None,
            })
            .min()
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

    /// This node's current probe values, for other nodes.
    pub fn shared_values(&self) -> Vec<SharedValue> {
        let mut out = Vec::new();
        for comp in self.comps.values() {
            let Comp::Probe(p) = comp else { continue };
            for s in &p.sources {
                if let Some(series) = s.values.get(&self.node) {
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
        for comp in self.comps.values_mut() {
            let Comp::Probe(p) = comp else { continue };
            for s in &mut p.sources {
                let got = values.iter().find(|v| {
                    v.probe == p.kind && v.source == s.spec.name && v.unit == s.spec.unit
                });
                match got {
                    Some(v) => {
                        let series = s.values.entry(node).or_default();
                        if series.seq != v.seq || series.points.is_empty() {
                            series.push(v.value.clone(), v.seq);
                        }
                    }
                    None => {
                        s.values.remove(&node);
                    }
                }
            }
        }
    }

    /// The nodes whose values count; values of other nodes are dropped.
    pub fn set_live(&mut self, nodes: BTreeSet<NodeId>) {
        let mut live = nodes;
        live.insert(self.node);
        for comp in self.comps.values_mut() {
            if let Comp::Probe(p) = comp {
                for s in &mut p.sources {
                    s.values.retain(|n, _| live.contains(n));
                }
            }
        }
        self.live = live;
    }

    pub fn live(&self) -> &BTreeSet<NodeId> {
        &self.live
    }

    /// Ask the placement policy of scheduler `name` (or of the first
    /// scheduler that has one) where a new process should run.
    pub fn place(&self, scheduler: Option<&str>) -> Result<(NodeId, String)> {
        let scheds = self.lookup(ROOT, "schedulers")?;
        let mut candidates = Vec::new();
        for (sname, sino, _) in self.children(scheds)? {
            if scheduler.is_some_and(|want| want != sname) {
                continue;
            }
            for (_, pino, _) in self.children(sino)? {
                if let Ok(DirRole::Policy(c)) = self.dir_role(pino) {
                    if matches!(
                        self.comps.get(&c),
                        Some(Comp::Policy(PolicyComp {
                            policy: Policy::Placement { .. } | Policy::External { .. },
                            ..
                        }))
                    ) {
                        candidates.push(c);
                    }
                }
            }
        }
        let c = candidates.first().ok_or_else(|| match scheduler {
            Some(s) => Error::NotFound(format!(
                "scheduler {s} does not exist or has no placement_policy or policy plug-in"
            )),
            None => Error::NotFound(
                "no scheduler has a placement_policy or policy plug-in loaded".into(),
            ),
        })?;
        self.place_with(*c)
    }

    fn place_with(&self, c: CompId) -> Result<(NodeId, String)> {
        let (mode, ports) = match self.comps.get(&c) {
            Some(Comp::Policy(PolicyComp {
                policy: Policy::Placement { mode },
                ports,
                ..
            })) => (mode, ports),
            Some(Comp::Policy(PolicyComp {
                policy: Policy::External { .. },
                decision,
                ..
            })) => {
                return match decision {
                    None => Err(Error::NotFound(
                        "the policy plug-in has not decided yet".into(),
                    )),
                    Some(Err(why)) => Err(Error::NotFound(why.clone())),
                    Some(Ok((node, _))) if !self.live.contains(node) => Err(Error::NotFound(
                        format!("the policy plug-in chose node {node}, which is not online"),
                    )),
                    Some(Ok((node, reason))) => Ok((*node, reason.clone())),
                };
            }
            _ => return Err(Error::NotFound("not a placement policy".into())),
        };
        let port = |name| ports.get(name).and_then(|(src, _)| self.readings(*src));
        let (mem, load) = (port(policies::PORT_MEM), port(policies::PORT_LOAD));
        policies::place(*mode, mem.as_ref(), load.as_ref(), &self.live)
    }

    /// The inputs of plug-in policy `c` as protocol lines
    /// (`input <port> <node> <value>`); None once the policy is gone.
    pub fn policy_inputs(&self, c: CompId) -> Option<Vec<String>> {
        let Some(Comp::Policy(p)) = self.comps.get(&c) else {
            return None;
        };
        let mut out = Vec::new();
        for (port, (src, _)) in &p.ports {
            let (Some(t), Some(r)) = (self.source_type(*src), self.readings(*src)) else {
                continue;
            };
            let line = |who: String, v: &Reading| {
                format!(
                    "input {port} {who} {}",
                    v.render(t.unit).replace('\n', " | ")
                )
            };
            match r {
                Readings::PerNode(m) => {
                    out.extend(
                        m.iter()
                            .filter_map(|(n, s)| Some(line(n.to_string(), s.last()?))),
                    );
                }
                Readings::Cluster(s) => out.extend(s.last().map(|v| line("cluster".into(), v))),
            }
        }
        Some(out)
    }

    /// The input of plug-in filter `c` as protocol lines
    /// (`value <node> <value>`) and the unit its output has; `Some(None)`
    /// while its input is unlinked, None once the filter is gone.
    #[allow(clippy::type_complexity)]
    pub fn filter_inputs(&self, c: CompId) -> Option<Option<(Vec<String>, Unit)>> {
        let Some(Comp::Filter(f)) = self.comps.get(&c) else {
            return None;
        };
        let Some((input, _)) = f.input else {
            return Some(None);
        };
        let (Some(t), Some(r), Some(out)) = (
            self.source_type(input),
            self.readings(input),
            self.source_type(SourceRef::Filter(c)),
        ) else {
            return Some(None);
        };
        let line = |who: String, v: &Reading| {
            format!("value {who} {}", v.render(t.unit).replace('\n', " | "))
        };
        let lines = match r {
            Readings::PerNode(m) => m
                .iter()
                .filter_map(|(n, s)| Some(line(n.to_string(), s.last()?)))
                .collect(),
            Readings::Cluster(s) => s
                .last()
                .map(|v| line("cluster".into(), v))
                .into_iter()
                .collect(),
        };
        Some(Some((lines, out.unit)))
    }

    /// Store what plug-in filter `c` computed (None: no output, input unlinked).
    pub fn set_filter_output(&mut self, c: CompId, out: Option<Readings>) {
        if let Some(Comp::Filter(FilterComp {
            filter: Filter {
                external: Some(ext),
                ..
            },
            ..
        })) = self.comps.get_mut(&c)
        {
            ext.cache = out;
        }
    }

    pub fn set_decision(&mut self, c: CompId, d: Decision) {
        if let Some(Comp::Policy(p)) = self.comps.get_mut(&c) {
            p.decision = Some(d);
        }
    }

    /// What every echo policy receives, as `(policy path, lines)`.
    pub fn echo_report(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (ino, e) in &self.entries {
            if let Kind::Dir {
                role: DirRole::Policy(c),
                ..
            } = e.kind
            {
                if matches!(
                    self.comps.get(&c),
                    Some(Comp::Policy(PolicyComp {
                        policy: Policy::Echo,
                        ..
                    }))
                ) {
                    out.push((self.path(*ino), self.output_text(c, "received")));
                }
            }
        }
        out.sort();
        out
    }
}

fn dir(role: DirRole) -> Kind {
    Kind::Dir {
        role,
        children: BTreeMap::new(),
    }
}

/// `moving_average.ram` → `moving_average`: the part of a directory name
/// that names the kind of probe, filter or policy.
pub fn kind_of(name: &str) -> &str {
    name.split_once('.').map(|(k, _)| k).unwrap_or(name)
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "bad name {name:?}: use up to 64 of [A-Za-z0-9_.-]"
        )))
    }
}

#[cfg(test)]
mod tests;
