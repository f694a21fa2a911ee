//! Plug-in probes: external programs named in a registry file, started by
//! `mkdir probes/<name>` and stopped by `rmdir`.
//!
//! Registry (`/etc/krg/plugins.conf`), one plug-in a line, `#` comments:
//!
//! ```text
//! <name> probe /path/to/executable [arguments...]
//! ```
//!
//! Line protocol (UTF-8, one message a line):
//!
//! ```text
//! plug-in → krgd at start:   source <name> <unit>      (one or more; unit: bytes load percent count flag text)
//!                            period <ms>               (optional default sampling period)
//!                            ready
//! krgd → plug-in:            sample
//! plug-in → krgd:            <source> <value>          (one per declared source; text values on one line)
//!                            end
//! ```
//!
//! krgd closes the plug-in's stdin to stop it (then kills it after 1 s).
//! A plug-in that exits or writes nonsense is reported in the probe's
//! `status` file and the daemon log; krgd itself carries on.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::probes::{Probe, SourceSpec};
use crate::value::{Reading, Unit};

/// How long a plug-in may take to declare itself.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a plug-in may take to answer one `sample`.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginEntry {
    pub name: String,
    pub exe: PathBuf,
    pub args: Vec<String>,
}

/// Read the registry. A missing file is an empty registry; bad lines are
/// reported (and skipped) so that one typo does not hide the other plug-ins.
pub fn read_registry(path: &Path) -> (BTreeMap<String, PluginEntry>, Vec<String>) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (BTreeMap::new(), Vec::new()),
        Err(e) => return (BTreeMap::new(), vec![format!("{}: {e}", path.display())]),
    };
    parse_registry(&text, path)
}

pub fn parse_registry(text: &str, path: &Path) -> (BTreeMap<String, PluginEntry>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        let at = format!("{}:{}", path.display(), n + 1);
        match w.as_slice() {
            [name, "probe", exe, args @ ..] if Path::new(exe).is_absolute() => {
                out.insert(
                    name.to_string(),
                    PluginEntry {
                        name: name.to_string(),
                        exe: PathBuf::from(exe),
                        args: args.iter().map(|a| a.to_string()).collect(),
                    },
                );
            }
            [_, "probe", exe, ..] => {
                problems.push(format!("{at}: executable {exe} must be an absolute path"))
            }
            [_, kind @ ("filter" | "policy"), ..] => problems.push(format!(
                "{at}: {kind} plug-ins are not supported (only probes); line ignored"
            )),
            _ => problems.push(format!(
                "{at}: expected `<name> probe /path/to/executable [args]`"
            )),
        }
    }
    (out, problems)
}

/// A running plug-in probe.
pub struct PluginProbe {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    sources: Vec<SourceSpec>,
    period: Duration,
    dead: Option<String>,
}

