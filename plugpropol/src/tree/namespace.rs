//! The tree's names: numbered entries (the numbers become inode numbers),
//! each a directory, a file or a link with its parent and its role. Roles
//! only name the part ([`CompId`]) an entry belongs to; what the part holds
//! is the data plane's business ([`super::data`]).

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};

pub type Ino = u64;
/// A loaded probe, filter or policy. Drawn from the same counter as
/// inode numbers, so no id is ever reused.
pub type CompId = u64;
pub const ROOT: Ino = 1;

/// Something a link can point at: a probe's source (by index) or a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRef {
    Probe(CompId, usize),
    Filter(CompId),
}

impl SourceRef {
    /// The part the source belongs to.
    pub fn comp(self) -> CompId {
        match self {
            SourceRef::Probe(c, _) | SourceRef::Filter(c) => c,
        }
    }
}

/// What a directory is; decides which operations it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DirRole {
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

/// What a file shows; its content is rendered at each read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileRole {
    Attr(CompId, &'static str),
    Value(SourceRef),
    Nodes(SourceRef),
    Type(SourceRef),
    Status(CompId),
    Output(CompId, &'static str),
}

#[derive(Debug, Clone)]
pub(super) enum Kind {
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
pub(super) struct Entry {
    pub parent: Ino,
    pub name: String,
    pub kind: Kind,
}

/// What `stat` needs to know about an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    Dir,
    File { writable: bool },
    Link,
}

/// Every entry of the tree, by number.
pub(super) struct Namespace {
    entries: HashMap<Ino, Entry>,
    next: u64,
}

impl Namespace {
    /// The root with its three fixed directories.
    pub fn new() -> Namespace {
        let mut ns = Namespace {
            entries: HashMap::new(),
            next: ROOT + 1,
        };
        let root = Entry {
            parent: ROOT,
            name: String::new(),
            kind: dir(DirRole::Root),
        };
        ns.entries.insert(ROOT, root);
        ns.add_dir(ROOT, "probes", DirRole::Probes);
        ns.add_dir(ROOT, "filters", DirRole::Filters);
        ns.add_dir(ROOT, "schedulers", DirRole::Schedulers);
        ns
    }

    /// A fresh number, for an entry or a part.
    pub fn alloc(&mut self) -> u64 {
        self.next += 1;
        self.next - 1
    }

    fn insert(&mut self, parent: Ino, name: &str, kind: Kind) -> Ino {
        let ino = self.alloc();
        let entry = Entry {
            parent,
            name: name.to_string(),
            kind,
        };
        self.entries.insert(ino, entry);
        if let Some(Kind::Dir { children, .. }) = self.kind_mut(parent) {
            children.insert(name.to_string(), ino);
        }
        ino
    }

    fn kind_mut(&mut self, ino: Ino) -> Option<&mut Kind> {
        self.entries.get_mut(&ino).map(|e| &mut e.kind)
    }

    pub fn add_dir(&mut self, parent: Ino, name: &str, role: DirRole) -> Ino {
        self.insert(parent, name, dir(role))
    }

    pub fn add_file(&mut self, parent: Ino, name: &str, role: FileRole) -> Ino {
        self.insert(parent, name, Kind::File(role))
    }

    pub fn add_link(&mut self, parent: Ino, name: &str, text: &str) -> Ino {
        let text = text.to_string();
        self.insert(parent, name, Kind::Link { text })
    }

    /// Remove `ino` and everything below it.
    pub fn remove_subtree(&mut self, ino: Ino) {
        let Some(e) = self.entries.remove(&ino) else {
            return;
        };
        if let Kind::Dir { children, .. } = &e.kind {
            for c in children.values() {
                self.remove_subtree(*c);
            }
        }
        if let Some(Kind::Dir { children, .. }) = self.kind_mut(e.parent) {
            children.remove(&e.name);
        }
    }

    pub fn entry(&self, ino: Ino) -> Result<&Entry> {
        self.entries
            .get(&ino)
            .ok_or_else(|| Error::NotFound(format!("no entry {ino}")))
    }

    /// Every entry, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (Ino, &Entry)> {
        self.entries.iter().map(|(i, e)| (*i, e))
    }

    pub fn dir_role(&self, ino: Ino) -> Result<DirRole> {
        match &self.entry(ino)?.kind {
            Kind::Dir { role, .. } => Ok(*role),
            _ => Err(Error::Invalid(format!(
                "{} is not a directory",
                self.path(ino)
            ))),
        }
    }

    pub fn is_empty_dir(&self, ino: Ino) -> bool {
        match self.entries.get(&ino).map(|e| &e.kind) {
            Some(Kind::Dir { children, .. }) => children.is_empty(),
            _ => false,
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

    /// EEXIST when `parent` already holds `name`.
    pub fn check_free(&self, parent: Ino, name: &str) -> Result<()> {
        match self.lookup(parent, name) {
            Ok(_) => Err(Error::Exists(format!(
                "{} already exists",
                self.child_path(parent, name)
            ))),
            Err(_) => Ok(()),
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

/// The names `mkdir` and `ln -s` accept.
pub(super) fn check_name(name: &str) -> Result<()> {
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
