//! The tree plus the running parts: each loaded probe samples on its own
//! thread at its `probe_period` and stores its readings in the tree, so a
//! read of a `value` file only copies the last stored value and never waits
//! for a probe. Each policy plug-in likewise decides on its own thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::filters::Filter;
use crate::plugin::{
    read_registry, Decision, PluginEntry, PluginFilter, PluginKind, PluginPolicy, PluginProbe,
    Registry,
};
use crate::probes::{self, Probe, BUILTIN_PROBES};
use crate::tree::{kind_of, CompId, FilterWork, Ino, MkdirPlan, Removed, Tree};
use crate::value::NodeId;

/// How often a policy plug-in is asked for a decision and a filter plug-in
/// for its output.
pub const POLICY_PERIOD: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Wake {
    stop: bool,
}

type WakeHandle = Arc<(Mutex<Wake>, Condvar)>;

struct Runner {
    wake: WakeHandle,
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

/// Sleep until `deadline`, or until poked or stopped. Returns false when
/// the runner must stop.
fn nap(wake: &WakeHandle, deadline: Instant) -> bool {
    let g = lock(&wake.0);
    if g.stop {
        return false;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let (g, _) = wake
        .1
        .wait_timeout(g, left)
        .unwrap_or_else(|p| p.into_inner());
    !g.stop
}

/// Makes a fresh instance of a probe the embedder provides.
pub type ProbeFactory = Arc<dyn Fn() -> Box<dyn Probe> + Send + Sync>;

pub struct Engine {
    tree: Arc<Mutex<Tree>>,
    registry: Option<PathBuf>,
    runners: Mutex<HashMap<CompId, Runner>>,
    /// Built-in probes the embedder adds (krgd's `krg_load_probe`, which
    /// knows which processes are this node's).
    host_probes: Mutex<HashMap<String, ProbeFactory>>,
}

/// Lock a mutex, taking over the data if a thread panicked while holding it
/// (every tree operation leaves the tree consistent before it can panic).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// An empty tree for node `node`, to be mounted at `mount`; `registry`
    /// is the plug-in registry file (read at each `mkdir`).
    pub fn new(node: NodeId, mount: &Path, registry: Option<PathBuf>) -> Arc<Engine> {
        Arc::new(Engine {
            tree: Arc::new(Mutex::new(Tree::new(node, mount))),
            registry,
            runners: Mutex::new(HashMap::new()),
            host_probes: Mutex::new(HashMap::new()),
        })
    }

    /// Make `mkdir probes/<name>` load a probe made by `factory`, like a
    /// built-in one (a built-in name is not replaced).
    pub fn add_probe_kind(&self, name: &str, factory: ProbeFactory) {
        if !BUILTIN_PROBES.contains(&name) {
            lock(&self.host_probes).insert(name.to_string(), factory);
        }
    }

    fn host_probe(&self, name: &str) -> Option<ProbeFactory> {
        lock(&self.host_probes).get(name).cloned()
    }

    /// The tree, locked. Keep the guard short: sampling threads and the
    /// file system wait for it.
    pub fn tree(&self) -> MutexGuard<'_, Tree> {
        lock(&self.tree)
    }

    /// The registry as it is now. A registry that cannot be read or
    /// trusted is an error, logged here: it refuses every plug-in.
    fn registry(&self) -> Result<Registry> {
        let Some(path) = &self.registry else {
            return Ok(Registry::default());
        };
        let (registry, problems) = read_registry(path).inspect_err(|e| {
            tracing::error!(path = %path.display(), error = %e, "plug-in registry refused");
        })?;
        for p in problems {
            tracing::warn!(problem = %p, "plug-in registry");
        }
        Ok(registry)
    }

