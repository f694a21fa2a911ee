//! Probe plug-ins.
//!
//! ```text
//! plug-in → krgd at start:   source <name> <unit>      (one or more; unit: bytes load percent count flag text)
//!                            period <ms>               (optional default sampling period)
//!                            ready
//! krgd → plug-in:            sample
//! plug-in → krgd:            <source> <value>          (one per declared source; text values on one line)
//!                            end
//! ```

use std::time::{Duration, Instant};

use super::process::PluginProcess;
use super::PluginEntry;
use crate::error::Result;
use crate::probes::{Probe, SourceSpec, MAX_PERIOD_MS, MIN_PERIOD_MS};
use crate::value::{Reading, Unit};

/// How long a plug-in may take to declare itself.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a plug-in may take to answer one request.
pub(super) const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// A running plug-in probe.
pub struct PluginProbe {
    proc: PluginProcess,
    sources: Vec<SourceSpec>,
    period: Duration,
}

impl PluginProbe {
    /// Start the plug-in and read its declaration.
    pub fn start(entry: &PluginEntry, node: u32) -> Result<PluginProbe> {
        let proc = PluginProcess::start(entry, node)?;
        let mut p = PluginProbe {
            proc,
            sources: Vec::new(),
            period: Duration::from_millis(1000),
        };
        p.read_declaration()?;
        Ok(p)
    }

    fn read_declaration(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let line = self.proc.next_line(deadline)?;
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["ready"] if !self.sources.is_empty() => return Ok(()),
                ["source", name, unit] => {
                    let unit = Unit::parse(unit)
                        .ok_or_else(|| self.proc.bad(&format!("unknown unit {unit}")))?;
                    let reserved = matches!(*name, "probe_period" | "status");
                    let valid =
                        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !reserved;
                    if !valid || self.sources.iter().any(|s| s.name == *name) {
                        return Err(self
                            .proc
                            .bad(&format!("bad or repeated source name {name}")));
                    }
                    self.sources.push(SourceSpec::new(name, unit));
                }
                ["period", ms] => {
                    let ms: u64 = ms
                        .parse()
                        .ok()
                        .filter(|ms| (MIN_PERIOD_MS..=MAX_PERIOD_MS).contains(ms))
                        .ok_or_else(|| self.proc.bad(&line))?;
                    self.period = Duration::from_millis(ms);
                }
                _ => {
                    return Err(self
                        .proc
                        .bad(&format!("unexpected line {line:?} in its declaration")))
                }
            }
        }
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
        self.proc.send("sample\n")?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut got: Vec<Option<Reading>> = vec![None; self.sources.len()];
        loop {
            let line = self.proc.next_line(deadline)?;
            if line.trim() == "end" {
                break;
            }
            let (name, value) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            let Some(i) = self.sources.iter().position(|s| s.name == name) else {
                return Err(self.proc.bad(&format!("answered unknown source {name:?}")));
            };
            let r = Reading::parse(self.sources[i].unit, value)
                .ok_or_else(|| self.proc.bad(&format!("bad value {value:?} for {name}")))?;
            got[i] = Some(r);
        }
        got.into_iter()
            .zip(&self.sources)
            .map(|(r, s)| r.ok_or_else(|| self.proc.bad(&format!("gave no value for {}", s.name))))
            .collect()
    }

    fn failure(&self) -> Option<String> {
        self.proc.dead.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::test_script;

    #[test]
    fn talks_the_protocol_and_reports_a_crash() {
        let (_d, e) = test_script(
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
        let (_d, e) = test_script("echo 'source a furlongs'\necho ready\n");
        let err = PluginProbe::start(&e, 1)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown unit"), "{err}");
        let (_d, e) = test_script("exit 1\n");
        assert!(PluginProbe::start(&e, 1).is_err());
        let mut missing = e.clone();
        missing.exe = "/nonexistent/x".into();
        assert!(PluginProbe::start(&missing, 1).is_err());
    }
}