impl PluginProbe {
    /// Start the plug-in and read its declaration.
    pub fn start(entry: &PluginEntry, node: u32) -> Result<PluginProbe> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(&entry.exe)
            .args(&entry.args)
            // Its own process group, so that stopping it also stops whatever
            // it started (a shell plug-in's `sleep`, `df`, ...).
            .process_group(0)
            .env("KRG_NODE_ID", node.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                Error::Io(format!(
                    "plug-in {}: cannot start {}: {e}",
                    entry.name,
                    entry.exe.display()
                ))
            })?;
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            // A reader thread turns the pipe into a channel so every read can
            // have a deadline; it ends when the plug-in closes stdout.
            std::thread::Builder::new()
                .name(format!("plugin-{}", entry.name))
                .spawn(move || {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| Error::Io(format!("plug-in {}: {e}", entry.name)))?;
        }
        let stdin = child.stdin.take();
        let mut p = PluginProbe {
            name: entry.name.clone(),
            child,
            stdin,
            lines,
            sources: Vec::new(),
            period: Duration::from_millis(1000),
            dead: None,
        };
        if let Err(e) = p.read_declaration() {
            p.stop();
            return Err(e);
        }
        Ok(p)
    }

    fn read_declaration(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let line = self.next_line(deadline)?;
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["ready"] if !self.sources.is_empty() => return Ok(()),
                ["source", name, unit] => {
                    let unit = Unit::parse(unit)
                        .ok_or_else(|| self.bad(&format!("unknown unit {unit}")))?;
                    let reserved = matches!(*name, "probe_period" | "status");
                    let valid =
                        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !reserved;
                    if !valid || self.sources.iter().any(|s| s.name == *name) {
                        return Err(self.bad(&format!("bad or repeated source name {name}")));
                    }
                    self.sources.push(SourceSpec::new(name, unit));
                }
                ["period", ms] => {
                    let ms: u64 = ms
                        .parse()
                        .ok()
                        .filter(|ms| (10..=3_600_000).contains(ms))
                        .ok_or_else(|| self.bad(&line))?;
                    self.period = Duration::from_millis(ms);
                }
                _ => return Err(self.bad(&format!("unexpected line {line:?} in its declaration"))),
            }
        }
    }

    fn bad(&self, what: &str) -> Error {
        Error::Io(format!("plug-in {}: {what}", self.name))
    }

    fn next_line(&mut self, deadline: Instant) -> Result<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(l) => Ok(l),
            Err(RecvTimeoutError::Timeout) => Err(self.bad("did not answer in time")),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.try_wait().ok().flatten().map(|s| s.to_string());
                let why = format!(
                    "exited ({})",
                    status.unwrap_or_else(|| "closed its output".into())
                );
                self.dead = Some(why.clone());
                Err(self.bad(&why))
            }
        }
    }

    fn stop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: kill(2) on the process group we created for this child
        // (its pid is the group id); the child is not reaped yet, so the id
        // cannot have been reused.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Probe for PluginProbe {
    fn sources(&self) -> Vec<SourceSpec> {
        self.sources.clone()
    }

    fn default_period(&self) -> Duration {
        self.period
    }

    fn sample(&mut self) -> Result<Vec<Reading>> {
        if let Some(why) = &self.dead {
            return Err(self.bad(why));
        }
        // Drop what a previous, timed-out answer left behind so that this
        // answer is not read one sample late.
        while self.lines.try_recv().is_ok() {}
        let sent = match self.stdin.as_mut() {
            Some(s) => s.write_all(b"sample\n").and_then(|_| s.flush()),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        if let Err(e) = sent {
            // Collect the exit status if it is gone.
            let _ = self.next_line(Instant::now());
            let why = self
                .dead
                .clone()
                .unwrap_or_else(|| format!("stdin closed: {e}"));
            self.dead = Some(why.clone());
            return Err(self.bad(&why));
        }
        let deadline = Instant::now() + SAMPLE_TIMEOUT;
        let mut got: Vec<Option<Reading>> = vec![None; self.sources.len()];
        loop {
            let line = self.next_line(deadline)?;
            if line.trim() == "end" {
                break;
            }
            let (name, value) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            let Some(i) = self.sources.iter().position(|s| s.name == name) else {
                return Err(self.bad(&format!("answered unknown source {name:?}")));
            };
            got[i] = Some(
                Reading::parse(self.sources[i].unit, value)
                    .ok_or_else(|| self.bad(&format!("bad value {value:?} for {name}")))?,
            );
        }
        got.into_iter()
            .zip(&self.sources)
            .map(|(r, s)| r.ok_or_else(|| self.bad(&format!("gave no value for {}", s.name))))
            .collect()
    }

    fn failure(&self) -> Option<String> {
        self.dead.clone()
    }
}

impl Drop for PluginProbe {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_lines() {
        let text = "# comment\ndisk_probe probe /usr/lib/krg/disk_probe.sh /home\n\nx filter /bin/x\ny probe rel/path\nz\n";
        let (map, problems) = parse_registry(text, Path::new("plugins.conf"));
        assert_eq!(map.len(), 1);
        assert_eq!(map["disk_probe"].args, vec!["/home".to_string()]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("plugins.conf:4"));
    }

    fn script(body: &str) -> (tempfile::TempDir, PluginEntry) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("p.sh");
        std::fs::write(&exe, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        (
            dir,
            PluginEntry {
                name: "p".into(),
                exe,
                args: vec![],
            },
        )
    }

    #[test]
    fn talks_the_protocol_and_reports_a_crash() {
        let (_d, e) = script(
            "echo 'source a count'\necho 'source t text'\necho ready\n\
             n=0\nwhile read c; do n=$((n+1)); [ $n = 3 ] && exit 3; echo \"a $n\"; echo 't hello world'; echo end; done\n",
        );
        let mut p = PluginProbe::start(&e, 1).unwrap();
        assert_eq!(p.sources().len(), 2);
        assert_eq!(
            p.sample().unwrap(),
            vec![Reading::Num(1.0), Reading::Text("hello world".into())]
        );
        assert_eq!(p.sample().unwrap()[0], Reading::Num(2.0));
        let err = p.sample().unwrap_err().to_string();
        assert!(err.contains("exited"), "{err}");
        assert!(p.failure().is_some());
    }

    #[test]
    fn refuses_bad_declarations() {
        let (_d, e) = script("echo 'source a furlongs'\necho ready\n");
        let err = PluginProbe::start(&e, 1)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown unit"), "{err}");
        let (_d, e) = script("exit 1\n");
        assert!(PluginProbe::start(&e, 1).is_err());
        let missing = PluginEntry {
            name: "m".into(),
            exe: "/nonexistent/x".into(),
            args: vec![],
        };
        assert!(PluginProbe::start(&missing, 1).is_err());
    }
}
