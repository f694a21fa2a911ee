//! Every legal and illegal operation on the mounted tree of a real krgd,
//! with plain std::fs calls, as a user's shell would make them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs;
use std::os::unix::fs::symlink;

use common::{errno, Daemon};

fn meminfo_kb(key: &str) -> u64 {
    let text = fs::read_to_string("/proc/meminfo").unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn worked_example_and_every_illegal_operation() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::simple(tmp.path());
    let p = |rel: &str| d.path(rel);
    let m = d.mnt.display().to_string();

    // --- mkdir: load parts ---------------------------------------------------
    fs::create_dir(p("probes/mem_probe")).unwrap();
    for f in [
        "probe_period",
        "status",
        "ram_total/value",
        "ram_free/value",
        "ram_free/nodes",
        "ram_free/type",
    ] {
        assert!(p("probes/mem_probe").join(f).is_file(), "{f}");
    }
    assert_eq!(
        errno(fs::create_dir(p("probes/nonsense_probe")).unwrap_err()),
        libc::ENOENT
    );
    assert_eq!(
        errno(fs::create_dir(p("probes/mem_probe")).unwrap_err()),
        libc::EEXIST
    );
    assert_eq!(
        errno(fs::create_dir(p("filters/median")).unwrap_err()),
        libc::ENOENT
    );
    assert_eq!(
        errno(fs::create_dir(p("probes/mem_probe/extra")).unwrap_err()),
        libc::EPERM
    );
    assert_eq!(errno(fs::create_dir(p("other")).unwrap_err()), libc::EPERM);
    assert!(!p("probes/nonsense_probe").exists());

    // --- echo / cat: attributes and live values ------------------------------
    let total: u64 = fs::read_to_string(p("probes/mem_probe/ram_total/value"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(total, meminfo_kb("MemTotal") * 1024);
    let free: u64 = fs::read_to_string(p("probes/mem_probe/ram_free/value"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(free > 0 && free < total);
    assert_eq!(
        fs::read_to_string(p("probes/mem_probe/ram_free/type")).unwrap(),
        "bytes (per node)\n"
    );
    assert_eq!(
        fs::read_to_string(p("probes/mem_probe/status")).unwrap(),
        "running\n"
    );
    fs::write(p("probes/mem_probe/probe_period"), "1000\n").unwrap();
    assert_eq!(
        fs::read_to_string(p("probes/mem_probe/probe_period")).unwrap(),
        "1000\n"
    );
    for bad in [
        "abc\n",
        "5\n",
        "-1",
        "\n",
        "1000 2000",
        "99999999999999999999",
    ] {
        let e = fs::write(p("probes/mem_probe/probe_period"), bad).unwrap_err();
        assert_eq!(errno(e), libc::EINVAL, "{bad:?}");
        assert_eq!(
            fs::read_to_string(p("probes/mem_probe/probe_period")).unwrap(),
            "1000\n"
        );
    }
    assert_eq!(
        errno(fs::write(p("probes/mem_probe/ram_total/value"), "1").unwrap_err()),
        libc::EACCES
    );
    let long = format!("1000{}", " ".repeat(5000));
    let e = fs::write(p("probes/mem_probe/probe_period"), long).unwrap_err();
    assert_eq!(errno(e), libc::EINVAL);
    assert_eq!(
        fs::read_to_string(p("probes/mem_probe/probe_period")).unwrap(),
        "1000\n"
    );
    assert_eq!(
        errno(fs::write(p("probes/new_file"), "1").unwrap_err()),
        libc::EPERM
    );
    assert_eq!(
        errno(fs::rename(p("probes/mem_probe"), p("probes/x")).unwrap_err()),
        libc::EPERM
    );

    // --- the worked example: a scheduler, echo_policy, a port link -------------
    fs::create_dir(p("schedulers/test-scheduler")).unwrap();
    fs::create_dir(p("schedulers/test-scheduler/echo_policy")).unwrap();
    assert_eq!(
        errno(fs::create_dir(p("schedulers/test-scheduler/magic_policy")).unwrap_err()),
        libc::ENOENT
    );
    let port = p("schedulers/test-scheduler/echo_policy/port_mem_total");
    symlink(format!("{m}/probes/mem_probe/ram_total"), &port).unwrap();
    assert_eq!(
        fs::read_link(&port).unwrap().display().to_string(),
        format!("{m}/probes/mem_probe/ram_total")
    );
    assert_eq!(
        fs::read_to_string(port.join("value"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap(),
        total
    );
    let received = fs::read_to_string(p("schedulers/test-scheduler/echo_policy/received")).unwrap();
    assert_eq!(received, format!("port_mem_total node1 {total}\n"));

    // --- illegal links: EINVAL (EEXIST for a taken port), nothing created ------
    fs::create_dir(p("probes/load_probe")).unwrap();
    fs::create_dir(p("schedulers/test-scheduler/placement_policy")).unwrap();
    fs::create_dir(p("filters/moving_average")).unwrap();
    let place = p("schedulers/test-scheduler/placement_policy");
    let illegal = [
        (
            format!("{m}/probes/mem_probe/probe_period"),
            place.join("port_mem_free"),
        ), // an attribute
        (
            format!("{m}/probes/mem_probe/ram_free/value"),
            place.join("port_mem_free"),
        ), // a value file
        (format!("{m}/probes/mem_probe"), place.join("port_mem_free")), // a probe, not a source
        (
            format!("{m}/probes/load_probe/load_1"),
            place.join("port_mem_free"),
        ), // type mismatch
        (
            format!("{m}/probes/mem_probe/ram_free"),
            place.join("port_unknown"),
        ), // no such port
        (
            format!("{m}/probes/mem_probe/ram_free"),
            p("probes/mem_probe/link"),
        ), // not a policy/filter
        ("/etc/passwd".to_string(), place.join("port_mem_free")),       // outside the tree
        (
            "../moving_average".to_string(),
            p("filters/moving_average/input"),
        ), // a cycle (itself)
        (
            "../../probes/mem_probe/ram_free".to_string(),
            p("filters/moving_average/source"),
        ), // filters have `input`
        (
            format!("{m}/filters/moving_average"),
            place.join("port_mem_free"),
        ), // filter with no input yet
        (
            format!("{m}/probes/load_probe/load_1"),
            p("schedulers/test-scheduler/echo_policy/input"),
        ), // echo ports are port_*
    ];
    for (target, link) in &illegal {
        let e = symlink(target, link).unwrap_err();
        assert_eq!(errno(e), libc::EINVAL, "{} -> {target}", link.display());
        assert!(
            fs::symlink_metadata(link).is_err(),
            "{} was created",
            link.display()
        );
    }
    let e = symlink(format!("{m}/probes/mem_probe/ram_free"), &port).unwrap_err();
    assert_eq!(errno(e), libc::EEXIST, "a linked port takes no second link");

    // --- legal links: filter → source, filter → filter, port → filter, port → source
    symlink(
        "../../probes/mem_probe/ram_free",
        p("filters/moving_average/input"),
    )
    .unwrap();
    fs::create_dir(p("filters/threshold")).unwrap();
    fs::write(p("filters/threshold/threshold"), "1").unwrap();
    assert_eq!(
        errno(fs::write(p("filters/threshold/threshold"), "lots").unwrap_err()),
        libc::EINVAL
    );
    symlink(
        format!("{m}/filters/moving_average"),
        p("filters/threshold/input"),
    )
    .unwrap();
    symlink(
        format!("{m}/filters/threshold"),
        p("schedulers/test-scheduler/echo_policy/port_flag"),
    )
    .unwrap();
    assert_eq!(
        fs::read_to_string(p("filters/threshold/value")).unwrap(),
        "1\n"
    );
    assert_eq!(
        fs::read_to_string(p("filters/threshold/type")).unwrap(),
        "flag (per node)\n"
    );
    symlink(
        format!("{m}/filters/moving_average"),
        place.join("port_mem_free"),
    )
    .unwrap();
    symlink("../../../probes/load_probe/load_1", place.join("port_load")).unwrap();
    let placement = fs::read_to_string(place.join("placement")).unwrap();
    assert!(placement.starts_with("1 most free memory"), "{placement}");
    fs::write(place.join("mode"), "least_load").unwrap();
    assert_eq!(
        errno(fs::write(place.join("mode"), "random").unwrap_err()),
        libc::EINVAL
    );
    assert!(fs::read_to_string(place.join("placement"))
        .unwrap()
        .starts_with("1 least load"));
    fs::create_dir(p("filters/cluster_sum")).unwrap();
    symlink(
        "../../probes/mem_probe/ram_total",
        p("filters/cluster_sum/input"),
    )
    .unwrap();
    assert_eq!(
        fs::read_to_string(p("filters/cluster_sum/nodes")).unwrap(),
        format!("cluster {total}\n")
    );
    // A cluster-wide value cannot feed a per-node placement port.
    let e = symlink(format!("{m}/filters/cluster_sum"), place.join("port_x")).unwrap_err();
    assert_eq!(errno(e), libc::EINVAL);

    // --- rmdir / unlink rules -------------------------------------------------
    assert_eq!(
        errno(fs::remove_dir(p("probes/mem_probe")).unwrap_err()),
        libc::EBUSY
    );
    assert_eq!(
        errno(fs::remove_dir(p("filters/moving_average")).unwrap_err()),
        libc::EBUSY
    );
    assert_eq!(
        errno(fs::remove_file(p("filters/moving_average/input")).unwrap_err()),
        libc::EBUSY
    );
    assert_eq!(
        errno(fs::remove_dir(p("schedulers/test-scheduler")).unwrap_err()),
        libc::ENOTEMPTY
    );
    assert_eq!(errno(fs::remove_dir(p("probes")).unwrap_err()), libc::EPERM);
    assert_eq!(
        errno(fs::remove_dir(p("probes/mem_probe/ram_free")).unwrap_err()),
        libc::EPERM
    );
    assert_eq!(
        errno(fs::remove_file(p("probes/mem_probe/probe_period")).unwrap_err()),
        libc::EPERM
    );
    assert!(p("probes/mem_probe/ram_free/value").is_file());
    fs::remove_file(place.join("port_load")).unwrap();
    // The policies drop their own port links when removed (configfs-like).
    fs::remove_dir(p("schedulers/test-scheduler/echo_policy")).unwrap();
    fs::remove_dir(&place).unwrap();
    fs::remove_file(p("filters/threshold/input")).unwrap();
    fs::remove_dir(p("filters/threshold")).unwrap();
    fs::remove_dir(p("filters/moving_average")).unwrap();
    fs::remove_dir(p("filters/cluster_sum")).unwrap();
    fs::remove_dir(p("schedulers/test-scheduler")).unwrap();
    fs::remove_dir(p("probes/mem_probe")).unwrap();
    fs::remove_dir(p("probes/load_probe")).unwrap();
    for dir in ["probes", "filters", "schedulers"] {
        assert_eq!(fs::read_dir(p(dir)).unwrap().count(), 0, "{dir} not empty");
    }

    // Every refusal left a reason in the daemon log.
    let log = d.log_text();
    for reason in [
        "no probe named nonsense_probe",
        "probe_period must be milliseconds",
        "is linked from",
        "would make a cycle",
        "is not a probe source or a filter",
        "needs per-node bytes values",
        "not inside",
    ] {
        assert!(log.contains(reason), "log lacks {reason:?}");
    }
}

#[test]
fn all_builtin_parts_read_real_data() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::simple(tmp.path());
    for probe in ["mem_probe", "load_probe", "cpu_probe", "process_probe"] {
        fs::create_dir(d.path(&format!("probes/{probe}"))).unwrap();
    }
    let num = |rel: &str| -> f64 {
        fs::read_to_string(d.path(rel))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert!(num("probes/load_probe/load_1/value") >= 0.0);
    assert!(num("probes/load_probe/runnable/value") >= 0.0);
    let usage = num("probes/cpu_probe/cpu_usage/value");
    assert!((0.0..=100.0).contains(&usage));
    assert!(num("probes/cpu_probe/cpu_count/value") >= 1.0);
    assert!(num("probes/process_probe/process_count/value") >= 2.0);
    let table = fs::read_to_string(d.path("probes/process_probe/processes/value")).unwrap();
    assert!(
        table.starts_with("pid comm cpu_percent rss_bytes\n"),
        "{table}"
    );
    assert!(table.lines().count() >= 3);
    fs::create_dir(d.path("filters/cluster_max.load")).unwrap();
    // A text table cannot feed a numeric filter.
    let e = symlink(
        d.path("probes/process_probe/processes"),
        d.path("filters/cluster_max.load/input"),
    )
    .unwrap_err();
    assert_eq!(errno(e), libc::EINVAL);
    symlink(
        d.path("probes/load_probe/load_5"),
        d.path("filters/cluster_max.load/input"),
    )
    .unwrap();
    assert!(fs::read_to_string(d.path("filters/cluster_max.load/nodes"))
        .unwrap()
        .starts_with("cluster "));
}

#[test]
fn other_users_can_read_but_not_change_the_tree() {
    let tmp = tempfile::tempdir().unwrap();
    // The tempdir is 0700: let `nobody` reach the mount below it.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::simple(tmp.path());
    fs::create_dir(d.path("probes/mem_probe")).unwrap();
    let as_nobody = |cmd: &str| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
                cmd,
            ])
            .output()
            .unwrap()
    };
    let m = d.mnt.display();
    let out = as_nobody(&format!("cat {m}/probes/mem_probe/ram_total/value"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !as_nobody(&format!("echo 500 > {m}/probes/mem_probe/probe_period"))
            .status
            .success()
    );
    assert!(!as_nobody(&format!("mkdir {m}/probes/load_probe"))
        .status
        .success());
    assert!(!as_nobody(&format!("rmdir {m}/probes/mem_probe"))
        .status
        .success());
    assert_eq!(
        fs::read_to_string(d.path("probes/mem_probe/probe_period")).unwrap(),
        "1000\n"
    );
    assert!(!d.path("probes/load_probe").exists());
}
