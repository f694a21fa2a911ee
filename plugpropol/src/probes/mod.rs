//! Probes: things that sample a node's state. Built-ins read the kernel's
//! /proc files; plug-ins are external programs (see [`crate::plugin`]).
//!
//! A probe declares its sources (named values with a unit) once, then each
//! `sample` returns one reading per source, in the declared order.

mod cpu;
mod load;
mod mem;
mod process;

use std::time::Duration;

use crate::error::{Error, Result};
use crate::value::{Reading, Unit};

pub use cpu::CpuProbe;
pub use load::LoadProbe;
pub use mem::MemProbe;
pub use process::ProcessProbe;

/// A named output of a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    pub name: String,
    pub unit: Unit,
}

impl SourceSpec {
    pub fn new(name: &str, unit: Unit) -> Self {
        Self {
            name: name.to_string(),
            unit,
        }
    }
}

pub trait Probe: Send {
    fn sources(&self) -> Vec<SourceSpec>;
    /// One reading per source, in the order of [`Probe::sources`].
    fn sample(&mut self) -> Result<Vec<Reading>>;
    fn default_period(&self) -> Duration {
        Duration::from_millis(1000)
    }
    /// Why the probe can no longer sample (a plug-in that exited); its
    /// sampling task then stops.
    fn failure(&self) -> Option<String> {
        None
    }
}

/// Bounds of a probe's period (`probe_period`, a plug-in's `period`), in
/// milliseconds.
pub const MIN_PERIOD_MS: u64 = 10;
pub const MAX_PERIOD_MS: u64 = 3_600_000;

/// Names `mkdir probes/<name>` accepts without a plug-in registry entry.
pub const BUILTIN_PROBES: &[&str] = &["mem_probe", "load_probe", "cpu_probe", "process_probe"];

/// A fresh instance of the built-in probe `name`.
pub fn builtin(name: &str) -> Option<Box<dyn Probe>> {
    Some(match name {
        "mem_probe" => Box::new(MemProbe),
        "load_probe" => Box::new(LoadProbe),
        "cpu_probe" => Box::new(CpuProbe::default()),
        "process_probe" => Box::new(ProcessProbe::default()),
        _ => return None,
    })
}

pub(crate) fn read_proc(path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {path}"), e))
}
