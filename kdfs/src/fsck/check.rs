//! Deciding what is wrong in scanned stores, and the repair of each
//! finding. What one store alone can decide differs from what all the
//! stores of a file system together can (see docs/kdfs.md, fsck):
//!
//! * alone: damaged or foreign objects and entries, entries naming a
//!   missing local inode, counts the local names prove too low, subdirectory
//!   counts, the allocator, a directory named twice here. An inode with no
//!   name here may be named on another node: it is only counted.
//! * with every store (`complete`): what is reachable from the root; an
//!   inode nothing reachable names is an orphan (moved to `lost+found`),
//!   entries naming a missing inode of any node, exact link counts, and a
//!   directory named on two nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;

use krg_proto::kdfs::{inode_local, inode_node, FileKind, InodeId};

use super::scan::{Ent, Scanned};
use super::{Finding, Fix, Problem};
use crate::format::FIRST_INO;

/// An entry, by (store index, directory, name).
type EntKey = (usize, InodeId, OsString);

/// The checks over `stores` (complete: every store of the file system).
pub fn check(stores: &[Scanned], complete: bool) -> (Vec<Finding>, Vec<String>) {
    let mut c = Checker {
        stores,
        complete,
        findings: Vec::new(),
        notes: Vec::new(),
        removed: BTreeSet::new(),
        moved: BTreeSet::new(),
    };
    for i in 0..stores.len() {
        c.store_level(i);
    }
    c.bad_entries();
    // Reachability before the second names go: a name in a directory
    // reachable from the root is the one kept.
    let reachable = c.counted_dirs();
    c.second_dir_names(reachable.as_ref());
    let counted = c.counted_dirs();
    let names = c.names(&counted);
    for i in 0..stores.len() {
        c.objects(i, &names);
        c.subdir_counts(i);
    }
    c.findings.extend(super::stripes::check(stores, complete));
    (c.findings, c.notes)
}

struct Checker<'a> {
    stores: &'a [Scanned],
    complete: bool,
    findings: Vec<Finding>,
    notes: Vec<String>,
    /// Entries a repair removes: not counted as names.
    removed: BTreeSet<EntKey>,
    /// Objects a repair moves to lost+found: (store, local number).
    moved: BTreeSet<(usize, u64)>,
}

