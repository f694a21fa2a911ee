//! Link resolution: the text of `ln -s TARGET` (absolute under the mount
//! point, or relative to the link's directory) to the source it names, and
//! whether a source is computed from a given filter (the cycle check).
//! Links are never followed: a link is not a source.

use std::path::{Component, Path, PathBuf};

use super::data::{Comp, FilterComp, Linked, Parts};
use super::namespace::{CompId, DirRole, Ino, Kind, Namespace, SourceRef, ROOT};
use crate::error::{Error, Result};

/// Where the tree is mounted: absolute link targets are read relative to it.
pub(super) struct LinkBase {
    mount: PathBuf,
    /// The mount point with symlinks resolved, computed before mounting
    /// (resolving it later from a FUSE handler would call into ourselves).
    canonical: Option<PathBuf>,
}

impl LinkBase {
    pub fn new(mount: &Path) -> LinkBase {
        LinkBase {
            mount: mount.to_path_buf(),
            canonical: mount.canonicalize().ok(),
        }
    }

    /// The source a link made in `link_dir` with target `text` names.
    pub fn resolve(&self, ns: &Namespace, link_dir: Ino, text: &str) -> Result<SourceRef> {
        let bad = |why: String| Error::Invalid(format!("link target {text}: {why}"));
        let p = Path::new(text);
        let (base, rel) = if p.is_absolute() {
            let rel = self
                .inside(p)
                .ok_or_else(|| bad(format!("not inside {}", self.mount.display())))?;
            (Vec::new(), rel)
        } else {
            (components(&ns.path(link_dir)), p)
        };
        let parts = normalize(base, rel).ok_or_else(|| bad("goes above the tree's root".into()))?;
        source_at(ns, &parts, text)
    }

    /// `p` relative to the mount point, as mounted or with symlinks resolved.
    fn inside<'p>(&self, p: &'p Path) -> Option<&'p Path> {
        p.strip_prefix(&self.mount).ok().or_else(|| {
            self.canonical
                .as_deref()
                .and_then(|m| p.strip_prefix(m).ok())
        })
    }
}

/// `probes/mem_probe` → `["probes", "mem_probe"]`.
fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `base` followed by `rel`, with `..` applied; None above the root.
fn normalize(mut parts: Vec<String>, rel: &Path) -> Option<Vec<String>> {
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
fn source_at(ns: &Namespace, parts: &[String], text: &str) -> Result<SourceRef> {
    let mut ino = ROOT;
    for part in parts {
        ino = ns
            .lookup(ino, part)
            .map_err(|_| Error::Invalid(format!("link target {text} does not exist")))?;
    }
    match &ns.entry(ino)?.kind {
        Kind::Dir { role: DirRole::Source(c, i), .. } => Ok(SourceRef::Probe(*c, *i)),
        Kind::Dir { role: DirRole::Filter(c), .. } => Ok(SourceRef::Filter(*c)),
        _ => Err(Error::Invalid(format!(
            "link target {text} is not a probe source or a filter (probes/<probe>/<source> or filters/<filter>)"
        ))),
    }
}

/// Whether `src` is, or is computed from, filter `c`.
pub(super) fn feeds_from(parts: &Parts, src: SourceRef, c: CompId) -> bool {
    let mut cur = src;
    // A chain longer than the number of parts has looped: call it a cycle.
    for _ in 0..=parts.len() {
        match cur {
            SourceRef::Probe(..) => return false,
            SourceRef::Filter(f) if f == c => return true,
            SourceRef::Filter(f) => match parts.get(f) {
                Some(Comp::Filter(FilterComp {
                    input: Some(Linked { source, .. }),
                    ..
                })) => cur = *source,
                _ => return false,
            },
        }
    }
    true
}