    pub fn mkdir(&self, parent: Ino, name: &str) -> Result<Ino> {
        let registry = self.registry();
        // A refused registry might list any name: the plug-in's load then
        // answers the registry's error (EACCES), a built-in part still loads.
        let listed = |n: &str, kind| match &registry {
            Ok(r) => r.get(n).is_some_and(|e| e.kind == kind),
            Err(_) => true,
        };
        let plan = self.tree().mkdir_with_plugins(
            parent,
            name,
            |n| {
                BUILTIN_PROBES.contains(&n)
                    || self.host_probe(n).is_some()
                    || listed(n, PluginKind::Probe)
            },
            |n, kind| listed(n, kind),
        )?;
        match plan {
            MkdirPlan::Done(ino) => Ok(ino),
            MkdirPlan::Probe { name } => self.load_probe(parent, &name, registry),
            MkdirPlan::Policy { name } => self.load_policy(parent, &name, registry),
            MkdirPlan::Filter { name } => self.load_filter(parent, &name, registry),
        }
    }

    /// Instantiate a probe and take its first sample without the tree lock
    /// (a plug-in may take a while to start), then add it and start its thread.
    fn load_probe(&self, parent: Ino, name: &str, registry: Result<Registry>) -> Result<Ino> {
        let node = self.tree().node_id();
        let base = kind_of(name);
        let host = self.host_probe(base);
        let mut probe: Box<dyn Probe> = match (probes::builtin(base), host) {
            (Some(p), _) => p,
            (None, Some(make)) => make(),
            (None, None) => {
                let entry = plugin(registry?, base, "probe")?;
                Box::new(PluginProbe::start(&entry, node)?)
            }
        };
        let first = probe.sample()?;
        let period = probe.default_period();
        let (ino, c) = self
            .tree()
            .add_probe(parent, name, probe.sources(), period, first)?;
        let runner = self.spawn(parent, name, c, move |tree, wake, label| {
            run_probe(tree, c, &label, probe, wake)
        })?;
        lock(&self.runners).insert(c, runner);
        tracing::info!(probe = %name, period_ms = period.as_millis() as u64, "probe loaded");
        Ok(ino)
    }

    fn load_policy(&self, parent: Ino, name: &str, registry: Result<Registry>) -> Result<Ino> {
        let node = self.tree().node_id();
        let entry = plugin(registry?, kind_of(name), "policy plug-in")?;
        let policy = PluginPolicy::start(&entry, node)?;
        let (ino, c) =
            self.tree()
                .add_external_policy(parent, name, policy.ports(), policy.moves())?;
        let runner = self.spawn(parent, name, c, move |tree, wake, label| {
            run_policy(tree, c, &label, policy, wake)
        })?;
        lock(&self.runners).insert(c, runner);
        tracing::info!(policy = %name, "policy plug-in loaded");
        Ok(ino)
    }

    fn load_filter(&self, parent: Ino, name: &str, registry: Result<Registry>) -> Result<Ino> {
        let node = self.tree().node_id();
        let entry = plugin(registry?, kind_of(name), "filter plug-in")?;
        let filter = PluginFilter::start(&entry, node)?;
        let (ino, c) =
            self.tree()
                .add_external_filter(parent, name, Filter::external(filter.spec()))?;
        let runner = self.spawn(parent, name, c, move |tree, wake, label| {
            run_filter(tree, c, &label, filter, wake)
        })?;
        lock(&self.runners).insert(c, runner);
        tracing::info!(filter = %name, "filter plug-in loaded");
        Ok(ino)
    }

    /// Start the thread of a part just added as `parent/name`; if no thread
    /// can be started, the part is taken out of the tree again.
    fn spawn(
        &self,
        parent: Ino,
        name: &str,
        c: CompId,
        body: impl FnOnce(Arc<Mutex<Tree>>, WakeHandle, String) + Send + 'static,
    ) -> Result<Runner> {
        let wake: WakeHandle = Arc::default();
        let (tree, w, label) = (self.tree.clone(), wake.clone(), name.to_string());
        match std::thread::Builder::new()
            .name(format!("part-{name}"))
            .spawn(move || body(tree, w, label))
        {
            Ok(t) => Ok(Runner {
                wake,
                thread: Some(t),
            }),
            Err(e) => {
                let _ = self.tree().rmdir(parent, name);
                Err(Error::io(
                    format!("cannot start the thread of {name} ({c})"),
                    e,
                ))
            }
        }
    }

