//! The tree plus the running probes: each loaded probe samples on its own
//! thread at its `probe_period` and stores its readings in the tree, so a
//! read of a `value` file only copies the last stored value and never waits
//! for a probe.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::plugin::{read_registry, PluginProbe};
use crate::probes::{self, Probe, BUILTIN_PROBES};
use crate::tree::{CompId, Ino, MkdirPlan, Removed, Tree};
use crate::value::NodeId;

#[derive(Default)]
struct Wake {
    stop: bool,
}

struct Runner {
    wake: Arc<(Mutex<Wake>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Runner {
    fn poke(&self) {
        self.wake.1.notify_all();
    }

    fn stop(mut self) {
        lock(&self.wake.0).stop = true;
        self.wake.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct Engine {
    tree: Arc<Mutex<Tree>>,
    registry: Option<PathBuf>,
    runners: Mutex<HashMap<CompId, Runner>>,
}

/// Lock a mutex, taking over the data if a thread panicked while holding it
/// (every tree operation leaves the tree consistent before it can panic).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// An empty tree for node `node`, to be mounted at `mount`; `registry`
    /// is the plug-in registry file (read at each `mkdir probes/...`).
    pub fn new(node: NodeId, mount: &Path, registry: Option<PathBuf>) -> Arc<Engine> {
        Arc::new(Engine {
            tree: Arc::new(Mutex::new(Tree::new(node, mount))),
            registry,
            runners: Mutex::new(HashMap::new()),
        })
    }

    /// The tree, locked. Keep the guard short: sampling threads and the
    /// file system wait for it.
    pub fn tree(&self) -> MutexGuard<'_, Tree> {
        lock(&self.tree)
    }

    pub fn mkdir(&self, parent: Ino, name: &str) -> Result<Ino> {
        let (registry, problems) = match &self.registry {
            Some(p) => read_registry(p),
            None => Default::default(),
        };
        for p in problems {
            tracing::warn!(problem = %p, "plug-in registry");
        }
        let plan = self.tree().mkdir(parent, name, |n| {
            BUILTIN_PROBES.contains(&n) || registry.contains_key(n)
        })?;
        let kind = match plan {
            MkdirPlan::Done(ino) => return Ok(ino),
            MkdirPlan::Probe { kind } => kind,
        };
        let node = self.tree().node_id();
        // Instantiate and take the first sample without the tree lock: a
        // plug-in may take a while to start.
        let base = crate::tree::kind_of(&kind);
        let mut probe: Box<dyn Probe> = match (probes::builtin(base), registry.get(base)) {
            (Some(p), _) => p,
            (None, Some(entry)) => Box::new(PluginProbe::start(entry, node)?),
            (None, None) => return Err(Error::NotFound(format!("no probe named {base}"))),
        };
        let first = probe.sample()?;
        let period = probe.default_period();
        let (ino, c) = self
            .tree()
            .add_probe(parent, &kind, probe.sources(), period, first)?;
        let runner = self.spawn_runner(c, &kind, probe)?;
        lock(&self.runners).insert(c, runner);
        tracing::info!(probe = %kind, period_ms = period.as_millis() as u64, "probe loaded");
        Ok(ino)
    }

    fn spawn_runner(&self, c: CompId, kind: &str, probe: Box<dyn Probe>) -> Result<Runner> {
        let wake: Arc<(Mutex<Wake>, Condvar)> = Arc::default();
        let (tree, w) = (self.tree.clone(), wake.clone());
        let name = kind.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("probe-{kind}"))
            .spawn(move || run_probe(tree, c, &name, probe, w))
            .map_err(|e| {
                // The probe is in the tree but cannot sample: take it out again.
                Error::Io(format!("cannot start the sampling thread of {kind}: {e}"))
            });
        match thread {
            Ok(t) => Ok(Runner {
                wake,
                thread: Some(t),
            }),
            Err(e) => {
                let mut tree = self.tree();
                if let Ok(probes) = tree.lookup(crate::tree::ROOT, "probes") {
                    let _ = tree.rmdir(probes, kind);
                }
                Err(e)
            }
        }
    }

    pub fn rmdir(&self, parent: Ino, name: &str) -> Result<()> {
        let removed = self.tree().rmdir(parent, name)?;
        if let Removed::Probe(c) = removed {
            let runner = lock(&self.runners).remove(&c);
            if let Some(r) = runner {
                r.stop();
            }
            tracing::info!(probe = %name, "probe unloaded");
        }
        Ok(())
    }

    pub fn write(&self, ino: Ino, text: &str) -> Result<()> {
        if let Some(c) = self.tree().write(ino, text)? {
            if let Some(r) = lock(&self.runners).get(&c) {
                r.poke();
            }
        }
        Ok(())
    }

    pub fn symlink(&self, parent: Ino, name: &str, target: &str) -> Result<Ino> {
        self.tree().symlink(parent, name, target)
    }

    pub fn unlink(&self, parent: Ino, name: &str) -> Result<()> {
        self.tree().unlink(parent, name)
    }

    /// Stop every probe (plug-ins are terminated).
    pub fn shutdown(&self) {
        let runners: Vec<Runner> = lock(&self.runners).drain().map(|(_, r)| r).collect();
        for r in runners {
            r.stop();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The sampling loop of one probe: sleep until the next period (woken early
/// when `probe_period` changes or the probe is removed), sample without the
/// tree lock, store.
fn run_probe(
    tree: Arc<Mutex<Tree>>,
    c: CompId,
    name: &str,
    mut probe: Box<dyn Probe>,
    wake: Arc<(Mutex<Wake>, Condvar)>,
) {
    let mut last = Instant::now();
    let mut failing = false;
    loop {
        let Some(period) = lock(&tree).probe_period(c) else {
            return;
        };
        let next = last + period;
        let now = Instant::now();
        if now < next {
            let g = lock(&wake.0);
            if g.stop {
                return;
            }
            let (g, _) = wake
                .1
                .wait_timeout(g, next - now)
                .unwrap_or_else(|p| p.into_inner());
            if g.stop {
                return;
            }
            continue; // re-read the period: it may have changed
        }
        // Keep a steady rhythm unless we fell more than a period behind.
        last = if now - next < period { next } else { now };
        match probe.sample() {
            Ok(readings) => {
                let mut t = lock(&tree);
                t.store_sample(c, readings);
                if failing {
                    t.set_status(c, "running");
                    failing = false;
                }
            }
            Err(e) => {
                if let Some(why) = probe.failure() {
                    tracing::error!(probe = %name, reason = %why, "plug-in probe stopped; rmdir and mkdir it to restart");
                    lock(&tree).set_status(c, &format!("failed: {why}"));
                    return;
                }
                tracing::warn!(probe = %name, error = %e, "probe sample failed; keeping the last value");
                lock(&tree).set_status(c, &format!("error: {e}"));
                failing = true;
            }
        }
    }
}
