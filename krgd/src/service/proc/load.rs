//! This node's load, measured on what this krgd runs, not on the kernel's
//! /proc/loadavg: all nodes of a local cluster share one kernel, so its
//! load average is the same on every node.
//!
//! **This node's processes** are, on a shared kernel or not:
//! - the CAN_MIGRATE processes of this krgd's tracker: those flagged
//!   through this node's socket (`krgcapset`), the processes they forked
//!   afterwards, and the processes that migrated in. Each must still be
//!   the process that was flagged: one that started after the flag was set
//!   or inherited holds a reused PID and is not counted (a process that
//!   migrated away keeps its PID on the target, but is a new process there:
//!   the origin stops counting it);
//! - the processes of this node's `krg run` jobs (each job's init and its
//!   descendants), which are not CAN_MIGRATE (they cannot move yet).
//!
//! [`Meter`] measures them between two samples: `run` is the time their
//! threads ran or waited for a CPU (`/proc/PID/task/*/schedstat`) over the
//! wall time — threads' worth of CPU demand, like a load average but this
//! node's only, and the same however many other processes share the
//! cores — and `cpu` the CPU time they used (utime + stime) over the wall
//! time, cores' worth. A process seen for the first time counts from its
//! start if it started after the previous sample, else from this sample.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use plugpropol::probes::{Probe, SourceSpec};
use plugpropol::{Reading, Unit};

use super::migrate::check;
use super::state::ProcState;

/// One of this node's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owned {
    pub pid: i32,
    /// CAN_MIGRATE (a candidate for balancing).
    pub migratable: bool,
}

/// This node's processes (see the module's header), by PID.
pub fn own_processes(st: &ProcState) -> Vec<Owned> {
    let mut out: HashMap<i32, bool> = HashMap::new();
    for pid in st.caps.migratable() {
        out.insert(pid, true);
    }
    for pid in st.migration.adopted_pids() {
        out.insert(pid, true);
    }
    for job in st.table.jobs() {
        for pid in check::tree(job.init_pid) {
            out.entry(pid).or_insert(false);
        }
    }
    let mut v: Vec<Owned> = out
        .into_iter()
        .map(|(pid, migratable)| Owned { pid, migratable })
        .collect();
    v.sort_by_key(|o| o.pid);
    v
}

/// A process's counters at one sample.
#[derive(Debug, Clone, Copy)]
struct Mark {
    start: u64,
    cpu_ticks: u64,
    sched_ns: u64,
}

/// What a process used between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcLoad {
    pub pid: i32,
    pub migratable: bool,
    /// Threads' worth of CPU demand (running or waiting for a CPU).
    pub run: f64,
    /// Cores' worth of CPU time used.
    pub cpu: f64,
}

/// One sample of this node's load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub procs: Vec<ProcLoad>,
    /// Whether a previous sample existed (else every figure is 0).
    pub fresh: bool,
}

impl Sample {
    pub fn run_load(&self) -> f64 {
        // a fold from +0: the sum of nothing is -0.0 and prints as "-0.00"
        self.procs.iter().fold(0.0, |a, p| a + p.run)
    }
    pub fn cpu_load(&self) -> f64 {
        self.procs.iter().fold(0.0, |a, p| a + p.cpu)
    }
    pub fn migratable(&self) -> usize {
        self.procs.iter().filter(|p| p.migratable).count()
    }
}

/// Measures processes between samples.
#[derive(Default)]
pub struct Meter {
    last: HashMap<i32, Mark>,
    /// When the previous sample was taken: monotonic, and in clock ticks
    /// after boot (the unit of a process's start time).
    last_at: Option<(Instant, u64)>,
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// Clock ticks since boot (CLOCK_BOOTTIME, like /proc/PID/stat start times).
fn boot_ticks() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let hz = ticks_per_second();
    ts.tv_sec as u64 * hz + ts.tv_nsec as u64 * hz / 1_000_000_000
}