    pub fn rmdir(&self, parent: Ino, name: &str) -> Result<()> {
        let removed = self.tree().rmdir(parent, name)?;
        if let Removed::Probe(c) | Removed::Policy(c) | Removed::Filter(c) = removed {
            let runner = lock(&self.runners).remove(&c);
            if let Some(r) = runner {
                r.stop();
            }
            tracing::info!(part = %name, "unloaded");
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

    /// Stop every probe and policy thread (plug-ins are terminated).
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

/// The registry's entry for `kind`; `what` names it in the error.
fn plugin(mut registry: Registry, kind: &str, what: &str) -> Result<PluginEntry> {
    registry
        .remove(kind)
        .ok_or_else(|| Error::NotFound(format!("no {what} named {kind}")))
}

/// The sampling loop of one probe: sleep until the next period (woken early
/// when `probe_period` changes or the probe is removed), sample without the
/// tree lock, store.
fn run_probe(
    tree: Arc<Mutex<Tree>>,
    c: CompId,
    name: &str,
    mut probe: Box<dyn Probe>,
    wake: WakeHandle,
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
            if !nap(&wake, next) {
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

/// The decision loop of a policy plug-in: every [`POLICY_PERIOD`], hand it
/// the current inputs (read under the lock, sent without it) and store its
/// decision.
fn run_policy(
    tree: Arc<Mutex<Tree>>,
    c: CompId,
    name: &str,
    mut policy: PluginPolicy,
    wake: WakeHandle,
) {
    loop {
        let (inputs, procs) = {
            let t = lock(&tree);
            let Some(inputs) = t.policy_inputs(c) else {
                return;
            };
            (inputs, t.plugin_processes(c))
        };
        let decision = match policy.decide(&inputs, &procs) {
            Ok(d) => d,
            Err(e) => {
                if let Some(why) = policy.failure() {
                    tracing::error!(policy = %name, reason = %why, "policy plug-in stopped; rmdir and mkdir it to restart");
                    let why = format!("failed: {why}");
                    lock(&tree).set_decision(c, Decision::Nowhere { why });
                    return;
                }
                tracing::warn!(policy = %name, error = %e, "policy plug-in gave no decision");
                if policy.moves() {
                    // its `decisions` says so, as a refused move would
                    lock(&tree).note_bad_answer(c, e.to_string());
                }
                Decision::Nowhere { why: e.to_string() }
            }
        };
        lock(&tree).set_decision(c, decision);
        if !nap(&wake, Instant::now() + POLICY_PERIOD) {
            return;
        }
    }
}

/// The loop of a filter plug-in: every [`POLICY_PERIOD`], while its input
/// is linked, hand it the input values and store its output.
fn run_filter(
    tree: Arc<Mutex<Tree>>,
    c: CompId,
    name: &str,
    mut filter: PluginFilter,
    wake: WakeHandle,
) {
    loop {
        let work = lock(&tree).filter_work(c);
        let output = match work {
            FilterWork::Gone => return,
            FilterWork::Unlinked => None,
            FilterWork::Input(input) => match filter.run(&input) {
                Ok(out) => Some(out),
                Err(e) => {
                    if let Some(why) = filter.failure() {
                        tracing::error!(filter = %name, reason = %why, "filter plug-in stopped; rmdir and mkdir it to restart");
                        lock(&tree).set_filter_output(c, None);
                        return;
                    }
                    tracing::warn!(filter = %name, error = %e, "filter plug-in gave no output");
                    None
                }
            },
        };
        lock(&tree).set_filter_output(c, output);
        if !nap(&wake, Instant::now() + POLICY_PERIOD) {
            return;
        }
    }
}
