//! Unit tests of the tree model: every legal and illegal operation, and that
//! a refused operation leaves the tree as it was.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use super::links::feeds_from;
use super::namespace::DirRole;
use super::*;
use crate::error::Error;
use crate::probes::SourceSpec;
use crate::value::{Reading, Unit};

fn tree() -> Tree {
    Tree::new(1, Path::new("/config/krg_scheduler"))
}

fn at(t: &Tree, path: &str) -> Ino {
    path.split('/').fold(ROOT, |ino, part| {
        t.lookup(ino, part)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    })
}

fn mem_specs() -> Vec<SourceSpec> {
    vec![
        SourceSpec::new("ram_total", Unit::Bytes),
        SourceSpec::new("ram_free", Unit::Bytes),
    ]
}

/// mem_probe (ram_total 1000, ram_free 400), load_probe, a scheduler.
fn loaded() -> Tree {
    let mut t = tree();
    let probes = at(&t, "probes");
    assert_eq!(
        t.mkdir(probes, "mem_probe", |n| n == "mem_probe").unwrap(),
        MkdirPlan::Probe {
            name: "mem_probe".into()
        }
    );
    t.add_probe(
        probes,
        "mem_probe",
        mem_specs(),
        Duration::from_millis(100),
        vec![Reading::Num(1000.0), Reading::Num(400.0)],
    )
    .unwrap();
    t.add_probe(
        probes,
        "load_probe",
        vec![SourceSpec::new("load_1", Unit::Load)],
        Duration::from_secs(1),
        vec![Reading::Num(0.5)],
    )
    .unwrap();
    let s = at(&t, "schedulers");
    t.mkdir(s, "sched", |_| false).unwrap();
    t
}

fn snapshot(t: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![ROOT];
    while let Some(i) = stack.pop() {
        out.push(t.path(i));
        if let Ok(c) = t.children(i) {
            stack.extend(c.iter().map(|(_, i, _)| *i));
        }
    }
    out.sort();
    out
}

#[test]
fn the_worked_example() {
    let mut t = loaded();
    let period = at(&t, "probes/mem_probe/probe_period");
    t.write(period, "1000\n").unwrap();
    assert_eq!(t.read(period).unwrap(), "1000\n");
    assert_eq!(
        t.read(at(&t, "probes/mem_probe/ram_total/value")).unwrap(),
        "1000\n"
    );
    let sched = at(&t, "schedulers/sched");
    t.mkdir(sched, "echo_policy", |_| false).unwrap();
    let echo = at(&t, "schedulers/sched/echo_policy");
    t.symlink(
        echo,
        "port_mem_total",
        "/config/krg_scheduler/probes/mem_probe/ram_total",
    )
    .unwrap();
    assert_eq!(
        t.readlink(at(&t, "schedulers/sched/echo_policy/port_mem_total"))
            .unwrap(),
        "/config/krg_scheduler/probes/mem_probe/ram_total"
    );
    assert_eq!(
        t.read(at(&t, "schedulers/sched/echo_policy/received"))
            .unwrap(),
        "port_mem_total node1 1000\n"
    );
    // The probe is busy while linked; the policy takes its links with it.
    let probes = at(&t, "probes");
    assert!(matches!(t.rmdir(probes, "mem_probe"), Err(Error::Busy(_))));
    t.rmdir(sched, "echo_policy").unwrap();
    assert!(matches!(
        t.rmdir(probes, "mem_probe").unwrap(),
        Removed::Probe(_)
    ));
    assert!(t.lookup(probes, "mem_probe").is_err());
}

#[test]
fn mkdir_rules() {
    let mut t = loaded();
    let before = snapshot(&t);
    let probes = at(&t, "probes");
    assert!(matches!(
        t.mkdir(probes, "nonsense_probe", |_| false),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        t.mkdir(probes, "mem_probe", |_| true),
        Err(Error::Exists(_))
    ));
    assert!(matches!(
        t.mkdir(at(&t, "filters"), "median", |_| false),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        t.mkdir(at(&t, "schedulers/sched"), "magic_policy", |_| false),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        t.mkdir(at(&t, "probes/mem_probe"), "x", |_| false),
        Err(Error::NotPermitted(_))
    ));
    assert!(matches!(
        t.mkdir(ROOT, "x", |_| false),
        Err(Error::NotPermitted(_))
    ));
    assert!(matches!(
        t.mkdir(at(&t, "schedulers"), "a/b", |_| false),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        t.add_probe(
            probes,
            "mem_probe",
            mem_specs(),
            Duration::from_secs(1),
            vec![]
        ),
        Err(Error::Exists(_))
    ));
    assert_eq!(before, snapshot(&t));
    // Tagged instances of probes, filters and policies.
    assert_eq!(
        t.mkdir(probes, "mem_probe.2", |n| n == "mem_probe")
            .unwrap(),
        MkdirPlan::Probe {
            name: "mem_probe.2".into()
        }
    );
    assert!(matches!(
        t.mkdir(probes, "nonsense.2", |n| n == "mem_probe"),
        Err(Error::NotFound(_))
    ));
    t.mkdir(at(&t, "filters"), "moving_average.ram", |_| false)
        .unwrap();
    t.mkdir(at(&t, "filters"), "moving_average.load", |_| false)
        .unwrap();
    t.mkdir(at(&t, "schedulers/sched"), "echo_policy.2", |_| false)
        .unwrap();
    assert!(t.read(at(&t, "filters/moving_average.ram/window")).unwrap() == "5\n");
}

