//! Plug-ins: external programs named in a registry file. A probe plug-in is
//! started by `mkdir probes/<name>`, a filter plug-in by `mkdir
//! filters/<name>`, a policy plug-in by `mkdir schedulers/<scheduler>/<name>`;
//! `rmdir` stops them.
//!
//! Registry (`/etc/krg/plugins.conf`), one plug-in a line, `#` comments:
//!
//! ```text
//! <name> probe /path/to/executable [arguments...]
//! <name> filter /path/to/executable [arguments...]
//! <name> policy /path/to/executable [arguments...]
//! ```
//!
//! Line protocols (UTF-8, one message a line), with their encoding: in the
//! headers of `probe.rs`, `filter.rs` and `policy.rs` ([`PluginProbe`],
//! [`PluginFilter`], [`PluginPolicy`]). The registry and the executables
//! are used only if root alone can change them ([`trust`]).
//! krgd closes the plug-in's stdin to stop it (then kills its process group
//! after 1 s). A plug-in that exits or writes nonsense is reported in its
//! `status`/`decision` file and the daemon log; krgd itself carries on.

mod filter;
mod policy;
mod probe;
mod process;
pub mod trust;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use trust::Trust;

pub use filter::{FilterInput, PluginFilter};
pub use policy::{Decision, PluginPolicy, PortInput, PortSpec};
pub use probe::PluginProbe;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    Probe,
    Filter,
    Policy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginEntry {
    pub name: String,
    pub kind: PluginKind,
    pub exe: PathBuf,
    pub args: Vec<String>,
}

/// The registry: plug-in name → entry.
pub type Registry = BTreeMap<String, PluginEntry>;

/// Read the registry, refusing one that another user could change (see
/// [`trust`]). A missing file is an empty registry; bad lines are reported
/// (and skipped) so that one typo does not hide the other plug-ins.
pub fn read_registry(path: &Path) -> Result<(Registry, Vec<String>)> {
    let mut file = match trust::open_trusted(path, Trust::Registry) {
        Ok(t) => t.file,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Default::default())
        }
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(parse_registry(&text, path))
}

pub fn parse_registry(text: &str, path: &Path) -> (Registry, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        let at = format!("{}:{}", path.display(), n + 1);
        let kind = match w.get(1) {
            Some(&"probe") => Some(PluginKind::Probe),
            Some(&"filter") => Some(PluginKind::Filter),
            Some(&"policy") => Some(PluginKind::Policy),
            _ => None,
        };
        match (w.as_slice(), kind) {
            ([name, _, exe, args @ ..], Some(kind)) if Path::new(exe).is_absolute() => {
                out.insert(
                    name.to_string(),
                    PluginEntry {
                        name: name.to_string(),
                        kind,
                        exe: PathBuf::from(exe),
                        args: args.iter().map(|a| a.to_string()).collect(),
                    },
                );
            }
            ([_, _, exe, ..], Some(_)) => {
                problems.push(format!("{at}: executable {exe} must be an absolute path"))
            }
            _ => problems.push(format!(
                "{at}: expected `<name> probe|filter|policy /path/to/executable [args]`"
            )),
        }
    }
    (out, problems)
}

#[cfg(test)]
pub(crate) fn test_script(body: &str) -> (tempfile::TempDir, PluginEntry) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("p.sh");
    std::fs::write(&exe, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    (
        dir,
        PluginEntry {
            name: "p".into(),
            kind: PluginKind::Probe,
            exe,
            args: vec![],
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_lines() {
        let text = "# comment\ndisk_probe probe /usr/lib/krg/disk_probe.sh /home\n\nx filter /bin/x\ny probe rel/path\nz\np policy /bin/p\n";
        let (map, problems) = parse_registry(text, Path::new("plugins.conf"));
        assert_eq!(map.len(), 3);
        assert_eq!(map["x"].kind, PluginKind::Filter);
        assert_eq!(map["disk_probe"].args, vec!["/home".to_string()]);
        assert_eq!(map["disk_probe"].kind, PluginKind::Probe);
        assert_eq!(map["p"].kind, PluginKind::Policy);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("plugins.conf:5"));
    }
}
