//! Clusters in network namespaces joined by a bridge: real addresses, real
//! MACs, broadcast discovery, and partitions made by taking a link down.
//! CI runs as root; these tests need root and iproute2.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use anyhow::Result;
use krg_tests::{serial, wait_for, TestCluster};

const SETTLE: Duration = Duration::from_secs(15);

fn macs(c: &TestCluster, via: u32) -> Result<Vec<(u32, String)>> {
    let rows: serde_json::Value =
        serde_json::from_str(&c.krgadm_ok(via, &["--json", "nodes", "status"])?)?;
    Ok(rows
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["id"].as_u64().unwrap_or(0) as u32,
                r["mac"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

#[test]
fn broadcast_discovery_and_mac_addressing() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::namespaces(4)?;
    for id in 1..=4 {
        c.start(id)?;
    }
    // No --peer anywhere: presence comes from UDP broadcasts on the bridge.
    c.wait_present(1, &[1, 2, 3, 4], SETTLE)?;
    let rows = macs(&c, 1)?;
    assert_eq!(rows.len(), 4);
    assert!(
        rows.iter()
            .all(|(_, m)| m.len() == 17 && m != "00:00:00:00:00:00"),
        "{rows:?}"
    );
    c.krgadm_ok(1, &["nodes", "status"])?;
    c.krgadm_ok(1, &["cluster", "start"])?;
    assert_eq!(c.wait_agreement(&[1, 2, 3, 4], SETTLE)?.0, vec![1, 2, 3, 4]);

    // Remove and re-add node 4 by its MAC address.
    let mac4 = rows
        .iter()
        .find(|(id, _)| *id == 4)
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    c.krgadm_ok(2, &["nodes", "del", "-m", &mac4])?;
    assert_eq!(c.wait_agreement(&[1, 2, 3], SETTLE)?.0, vec![1, 2, 3]);
    wait_for(SETTLE, "node 4 to leave", || {
        (c.status(4).ok()?["health"] == "not started").then_some(())
    })?;
    c.krgadm_ok(3, &["nodes", "add", "-m", &mac4])?;
    assert_eq!(c.wait_agreement(&[1, 2, 3, 4], SETTLE)?.0, vec![1, 2, 3, 4]);
    Ok(())
}

#[test]
fn partition_minority_cannot_change_membership_and_views_reunite() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::namespaces(4)?;
    for id in 1..=4 {
        c.start(id)?;
    }
    c.wait_present(1, &[2, 3, 4], SETTLE)?;
    // Three founders (all voters); node 4 stays out to be added later.
    c.node(4)?.stop();
    std::thread::sleep(Duration::from_secs(4));
    c.krgadm_ok(1, &["cluster", "start"])?;
    assert_eq!(c.wait_agreement(&[1, 2, 3], SETTLE)?.0, vec![1, 2, 3]);
    let old_leader = c.leader(1).expect("a leader");
    let majority: Vec<u32> = [1, 2, 3]
        .into_iter()
        .filter(|id| *id != old_leader)
        .collect();

    // Cut the leader off: it is the minority.
    c.lab.as_ref().expect("lab").isolate(old_leader)?;
    // The majority elects a new leader and marks the old one failed.
    let new_leader = wait_for(SETTLE, "a new leader on the majority side", || {
        c.leader(majority[0]).filter(|l| *l != old_leader)
    })?;
    for id in &majority {
        wait_for(SETTLE, "old leader marked failed", || {
            (c.node_states(*id).ok()?.get(&old_leader)? == "failed").then_some(())
        })?;
    }
    // The minority cannot change membership, and says why.
    let out = c.krgadm(
        old_leader,
        &["nodes", "del", "-n", &majority[0].to_string()],
    )?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no quorum"), "{err}");
    assert_eq!(c.status(old_leader)?["health"], "no quorum");
    // The majority can: it removes the cut-off node and adds node 4.
    c.krgadm_ok(new_leader, &["nodes", "del", "-n", &old_leader.to_string()])?;
    c.start(4)?;
    c.wait_present(majority[0], &[4], SETTLE)?;
    c.krgadm_ok(majority[0], &["nodes", "add", "-n4"])?;
    let mut expected: Vec<u64> = majority.iter().map(|id| *id as u64).collect();
    expected.push(4);
    expected.sort_unstable();
    let mut side: Vec<u32> = majority.clone();
    side.push(4);
    assert_eq!(c.wait_agreement(&side, SETTLE)?.0, expected);

    // Heal: one view. The old leader learns it was removed and is present.
    c.lab.as_ref().expect("lab").heal(old_leader)?;
    wait_for(SETTLE, "the old leader to leave the dead cluster", || {
        (c.status(old_leader).ok()?["health"] == "not started").then_some(())
    })?;
    assert_eq!(c.wait_agreement(&side, SETTLE)?.0, expected);
    assert_eq!(
        c.node_states(new_leader)?
            .get(&old_leader)
            .map(String::as_str),
        Some("present")
    );
    // And it can be re-added.
    c.krgadm_ok(old_leader, &["nodes", "add", "-n", &old_leader.to_string()])?;
    let all: Vec<u32> = vec![1, 2, 3, 4];
    assert_eq!(c.wait_agreement(&all, SETTLE)?.0, vec![1, 2, 3, 4]);
    Ok(())
}
