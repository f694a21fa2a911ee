//! One serf run: N agents on loopback, the same phases as krg's.

use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;
use krg_tests::rss_kib;
use krg_tests::serf::{serf_join, SerfAgent, SerfRpc};

use crate::report::Figures;
use crate::{median_max, until_all, REST};

pub fn run(n: u32) -> Figures {
    let mut f = Figures::default();
    if let Err(e) = run_once(n, &mut f) {
        f.error = Some(format!("{e:#}"));
    }
    f
}

/// One RPC connection per agent, reopened when it breaks.
struct Pollers(Vec<Mutex<Option<SerfRpc>>>, Vec<String>);

impl Pollers {
    fn new(rpcs: &[String]) -> Self {
        Self(
            rpcs.iter().map(|_| Mutex::new(None)).collect(),
            rpcs.to_vec(),
        )
    }

    fn members(&self, i: usize) -> Option<std::collections::BTreeMap<String, String>> {
        let mut slot = self.0[i].lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = SerfRpc::connect(&self.1[i]).ok();
        }
        let m = slot.as_mut()?.members().ok();
        if m.is_none() {
            *slot = None;
        }
        m
    }

    fn alive(&self, i: usize) -> Option<usize> {
        Some(
            self.members(i)?
                .values()
                .filter(|s| s.as_str() == "alive")
                .count(),
        )
    }
}

fn run_once(n: u32, f: &mut Figures) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("krg-bench-serf-")
        .tempdir()?;
    let mut agents: Vec<SerfAgent> = Vec::new();
    let started = Instant::now();
    for i in 1..=n {
        agents.push(SerfAgent::start(dir.path(), i)?);
    }
    println!(
        "serf: {n} agents started in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // 1. Formation: agent 1 joins every other agent in one command (the
    //    counterpart of `krgadm cluster start` on node 1 with all present).
    let others: Vec<&str> = agents[1..].iter().map(|a| a.bind.as_str()).collect();
    let t0 = Instant::now();
    serf_join(&agents[0].rpc, &others)?;
    let rpcs: Vec<String> = agents.iter().map(|a| a.rpc.clone()).collect();
    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
    let pollers = Pollers::new(&rpcs);
    f.formation = Some(until_all(&names, t0, "serf formation", |i| {
        pollers.alive(i) == Some(n as usize)
    })?);

    std::thread::sleep(REST);
    let rss: Vec<u64> = agents
        .iter()
        .filter_map(|a| a.pid().and_then(rss_kib))
        .collect();
    (f.rss_median_kib, f.rss_max_kib) = median_max(rss);

    // 2. Join of one more agent, already running.
    agents.push(SerfAgent::start(dir.path(), n + 1)?);
    let rpcs: Vec<String> = agents.iter().map(|a| a.rpc.clone()).collect();
    let pollers = Pollers::new(&rpcs);
    let t0 = Instant::now();
    serf_join(&agents[n as usize].rpc, &[agents[0].bind.as_str()])?;
    f.join_returned = Some(t0.elapsed());
    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
    f.join_all = Some(until_all(&names, t0, "serf join", |i| {
        pollers.alive(i) == Some(n as usize + 1)
    })?);

    // 3. Failure detection: kill -9 agent n (same position as krg's victim).
    let victim = (n - 1) as usize;
    let victim_name = agents[victim].name.clone();
    let survivors: Vec<String> = agents
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, a)| a.rpc.clone())
        .collect();
    let names: Vec<String> = agents
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, a)| a.name.clone())
        .collect();
    let pollers = Pollers::new(&survivors);
    let fp = Mutex::new(Vec::new());
    let t0 = Instant::now();
    agents[victim].kill9();
    let detected = until_all(&names, t0, "serf failure detection", |i| {
        let Some(members) = pollers.members(i) else {
            return false;
        };
        for (name, status) in &members {
            if *name != victim_name && status == "failed" {
                let mut fp = fp.lock().unwrap_or_else(|p| p.into_inner());
                let entry = format!("{}→{name}", names[i]);
                if !fp.contains(&entry) {
                    fp.push(entry);
                }
            }
        }
        members.get(&victim_name).map(String::as_str) == Some("failed")
    });
    f.false_positives = fp.into_inner().unwrap_or_else(|p| p.into_inner());
    f.failure = Some(detected?);
    Ok(())
}
