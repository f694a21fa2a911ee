//! Raft state on disk: a cluster whose every voter is killed (-9) and
//! restarted comes back with its members and epoch, a torn log tail is
//! dropped, and a damaged vote file or a log whose start no snapshot covers
//! stops krgd with a message naming it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use krg_tests::{serial, wait_for, TestCluster};

const SETTLE: Duration = Duration::from_secs(15);

fn raft_file(c: &TestCluster, id: u32, name: &str) -> PathBuf {
    c.dir
        .path()
        .join(format!("data{id}"))
        .join("raft")
        .join(name)
}

fn formed(ids: &[u32]) -> Result<TestCluster> {
    let mut c = TestCluster::loopback(ids.len() as u32)?;
    for id in ids {
        c.start(*id)?;
    }
    c.wait_present(1, ids, SETTLE)?;
    c.krgadm_ok(1, &["cluster", "start"])?;
    c.wait_agreement(ids, SETTLE)?;
    Ok(c)
}

#[test]
fn every_voter_killed_and_restarted_keeps_members_and_epoch() -> Result<()> {
    let _g = serial();
    let ids = [1, 2, 3];
    let mut c = formed(&ids)?;
    // One more committed change, so the epoch is not just the formation's.
    c.krgadm_ok(2, &["nodes", "del", "-n3"])?;
    c.start(3)?;
    c.wait_present(1, &[3], SETTLE)?;
    c.krgadm_ok(1, &["nodes", "add", "-n3"])?;
    let before = c.wait_agreement(&ids, SETTLE)?;
    assert_eq!(before.0, vec![1, 2, 3]);
    assert!(before.1 >= 3, "{before:?}");

    for id in ids {
        c.node(id)?.kill9();
    }
    for id in ids {
        c.start(id)?;
    }
    // No `cluster start`: the members elect a leader from their own state.
    // Until a node has replayed its log it answers "no members, epoch 0";
    // wait for every node to be back where it was, not for any agreement.
    let back = wait_for(SETTLE, "every node back at its members and epoch", || {
        ids.iter()
            .all(|id| c.view(*id).ok().as_ref() == Some(&before))
            .then_some(())
    });
    if let Err(e) = back {
        let views: Vec<String> = ids
            .iter()
            .map(|id| format!("node {id}: {:?}", c.view(*id)))
            .collect();
        panic!(
            "{e:#}: before the kill {before:?}, now {}",
            views.join("; ")
        );
    }
    wait_for(SETTLE, "a healthy cluster with a leader", || {
        ids.iter()
            .all(|id| c.status(*id).is_ok_and(|s| s["health"] == "healthy"))
            .then_some(())
    })?;
    assert_eq!(c.view(1)?, before, "nobody was marked failed on the way");
    // And it still changes membership.
    c.krgadm_ok(3, &["nodes", "del", "-n2"])?;
    assert_eq!(c.wait_agreement(&[1, 3], SETTLE)?.0, vec![1, 3]);
    assert!(c.nodes[&1].log_text().contains("resumed cluster from disk"));
    Ok(())
}

#[test]
fn torn_log_tail_is_dropped_and_the_node_rejoins() -> Result<()> {
    let _g = serial();
    let ids = [1, 2, 3];
    let mut c = formed(&ids)?;
    let before = c.view(1)?;
    let victim = (1..=3).find(|id| Some(*id) != c.leader(1)).unwrap();
    c.node(victim)?.kill9();
    // A crash in the middle of an append: a record header announcing 64
    // bytes, and only 5 of them.
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(raft_file(&c, victim, "log"))?;
    log.write_all(&[64, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5])?;
    drop(log);
    c.start(victim)?;
    assert_eq!(c.wait_agreement(&ids, SETTLE)?.0, before.0);
    assert!(
        c.nodes[&victim]
            .log_text()
            .contains("dropping a torn last log record"),
        "{}",
        c.nodes[&victim].log_text()
    );
    wait_for(SETTLE, "the restarted node to be online", || {
        (c.node_states(victim).ok()?.values().all(|s| s == "online")).then_some(())
    })?;
    Ok(())
}

#[test]
fn damaged_vote_file_is_refused_with_a_clear_message() -> Result<()> {
    let _g = serial();
    let ids = [1, 2, 3];
    let mut c = formed(&ids)?;
    c.node(2)?.kill9();
    let vote = raft_file(&c, 2, "vote");
    let mut bytes = std::fs::read(&vote)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    std::fs::write(&vote, &bytes)?;
    // krgd exits at start-up (maybe just after creating its socket).
    let err = match c.start(2) {
        Err(e) => e.to_string(),
        Ok(()) => {
            wait_for(SETTLE, "krgd 2 to refuse its state", || {
                (!c.node(2).ok()?.is_running()).then_some(())
            })?;
            c.nodes[&2].log_text()
        }
    };
    assert!(
        err.contains(&vote.display().to_string()) && err.contains("fails its checksum"),
        "{err}"
    );
    assert!(err.contains("move") && err.contains("away"), "{err}");
    // The state is left alone for the administrator to look at.
    assert_eq!(std::fs::read(&vote)?, bytes);
    Ok(())
}

/// The state seed 938669814 of the fault campaign left: a log whose first
/// entries are gone with no snapshot covering them. krgd refuses it at
/// start-up in one line saying what is lost and what to do, and leaves it.
#[test]
fn log_no_snapshot_covers_is_refused_in_one_line() -> Result<()> {
    let _g = serial();
    let ids = [1, 2, 3];
    let mut c = formed(&ids)?;
    c.node(2)?.kill9();
    // Cut the first entry out of the log: magic (8 bytes), then records
    // `len u32 LE, crc u32 LE, payload`; record 0 is the cluster uid.
    let log = raft_file(&c, 2, "log");
    let bytes = std::fs::read(&log)?;
    let record_end = |at: usize| {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at + 8 + len
    };
    let first_entry = record_end(8);
    let second_entry = record_end(first_entry);
    assert!(
        second_entry < bytes.len(),
        "the log holds more than one entry"
    );
    let mut cut = bytes[..first_entry].to_vec();
    cut.extend_from_slice(&bytes[second_entry..]);
    std::fs::write(&log, &cut)?;
    assert!(!raft_file(&c, 2, "snapshot").exists());
    let err = match c.start(2) {
        Err(e) => e.to_string(),
        Ok(()) => {
            wait_for(SETTLE, "krgd 2 to refuse its state", || {
                (!c.node(2).ok()?.is_running()).then_some(())
            })?;
            c.nodes[&2].log_text()
        }
    };
    let line = err
        .lines()
        .find(|l| l.starts_with("krgd: "))
        .unwrap_or_else(|| panic!("no `krgd: ` line in {err}"));
    assert!(
        line.contains(&log.display().to_string())
            && line.contains("the log starts at entry 1 and there is no snapshot: entry 0 is lost")
            && line.contains("away"),
        "{line}"
    );
    assert_eq!(std::fs::read(&log)?, cut, "the state is left alone");
    Ok(())
}
