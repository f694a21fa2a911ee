//! One krg run: N krgd on loopback, formation, join, failure, memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use krg_proto::cluster::NodeState;
use krg_tests::admin::AdminPool;
use krg_tests::{rss_kib, TestCluster};

use crate::report::Figures;
use crate::{labels, median_max, until_all, PHASE_TIMEOUT, REST};

/// A run; a failed phase keeps the figures measured before it. The harness
/// draws each node's port separately from the kernel, and now and then two
/// ids get the same one: a fresh cluster draws again (three attempts).
pub fn run(n: u32) -> Figures {
    let mut f = Figures::default();
    for attempt in 1..=3 {
        f = Figures::default();
        match run_once(n, &mut f) {
            Ok(()) => break,
            Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {
                println!("krg N={n}: port clash, starting over: {e:#}");
            }
            Err(e) => {
                f.error = Some(format!("{e:#}"));
                break;
            }
        }
    }
    f
}

/// Does node `i` report exactly `n` members, all online?
fn formed(pool: &AdminPool, i: usize, n: usize) -> bool {
    pool.status(i)
        .is_some_and(|s| s.members.len() == n && s.online == n)
}

fn states(pool: &AdminPool, i: usize) -> Option<BTreeMap<u32, NodeState>> {
    Some(
        pool.nodes(i)?
            .into_iter()
            .map(|r| (r.id, r.state))
            .collect(),
    )
}

/// Start a node, retrying while its reserved port is busy: the harness
/// reserves every port up front, and with dozens of daemons connecting to
/// each other an outgoing connection's ephemeral port sometimes lands on a
/// reserved one for a moment.
fn start_retry(c: &mut TestCluster, id: u32, key: &Path) -> Result<()> {
    let mut tries = 0;
    loop {
        match c.start_with(id, key, &[]) {
            Ok(()) => return Ok(()),
            Err(e) if tries < 8 && format!("{e:#}").contains("Address already in use") => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(e),
        }
    }
}

fn sockets(c: &TestCluster, ids: &[u32]) -> Vec<PathBuf> {
    ids.iter().map(|id| c.nodes[id].socket.clone()).collect()
}

fn run_once(n: u32, f: &mut Figures) -> Result<()> {
    let extra = n + 1;
    let mut c = TestCluster::loopback(extra)?;
    let ids: Vec<u32> = (1..=n).collect();
    let started = Instant::now();
    let key = c.key.clone();
    // With more than 8 ids every node gets only the first three as `--peer`:
    // the seeds learn of the others from their `Describe` calls and relay them.
    for id in &ids {
        start_retry(&mut c, *id, &key)?;
    }
    c.wait_present(1, &ids, PHASE_TIMEOUT)?;
    println!(
        "krg: {n} daemons started and visible from node 1 in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // 1. Formation.
    let pool = AdminPool::new(&sockets(&c, &ids))?;
    let t0 = Instant::now();
    c.krgadm_ok(1, &["cluster", "start"])?;
    f.formation = Some(until_all(&labels(&ids), t0, "krg formation", |i| {
        formed(&pool, i, n as usize)
    })?);

    // 4. Memory at rest after formation.
    std::thread::sleep(REST);
    let leader = c.leader(1);
    let by_node: Vec<(u64, u32)> = c
        .nodes
        .values()
        .filter_map(|node| Some((node.pid().and_then(rss_kib)?, node.id)))
        .collect();
    f.rss_leader_kib = by_node
        .iter()
        .find(|(_, id)| Some(*id) == leader)
        .map(|(k, _)| *k);
    (f.rss_median_kib, f.rss_max_kib) = median_max(by_node.iter().map(|(k, _)| *k).collect());

    // 2. Join of one more node, started beforehand and present.
    start_retry(&mut c, extra, &key)?;
    c.wait_present(1, &[extra], PHASE_TIMEOUT)?;
    let all: Vec<u32> = (1..=extra).collect();
    let pool = AdminPool::new(&sockets(&c, &all))?;
    let t0 = Instant::now();
    c.krgadm_ok(1, &["nodes", "add", "-n", &extra.to_string()])?;
    f.join_returned = Some(t0.elapsed());
    f.join_all = Some(until_all(&labels(&all), t0, "krg join", |i| {
        formed(&pool, i, extra as usize)
    })?);

    // 3. Failure detection: kill -9 a non-leader member.
    let leader = c.leader(1).ok_or_else(|| anyhow!("no leader after join"))?;
    let victim = (2..=n)
        .rev()
        .find(|id| *id != leader)
        .ok_or_else(|| anyhow!("no non-leader victim"))?;
    let survivors: Vec<u32> = all.iter().copied().filter(|id| *id != victim).collect();
    let pool = AdminPool::new(&sockets(&c, &survivors))?;
    let fp = Mutex::new(Vec::new());
    let t0 = Instant::now();
    c.node(victim)?.kill9();
    let detected = until_all(&labels(&survivors), t0, "krg failure detection", |i| {
        let Some(states) = states(&pool, i) else {
            return false;
        };
        for (id, state) in &states {
            if *id != victim && *state == NodeState::Failed {
                let mut fp = fp.lock().unwrap_or_else(|p| p.into_inner());
                let entry = format!("{}→{id}", survivors[i]);
                if !fp.contains(&entry) {
                    fp.push(entry);
                }
            }
        }
        states.get(&victim) == Some(&NodeState::Failed)
    });
    f.false_positives = fp.into_inner().unwrap_or_else(|p| p.into_inner());
    f.failure = Some(detected?);
    Ok(())
}