/// Start time, utime + stime, and run + wait time of all threads.
fn read_mark(pid: i32) -> Option<Mark> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let stat = checkpoint::procfs::parse_stat(&text).ok()?;
    let mut sched_ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            let mut f = s.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
            sched_ns += f.next().unwrap_or(0) + f.next().unwrap_or(0);
        }
    }
    Some(Mark {
        start: stat.field(22),
        cpu_ticks: stat.field(14) + stat.field(15),
        sched_ns,
    })
}

impl Meter {
    /// Measure `procs` since the previous sample.
    pub fn sample(&mut self, procs: &[Owned]) -> Sample {
        let (now, now_ticks) = (Instant::now(), boot_ticks());
        let hz = ticks_per_second() as f64;
        let mut marks = HashMap::new();
        let mut out = Sample {
            procs: Vec::new(),
            fresh: self.last_at.is_some(),
        };
        for o in procs {
            let Some(m) = read_mark(o.pid) else { continue };
            marks.insert(o.pid, m);
            let Some((then, then_ticks)) = self.last_at else {
                continue;
            };
            let base = match self.last.get(&o.pid) {
                Some(b) if b.start == m.start => *b,
                // new since the previous sample: counted from its start
                _ if m.start >= then_ticks => Mark {
                    start: m.start,
                    cpu_ticks: 0,
                    sched_ns: 0,
                },
                // older, but not ours before: counted from now on
                _ => continue,
            };
            let secs = now.duration_since(then).as_secs_f64().max(1e-3);
            out.procs.push(ProcLoad {
                pid: o.pid,
                migratable: o.migratable,
                run: m.sched_ns.saturating_sub(base.sched_ns) as f64 / 1e9 / secs,
                cpu: m.cpu_ticks.saturating_sub(base.cpu_ticks) as f64 / hz / secs,
            });
        }
        self.last = marks;
        self.last_at = Some((now, now_ticks));
        out
    }
}

/// `krg_load_probe`: this node's load (see the module's header).
pub struct LoadProbe {
    st: Weak<ProcState>,
    meter: Meter,
}

impl LoadProbe {
    pub fn new(st: &Arc<ProcState>) -> Self {
        LoadProbe {
            st: Arc::downgrade(st),
            meter: Meter::default(),
        }
    }
}

/// The name `mkdir probes/…` loads it by.
pub const PROBE_NAME: &str = "krg_load_probe";

impl Probe for LoadProbe {
    fn sources(&self) -> Vec<SourceSpec> {
        vec![
            SourceSpec::new("run_load", Unit::Load),
            SourceSpec::new("cpu_load", Unit::Load),
            SourceSpec::new("migratable", Unit::Count),
            SourceSpec::new("processes", Unit::Count),
        ]
    }

    fn sample(&mut self) -> plugpropol::Result<Vec<Reading>> {
        let Some(st) = self.st.upgrade() else {
            return Err(plugpropol::Error::Proc("krgd is stopping".into()));
        };
        let procs = own_processes(&st);
        let s = self.meter.sample(&procs);
        let migratable = procs.iter().filter(|p| p.migratable).count();
        Ok(vec![
            Reading::Num(s.run_load()),
            Reading::Num(s.cpu_load()),
            Reading::Num(migratable as f64),
            Reading::Num(procs.len() as f64),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_counts_about_one_and_an_idle_one_nothing() {
        let mut hog = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let mut idle = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let procs = [
            Owned {
                pid: hog.id() as i32,
                migratable: true,
            },
            Owned {
                pid: idle.id() as i32,
                migratable: false,
            },
        ];
        let mut m = Meter::default();
        assert!(!m.sample(&procs).fresh);
        std::thread::sleep(std::time::Duration::from_millis(600));
        let s = m.sample(&procs);
        hog.kill().unwrap();
        idle.kill().unwrap();
        let _ = (hog.wait(), idle.wait());
        assert!(s.fresh);
        let by = |pid: u32| s.procs.iter().find(|p| p.pid == pid as i32).unwrap();
        // running or waiting for a CPU the whole time, however loaded the host
        let h = by(hog.id());
        assert!(h.run > 0.8 && h.run < 1.2, "{h:?}");
        assert!(h.cpu > 0.0 && h.cpu <= h.run + 0.05, "{h:?}");
        assert!(by(idle.id()).run < 0.05);
        assert_eq!(s.migratable(), 1);
    }
}