impl Checker<'_> {
    fn add(&mut self, store: usize, problem: Problem, message: String, fix: Fix) {
        self.findings.push(Finding {
            store,
            problem,
            message,
            fix,
        });
    }

    /// The store holding `ino`, if it was given.
    fn holder(&self, ino: InodeId) -> Option<usize> {
        self.stores.iter().position(|s| s.node() == inode_node(ino))
    }

    /// The object of `ino` in the given stores: None when its store was not
    /// given, Some(None) when it is missing there.
    fn object(&self, ino: InodeId) -> Option<Option<FileKind>> {
        let s = &self.stores[self.holder(ino)?];
        let local = inode_local(ino);
        if s.unreadable.iter().any(|(n, _)| *n == format!("{local:x}")) {
            return None;
        }
        Some(s.objects.get(&local).map(|o| o.kind))
    }

    fn store_level(&mut self, i: usize) {
        let s = &self.stores[i];
        for why in s.not_private.clone() {
            self.add(i, Problem::NotPrivate, why, Fix::MakePrivate);
        }
        for name in s.temps.clone() {
            let msg = format!(
                "{}: temporary entry left by an interrupted replace",
                s.path().join("inodes").join(&name).display()
            );
            self.add(i, Problem::Temporary, msg, Fix::RemoveTemp(name));
        }
        for (name, why) in s.strays.clone() {
            let msg = format!("{}: {why}", s.path().join("inodes").join(&name).display());
            self.add(i, Problem::Stray, msg, Fix::ObjectToLostFound(name));
        }
        for (name, why) in s.unreadable.clone() {
            let msg = format!(
                "{}: unreadable: {why}",
                super::scan::object_path(s, &name).display()
            );
            self.add(i, Problem::Unreadable, msg, Fix::None);
        }
        self.allocator(i);
        self.root(i);
    }

    /// `ino.next` must be readable and above every object's number, or a
    /// new inode would reuse one.
    fn allocator(&mut self, i: usize) {
        let s = &self.stores[i];
        let above = s.objects.keys().next_back().map_or(FIRST_INO, |m| m + 1);
        let msg = match &s.ino_next {
            Ok(next) if *next >= above => return,
            Ok(next) => format!(
                "{}: next inode number {next:#x} is not above object {:#x}",
                s.path().join("ino.next").display(),
                above - 1
            ),
            Err(why) => why.clone(),
        };
        self.add(
            i,
            Problem::Allocator,
            msg,
            Fix::SetInoNext(above.max(FIRST_INO + 1)),
        );
    }

    /// The root node's meta-file must name its root directory.
    fn root(&mut self, i: usize) {
        let s = &self.stores[i];
        let Some(meta) = &s.root_meta else { return };
        let first_is_dir = s.objects.get(&FIRST_INO).map(|o| o.kind) == Some(FileKind::Dir);
        let msg = match meta {
            Ok(m) if m.fs_id == s.sb.fs_id && inode_node(m.root) == s.node() => {
                match s.objects.get(&inode_local(m.root)) {
                    Some(o) if o.kind == FileKind::Dir => return,
                    _ => format!(
                        "{}: names root directory {:x}, which is missing",
                        s.path().join("root.meta").display(),
                        m.root
                    ),
                }
            }
            Ok(_) => format!(
                "{}: does not match the superblock",
                s.path().join("root.meta").display()
            ),
            Err(why) => why.clone(),
        };
        // mkfs makes the root directory as the first inode.
        let fix = if first_is_dir {
            Fix::WriteRootMeta(s.ino(FIRST_INO))
        } else {
            Fix::None
        };
        self.add(i, Problem::Root, msg, fix);
    }

    /// Entries the store did not write, entries whose kind disagrees with
    /// their object, and entries naming a missing inode.
    fn bad_entries(&mut self) {
        for (i, s) in self.stores.iter().enumerate() {
            for b in &s.bad_entries {
                let msg = format!(
                    "entry {:?} of directory {:x} on node {}: {}",
                    b.name,
                    b.dir,
                    s.node(),
                    b.why
                );
                self.findings.push(Finding {
                    store: i,
                    problem: Problem::BadEntry,
                    message: msg,
                    fix: Fix::EntryToLostFound(b.dir, b.name.clone()),
                });
                self.removed.insert((i, b.dir, b.name.clone()));
            }
            for e in &s.entries {
                let Some(object) = self.object(e.entry.ino) else {
                    continue; // on a store not given: the cluster's to say
                };
                let (problem, why, fix) = match object {
                    None => (
                        Problem::DanglingEntry,
                        "names a missing inode".to_string(),
                        Fix::RemoveEntry(e.dir, e.name.clone()),
                    ),
                    Some(k) if k != e.entry.kind => (
                        Problem::BadEntry,
                        format!("says {:?}, the inode is a {k:?}", e.entry.kind),
                        Fix::EntryToLostFound(e.dir, e.name.clone()),
                    ),
                    Some(_) => continue,
                };
                let msg = format!(
                    "entry {:?} of directory {:x} on node {} ({:x}): {why}",
                    e.name,
                    e.dir,
                    s.node(),
                    e.entry.ino
                );
                self.findings.push(Finding {
                    store: i,
                    problem,
                    message: msg,
                    fix,
                });
                self.removed.insert((i, e.dir, e.name.clone()));
            }
        }
    }

    /// Valid entries that stay, with their store.
    fn kept(&self) -> impl Iterator<Item = (usize, &Ent)> {
        self.stores.iter().enumerate().flat_map(move |(i, s)| {
            s.entries
                .iter()
                .filter(move |e| !self.removed.contains(&(i, e.dir, e.name.clone())))
                .map(move |e| (i, e))
        })
    }

    /// A directory has one name (the root none): an interrupted rename
    /// across nodes leaves two. The newest is the rename's; the others go
    /// (a name in a reachable directory first, when that is known).
    fn second_dir_names(&mut self, reachable: Option<&BTreeSet<InodeId>>) {
        let mut by_dir: BTreeMap<InodeId, Vec<(usize, Ent)>> = BTreeMap::new();
        for (i, e) in self.kept() {
            if e.entry.is_dir() {
                by_dir.entry(e.entry.ino).or_default().push((i, e.clone()));
            }
        }
        let roots: BTreeSet<InodeId> = self.stores.iter().filter_map(|s| s.root()).collect();
        for (ino, mut names) in by_dir {
            let keep = usize::from(!roots.contains(&ino));
            if names.len() <= keep {
                continue;
            }
            let seen = |d: &InodeId| reachable.is_none_or(|r| r.contains(d));
            names.sort_by_key(|(_, e)| std::cmp::Reverse((seen(&e.dir), e.made)));
            for (i, e) in names.into_iter().skip(keep) {
                let msg = format!(
                    "directory {ino:x} has a second name {:?} in directory {:x} on node {} (an interrupted rename)",
                    e.name,
                    e.dir,
                    self.stores[i].node()
                );
                self.removed.insert((i, e.dir, e.name.clone()));
                self.add(i, Problem::SecondName, msg, Fix::RemoveEntry(e.dir, e.name));
            }
        }
    }

    /// The directories whose entries count as names: every directory object
    /// (one store alone), or those reachable from the root (every store).
    fn counted_dirs(&self) -> Option<BTreeSet<InodeId>> {
        if !self.complete {
            return None;
        }
        let mut children: HashMap<InodeId, Vec<InodeId>> = HashMap::new();
        for (_, e) in self.kept() {
            if e.entry.is_dir() {
                children.entry(e.dir).or_default().push(e.entry.ino);
            }
        }
        let mut seen: BTreeSet<InodeId> = self.stores.iter().filter_map(|s| s.root()).collect();
        let mut todo: Vec<InodeId> = seen.iter().copied().collect();
        while let Some(d) = todo.pop() {
            for &c in children.get(&d).into_iter().flatten() {
                if seen.insert(c) {
                    todo.push(c);
                }
            }
        }
        Some(seen)
    }

    /// How many counted names every inode has.
    fn names(&self, counted: &Option<BTreeSet<InodeId>>) -> HashMap<InodeId, u64> {
        let mut names = HashMap::new();
        for (_, e) in self.kept() {
            if counted.as_ref().is_none_or(|c| c.contains(&e.dir)) {
                *names.entry(e.entry.ino).or_insert(0) += 1;
            }
        }
        names
    }

    /// Orphans and link counts of store `i`'s objects.
    fn objects(&mut self, i: usize, names: &HashMap<InodeId, u64>) {
        let s = &self.stores[i];
        let mut unnamed = 0u64;
        let mut todo = Vec::new();
        for (&local, o) in &s.objects {
            let ino = s.ino(local);
            if Some(ino) == s.root() {
                continue;
            }
            let n = names.get(&ino).copied().unwrap_or(0);
            let path = s.path().join("inodes").join(format!("{local:x}"));
            let at = |why: String| format!("{}: {:?} inode {ino:x} {why}", path.display(), o.kind);
            let to_lost = || Fix::ObjectToLostFound(OsString::from(format!("{local:x}")));
            let nlink = match (&o.count, o.kind) {
                (_, FileKind::Dir) => None,
                (Ok(c), _) => Some(Ok(c.unwrap_or(1))),
                (Err(why), _) => Some(Err(why.clone())),
            };
            if n == 0 {
                if self.complete {
                    todo.push((
                        Problem::Orphan,
                        at("is named nowhere (orphan)".into()),
                        to_lost(),
                    ));
                } else if matches!(nlink, Some(Ok(0))) {
                    let why = "lost its last name while open (krgd stopped meanwhile)";
                    todo.push((Problem::Orphan, at(why.into()), to_lost()));
                } else if let Some(Err(why)) = nlink {
                    // Its names, if any, are elsewhere: their number too.
                    let why = format!("has an unreadable link count ({why}) and no name here");
                    todo.push((Problem::LinkCount, at(why), Fix::None));
                } else {
                    unnamed += 1;
                }
                continue;
            }
            let wrong = match &nlink {
                None => continue,
                Some(Err(why)) => format!("link count unreadable ({why}), {n} names"),
                Some(Ok(l)) if n > *l => format!(
                    "link count {l}, {n} names (a second name an interrupted rename or link left)"
                ),
                Some(Ok(l)) if self.complete && n != *l => format!("link count {l}, {n} names"),
                Some(Ok(_)) => continue,
            };
            todo.push((Problem::LinkCount, at(wrong), Fix::SetNlink(local, n)));
        }
        for (p, m, f) in todo {
            if let Fix::ObjectToLostFound(name) = &f {
                if let Some(local) = name.to_str().and_then(|n| u64::from_str_radix(n, 16).ok()) {
                    self.moved.insert((i, local));
                }
            }
            self.add(i, p, m, f);
        }
        if unnamed > 0 && s.live.is_some() {
            self.notes.push(format!(
                "{}: {unnamed} inodes have no name on node {} (their names may be on other nodes: give fsck.kdfs every store of the file system, or their exports, to check them)",
                s.path().display(),
                s.node()
            ));
        }
    }

    /// A directory's `nsub` is the number of its entries that are
    /// directories (after the repairs remove entries).
    fn subdir_counts(&mut self, i: usize) {
        let s = &self.stores[i];
        let mut want: HashMap<InodeId, u64> = HashMap::new();
        for (j, e) in self.kept() {
            if j == i && e.entry.is_dir() {
                *want.entry(e.dir).or_insert(0) += 1;
            }
        }
        let mut todo = Vec::new();
        for (&local, o) in &s.objects {
            let unread = s.unreadable.iter().any(|(n, _)| *n == format!("{local:x}"));
            if o.kind != FileKind::Dir || unread || self.moved.contains(&(i, local)) {
                continue;
            }
            let w = want.get(&s.ino(local)).copied().unwrap_or(0);
            let have = match &o.count {
                Ok(c) if c.unwrap_or(0) == w => continue,
                Ok(c) => c.unwrap_or(0).to_string(),
                Err(why) => why.clone(),
            };
            let path = s.path().join("inodes").join(format!("{local:x}"));
            todo.push((
                format!(
                    "{}: subdirectory count {have}, {w} subdirectories",
                    path.display()
                ),
                Fix::SetNsub(local, w),
            ));
        }
        for (m, f) in todo {
            self.add(i, Problem::SubdirCount, m, f);
        }
    }
}