#[test]
fn writes_are_validated_and_atomic() {
    let mut t = loaded();
    let period = at(&t, "probes/mem_probe/probe_period");
    for bad in ["", "abc", "0", "5", "-100", "99999999999", "1.5", "100 200"] {
        assert!(
            matches!(t.write(period, bad), Err(Error::Invalid(_))),
            "{bad:?}"
        );
        assert_eq!(t.read(period).unwrap(), "100\n");
    }
    assert!(matches!(
        t.write(at(&t, "probes/mem_probe/ram_total/value"), "5"),
        Err(Error::NotPermitted(_))
    ));
    assert!(matches!(
        t.write(at(&t, "probes/mem_probe/status"), "x"),
        Err(Error::NotPermitted(_))
    ));
    t.mkdir(at(&t, "schedulers/sched"), "placement_policy", |_| false)
        .unwrap();
    let mode = at(&t, "schedulers/sched/placement_policy/mode");
    assert!(t.write(mode, "fastest").is_err());
    t.write(mode, "least_load\n").unwrap();
    assert_eq!(t.read(mode).unwrap(), "least_load\n");
}

#[test]
fn link_rules() {
    let mut t = loaded();
    let f = at(&t, "filters");
    t.mkdir(f, "moving_average", |_| false).unwrap();
    t.mkdir(f, "threshold", |_| false).unwrap();
    t.mkdir(f, "cluster_sum", |_| false).unwrap();
    t.mkdir(at(&t, "schedulers/sched"), "placement_policy", |_| false)
        .unwrap();
    t.mkdir(at(&t, "schedulers/sched"), "echo_policy", |_| false)
        .unwrap();
    let (avg, thr, sum) = (
        at(&t, "filters/moving_average"),
        at(&t, "filters/threshold"),
        at(&t, "filters/cluster_sum"),
    );
    let place = at(&t, "schedulers/sched/placement_policy");
    let echo = at(&t, "schedulers/sched/echo_policy");
    let before = snapshot(&t);
    let illegal: Vec<(Ino, &str, &str)> = vec![
        (
            place,
            "port_mem_free",
            "/config/krg_scheduler/probes/mem_probe/probe_period",
        ), // an attribute
        (
            place,
            "port_mem_free",
            "/config/krg_scheduler/probes/mem_probe",
        ), // a probe, not a source
        (
            place,
            "port_mem_free",
            "/config/krg_scheduler/probes/mem_probe/ram_total/value",
        ),
        (
            place,
            "port_mem_free",
            "/config/krg_scheduler/probes/load_probe/load_1",
        ), // type mismatch
        (
            place,
            "port_cpu",
            "/config/krg_scheduler/probes/mem_probe/ram_free",
        ), // no such port
        (
            place,
            "port_mem_free",
            "/elsewhere/probes/mem_probe/ram_free",
        ), // outside the tree
        (place, "port_mem_free", "../../../probes/nothing"), // missing
        (place, "port_mem_free", "../../../../../x"),        // above the root
        (place, "port_mem_free", "../../../filters/moving_average"), // filter without input
        (avg, "source", "../../probes/mem_probe/ram_free"),  // filter port is `input`
        (at(&t, "probes/mem_probe"), "x", "ram_free"),       // not a filter/policy
        (
            at(&t, "schedulers/sched"),
            "x",
            "../../probes/mem_probe/ram_free",
        ),
        (avg, "input", "../moving_average"), // itself
        (echo, "input", "../../../probes/mem_probe/ram_free"), // echo ports are port_*
    ];
    for (dir, name, target) in &illegal {
        let r = t.symlink(*dir, name, target);
        assert!(
            matches!(r, Err(Error::Invalid(_))),
            "{name} -> {target}: {r:?}"
        );
    }
    assert_eq!(before, snapshot(&t));

    // Legal: filter → source, filter → filter, policy port → filter/source.
    t.symlink(avg, "input", "../../probes/mem_probe/ram_free")
        .unwrap();
    t.symlink(thr, "input", "/config/krg_scheduler/filters/moving_average")
        .unwrap();
    t.symlink(place, "port_mem_free", "../../../filters/moving_average")
        .unwrap();
    t.symlink(echo, "port_sum", "../../../filters/cluster_sum")
        .err()
        .unwrap(); // sum has no input yet
    t.symlink(sum, "input", "../../probes/mem_probe/ram_total")
        .unwrap();
    t.symlink(echo, "port_sum", "../../../filters/cluster_sum")
        .unwrap();
    // A cluster-wide value cannot feed a placement port or another cluster filter.
    assert!(t
        .symlink(place, "port_load", "../../../filters/cluster_sum")
        .is_err());
    // The port is taken.
    assert!(matches!(
        t.symlink(place, "port_mem_free", "../../../probes/mem_probe/ram_free"),
        Err(Error::Exists(_))
    ));
    // Cycle: avg's input ← thr ← avg.
    t.unlink(place, "port_mem_free").unwrap();
    assert!(matches!(t.unlink(avg, "input"), Err(Error::Busy(_)))); // thr reads avg
    t.unlink(thr, "input").unwrap();
    t.unlink(avg, "input").unwrap();
    t.symlink(avg, "input", "../threshold").err().unwrap(); // threshold has no input now
    t.symlink(thr, "input", "../../probes/mem_probe/ram_free")
        .unwrap();
    t.symlink(avg, "input", "../threshold").unwrap();
    t.unlink(thr, "input").err().unwrap(); // avg reads thr
    let before = snapshot(&t);
    // A loop can only be attempted through a filter's own input (anything
    // that reads a filter needs that input linked, and then holds it busy);
    // the checker still sees it.
    let (DirRole::Filter(ac), DirRole::Filter(tc)) =
        (t.ns.dir_role(avg).unwrap(), t.ns.dir_role(thr).unwrap())
    else {
        panic!()
    };
    assert!(feeds_from(&t.parts, SourceRef::Filter(ac), tc));
    assert!(!feeds_from(&t.parts, SourceRef::Filter(tc), ac));
    // unlink of a non-link, rmdir of fixed parts.
    assert!(matches!(
        t.unlink(at(&t, "filters/moving_average"), "window"),
        Err(Error::NotPermitted(_))
    ));
    assert!(matches!(
        t.rmdir(ROOT, "probes"),
        Err(Error::NotPermitted(_))
    ));
    assert!(matches!(
        t.rmdir(at(&t, "probes/mem_probe"), "ram_free"),
        Err(Error::NotPermitted(_))
    ));
    assert!(matches!(
        t.rmdir(at(&t, "schedulers"), "sched"),
        Err(Error::NotEmpty(_))
    ));
    assert!(matches!(t.rmdir(f, "threshold"), Err(Error::Busy(_))));
    assert_eq!(before, snapshot(&t));
}

