//! The membership fault campaign: 5 krgd in network namespaces on a bridge,
//! clients running `krgadm nodes add/del` and `cluster status` on every
//! node, a nemesis killing (-9) and restarting krgd, splitting the bridge,
//! cutting nodes off and pausing them; then the history is checked for
//! linearizability of the member set, and the status answers for one
//! leader per term and one member set per epoch.
//!
//! `cargo test -p krg-tests --test faults -- --ignored` runs the long
//! campaign (`KRG_FAULTS_SECS`, default 300; `KRG_FAULTS_NODES`, 5 to 7);
//! the short one runs in CI. Both print the seed; `KRG_FAULTS_SEED=N`
//! replays its schedule. Needs root (namespaces) and iproute2.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use krg_tests::faults::{self, Campaign};
use krg_tests::serial;

fn campaign(nodes: u32, secs: u64) {
    let _g = serial();
    let cfg = Campaign::from_env(nodes, secs);
    eprintln!(
        "fault campaign: seed {} (replay with KRG_FAULTS_SEED={})",
        cfg.seed, cfg.seed
    );
    let summary = faults::run(&cfg).unwrap_or_else(|e| panic!("seed {}: {e:#}", cfg.seed));
    println!("{}", summary.line(&cfg));
    eprintln!("{}", summary.line(&cfg));
    for (why, count) in &summary.unknown_causes {
        eprintln!("unknown outcome ×{count}: {why}");
    }
    for a in &summary.anomalies {
        eprintln!("anomaly: {a}");
    }
    if let Some(dir) = &summary.kept {
        eprintln!("krgd logs and data kept in {}", dir.display());
    }
    assert!(summary.ops > 0, "no operation ran");
    assert!(
        summary.faults.values().sum::<usize>() > 0,
        "no fault was injected"
    );
    assert!(
        summary.anomalies.is_empty(),
        "seed {}: {} anomalies",
        cfg.seed,
        summary.anomalies.len()
    );
}

/// The CI version: 5 nodes, 25 s of faults.
#[test]
fn fault_campaign_short() {
    campaign(5, 25);
}

/// The full campaign (opt-in).
#[test]
#[ignore]
fn fault_campaign() {
    campaign(5, 300);
}
