//! The nemesis of the fault campaign: one fault at a time, chosen by the
//! seed — kill -9 and restart a krgd, split the bridge into a minority and
//! a majority, cut one node off, pause a krgd (SIGSTOP) shorter than the
//! failure timeout, or longer than the election timeout (its timers jump
//! when it resumes: a clock skew as the node sees it).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Rng, Shared};
use crate::TestCluster;

fn signal(c: &TestCluster, id: u32, sig: i32) {
    if let Some(pid) = c.nodes.get(&id).and_then(|n| n.pid()) {
        // SAFETY: signalling a krgd this harness spawned and has not reaped.
        unsafe { libc::kill(pid as i32, sig) };
    }
}

/// Inject faults until `duration` has passed.
pub(crate) fn run(
    c: &mut TestCluster,
    rng: &mut Rng,
    duration: Duration,
    shared: &Shared,
    faults: &mut BTreeMap<&'static str, usize>,
) -> Result<()> {
    let n = c.nodes.len() as u64;
    let end = Instant::now() + duration;
    while Instant::now() < end {
        std::thread::sleep(rng.millis(300, 1500));
        let victim = rng.range(1, n) as u32;
        let kind = rng.range(0, 4);
        let hold = match kind {
            0 => {
                // A new run of krgd from now on: its answers may go back to
                // the committed index it saved.
                bump(shared, victim);
                c.node(victim)?.kill9();
                std::thread::sleep(rng.millis(200, 3000));
                restart(c, victim)?;
                "kill -9 and restart"
            }
            1 => {
                // A minority of 1..=(n-1)/2 nodes on a bridge of its own.
                let size = rng.range(1, (n - 1) / 2);
                let mut group: Vec<u32> = Vec::new();
                while (group.len() as u64) < size {
                    let id = rng.range(1, n) as u32;
                    if !group.contains(&id) {
                        group.push(id);
                    }
                }
                let lab = c.lab.as_ref().context("no network lab")?;
                lab.split(&group)?;
                std::thread::sleep(rng.millis(1000, 5000));
                lab.heal_all()?;
                "bridge split"
            }
            2 => {
                let lab = c.lab.as_ref().context("no network lab")?;
                lab.isolate(victim)?;
                std::thread::sleep(rng.millis(500, 4000));
                lab.heal(victim)?;
                "node cut off"
            }
            3 => {
                signal(c, victim, libc::SIGSTOP);
                std::thread::sleep(rng.millis(100, 800));
                signal(c, victim, libc::SIGCONT);
                "short pause"
            }
            _ => {
                signal(c, victim, libc::SIGSTOP);
                std::thread::sleep(rng.millis(1500, 4000));
                signal(c, victim, libc::SIGCONT);
                "timer skew (pause past the election timeout)"
            }
        };
        *faults.entry(hold).or_default() += 1;
    }
    Ok(())
}

fn restart(c: &mut TestCluster, id: u32) -> Result<()> {
    // A killed daemon's PID and port may take a moment to be released.
    let mut tries = 0;
    loop {
        match c.start(id) {
            Ok(()) => break,
            Err(_) if tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn bump(shared: &Shared, id: u32) {
    if let Some(slot) = shared
        .incarnation
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(id as usize)
    {
        *slot += 1;
    }
}

/// End every fault: links healed, paused daemons resumed, dead ones restarted.
pub(crate) fn heal(c: &mut TestCluster, shared: &Shared) -> Result<()> {
    if let Some(lab) = c.lab.as_ref() {
        lab.heal_all()?;
    }
    let ids: Vec<u32> = c.nodes.keys().copied().collect();
    for id in ids {
        signal(c, id, libc::SIGCONT);
        if !c.node(id)?.is_running() {
            bump(shared, id);
            restart(c, id)?;
        }
    }
    Ok(())
}