#[test]
fn filters_compute_from_live_values() {
    let mut t = loaded();
    let f = at(&t, "filters");
    t.mkdir(f, "cluster_max", |_| false).unwrap();
    let max = at(&t, "filters/cluster_max");
    t.symlink(max, "input", "../../probes/mem_probe/ram_free")
        .unwrap();
    assert_eq!(
        t.read(at(&t, "filters/cluster_max/value")).unwrap(),
        "400\n"
    );
    t.set_live(BTreeSet::from([1, 2]));
    let remote = SharedValue {
        probe: "mem_probe".into(),
        source: "ram_free".into(),
        unit: Unit::Bytes,
        value: Reading::Num(900.0),
        seq: 7,
    };
    t.store_remote(2, std::slice::from_ref(&remote));
    t.store_remote(3, std::slice::from_ref(&remote)); // not live: ignored
    assert_eq!(
        t.read(at(&t, "filters/cluster_max/value")).unwrap(),
        "900\n"
    );
    assert_eq!(
        t.read(at(&t, "filters/cluster_max/nodes")).unwrap(),
        "cluster 900\n"
    );
    assert_eq!(
        t.read(at(&t, "probes/mem_probe/ram_free/nodes")).unwrap(),
        "1 400\n2 900\n"
    );
    assert_eq!(
        t.read(at(&t, "probes/mem_probe/ram_free/value")).unwrap(),
        "400\n"
    );
    assert_eq!(
        t.read(at(&t, "probes/mem_probe/ram_free/type")).unwrap(),
        "bytes (per node)\n"
    );

    // Placement follows the remote node with more free memory, until it leaves.
    t.mkdir(at(&t, "schedulers/sched"), "placement_policy", |_| false)
        .unwrap();
    let place = at(&t, "schedulers/sched/placement_policy");
    assert!(t.place(None).is_err()); // port not linked
    t.symlink(place, "port_mem_free", "../../../probes/mem_probe/ram_free")
        .unwrap();
    assert_eq!(t.place(Some("sched")).unwrap().0, 2);
    assert!(t
        .read(at(&t, "schedulers/sched/placement_policy/placement"))
        .unwrap()
        .starts_with("2 most free memory"));
    assert!(t.place(Some("other")).is_err());
    t.set_live(BTreeSet::new());
    assert_eq!(t.place(None).unwrap().0, 1);
    assert_eq!(t.shared_values().len(), 3);
}
