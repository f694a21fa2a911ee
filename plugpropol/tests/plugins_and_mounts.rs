//! Plug-in probes (the shipped disk_probe, a crashing one, a slow one), the
//! mount's life cycle (unmount on stop, stale mount after a crash), and
//! what krgd refuses: plug-ins another user could change, mount points it
//! would hide.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{errno, run_to_exit, script, wait_for, Daemon, Opts};

/// An unprivileged uid, standing for another user (needs no passwd entry).
const OTHER_USER: u32 = 65534;

fn opts(registry: Option<&Path>) -> Opts<'_> {
    Opts {
        node: 1,
        port: common::free_port(),
        peers: vec![],
        registry,
        key: None,
    }
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), None).unwrap();
}

fn shipped_disk_probe() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins/disk_probe.sh")
        .display()
        .to_string()
}

#[test]
fn disk_probe_plugin_is_loaded_without_restart_and_stopped_by_rmdir() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = tmp.path().join("plugins.conf");
    let d = Daemon::start(
        tmp.path(),
        Opts {
            node: 1,
            port: common::free_port(),
            peers: vec![],
            registry: Some(&registry),
            key: None,
        },
    );
    assert_eq!(
        errno(fs::create_dir(d.path("probes/disk_probe")).unwrap_err()),
        libc::ENOENT
    );

    // Register the plug-in while krgd runs (plus a wrapper that records its PID).
    let pidfile = tmp.path().join("disk.pid");
    let wrapper = tmp.path().join("disk_wrapper.sh");
    script(
        &wrapper,
        &format!(
            "echo $$ > {}\nexec {} {}\n",
            pidfile.display(),
            shipped_disk_probe(),
            tmp.path().display()
        ),
    );
    fs::write(
        &registry,
        format!("# test registry\ndisk_probe probe {}\n", wrapper.display()),
    )
    .unwrap();
    fs::create_dir(d.path("probes/disk_probe")).unwrap();
    let num = |rel: &str| -> f64 {
        fs::read_to_string(d.path(rel))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let total = num("probes/disk_probe/disk_total/value");
    let free = num("probes/disk_probe/disk_free/value");
    assert!(total > 0.0 && free <= total);
    assert!((0.0..=100.0).contains(&num("probes/disk_probe/disk_used_percent/value")));
    assert_eq!(
        fs::read_to_string(d.path("probes/disk_probe/probe_period")).unwrap(),
        "5000\n"
    );
    assert_eq!(
        fs::read_to_string(d.path("probes/disk_probe/disk_free/type")).unwrap(),
        "bytes (per node)\n"
    );

    // It feeds the built-in parts like any probe.
    fs::create_dir(d.path("schedulers/s")).unwrap();
    fs::create_dir(d.path("schedulers/s/placement_policy")).unwrap();
    std::os::unix::fs::symlink(
        d.path("probes/disk_probe/disk_free"),
        d.path("schedulers/s/placement_policy/port_mem_free"),
    )
    .unwrap();
    fs::remove_dir(d.path("schedulers/s/placement_policy")).unwrap();

    let pid: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    fs::remove_dir(d.path("probes/disk_probe")).unwrap();
    // rmdir returns once the plug-in has exited and been reaped.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "plug-in {pid} still running after rmdir"
    );
}

#[test]
fn crashing_and_slow_plugins_do_not_hurt_krgd() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = tmp.path().join("plugins.conf");
    let crash = tmp.path().join("crash.sh");
    // Answers two samples, then dies.
    script(&crash, "echo 'source n count'\necho 'period 50'\necho ready\ni=0\nwhile read c; do i=$((i+1)); [ $i -gt 2 ] && exit 7; echo \"n $i\"; echo end; done\n");
    let slow = tmp.path().join("slow.sh");
    // Answers the first sample at once, then hangs on every later one.
    script(&slow, "echo 'source v count'\necho ready\nread c; echo 'v 42'; echo end\nwhile read c; do sleep 3600; done\n");
    let crash_policy = tmp.path().join("crash_policy.sh");
    // Decides once, then dies.
    script(&crash_policy, "echo 'port port_a any'\necho ready\nwhile read l; do [ \"$l\" = decide ] && echo 'place 1 once' && exit 9; done\n");
    let bad = tmp.path().join("bad.sh");
    script(&bad, "echo 'source v furlongs'\necho ready\n");
    fs::write(&registry, format!("crash_probe probe {}\nslow_probe probe {}\nbad_probe probe {}\nnot_there probe /nonexistent/x\ncrash_policy policy {}\n",
        crash.display(), slow.display(), bad.display(), crash_policy.display())).unwrap();
    let d = Daemon::start(
        tmp.path(),
        Opts {
            node: 1,
            port: common::free_port(),
            peers: vec![],
            registry: Some(&registry),
            key: None,
        },
    );

    // A plug-in that cannot start or declares nonsense: mkdir fails with EIO, nothing is left.
    assert_eq!(
        errno(fs::create_dir(d.path("probes/bad_probe")).unwrap_err()),
        libc::EIO
    );
    assert_eq!(
        errno(fs::create_dir(d.path("probes/not_there")).unwrap_err()),
        libc::EIO
    );
    assert!(!d.path("probes/bad_probe").exists());

    fs::create_dir(d.path("probes/crash_probe")).unwrap();
    let status = d.path("probes/crash_probe/status");
    wait_for("the crash to be reported", Duration::from_secs(20), || {
        fs::read_to_string(&status)
            .unwrap()
            .starts_with("failed: exited")
    });
    // The last value stays readable and krgd carries on.
    let last: u64 = fs::read_to_string(d.path("probes/crash_probe/n/value"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(last >= 1);
    fs::create_dir(d.path("probes/mem_probe")).unwrap();
    fs::remove_dir(d.path("probes/crash_probe")).unwrap();
    assert!(d.log_text().contains("plug-in probe stopped"));

    // A policy plug-in that dies is reported in its decision file.
    fs::create_dir(d.path("schedulers/s")).unwrap();
    fs::create_dir(d.path("schedulers/s/crash_policy")).unwrap();
    let decision = d.path("schedulers/s/crash_policy/decision");
    wait_for(
        "the policy crash to be reported",
        Duration::from_secs(20),
        || {
            fs::read_to_string(&decision)
                .unwrap()
                .starts_with("none: failed: exited")
        },
    );
    fs::remove_dir(d.path("schedulers/s/crash_policy")).unwrap();

    // A probe stuck in a sample never blocks readers: they get the last value.
    fs::create_dir(d.path("probes/slow_probe")).unwrap();
    fs::write(d.path("probes/slow_probe/probe_period"), "10").unwrap();
    wait_for(
        "the slow plug-in to time out",
        Duration::from_secs(20),
        || {
            fs::read_to_string(d.path("probes/slow_probe/status"))
                .unwrap()
                .contains("did not answer in time")
        },
    );
    for _ in 0..20 {
        let start = Instant::now();
        assert_eq!(
            fs::read_to_string(d.path("probes/slow_probe/v/value")).unwrap(),
            "42\n"
        );
        // The plug-in is hung for an hour: any wait on it would show here.
        assert!(start.elapsed() < Duration::from_millis(1500));
    }
    fs::remove_dir(d.path("probes/slow_probe")).unwrap();
    fs::remove_dir(d.path("probes/mem_probe")).unwrap();
}

#[test]
fn unmounted_on_stop_and_stale_mount_cleaned_at_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::simple(tmp.path());
    fs::create_dir(d.path("probes/mem_probe")).unwrap();
    d.stop();
    assert!(!common::is_mounted(&d.mnt), "still mounted after SIGTERM");
    drop(d);

    let mut d = Daemon::simple(tmp.path());
    assert!(d.path("probes").is_dir());
    d.kill_hard();
    // The kernel keeps the dead mount: it answers ENOTCONN.
    assert!(common::is_mounted(&d.mnt));
    assert_eq!(errno(fs::metadata(&d.mnt).unwrap_err()), libc::ENOTCONN);
    let mnt = d.mnt.clone();
    std::mem::forget(d); // the next daemon must clean it, not the test

    let d = Daemon::simple(tmp.path());
    assert_eq!(d.mnt, mnt);
    fs::create_dir(d.path("probes/mem_probe")).unwrap();
    assert!(d.log_text().contains("stale scheduler tree mount"));
    // Exactly one live mount there.
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert_eq!(
        info.lines()
            .filter(|l| l.contains(&format!(" {} ", mnt.display())))
            .count(),
        1
    );
}

#[test]
fn a_second_krgd_refuses_a_live_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let first = Daemon::simple(&tmp.path().join("a"));
    // The second daemon's mount point leads to the live tree.
    let b = tmp.path().join("b");
    fs::create_dir_all(&b).unwrap();
    std::os::unix::fs::symlink(&first.mnt, b.join("mnt")).unwrap();
    let opts = Opts {
        node: 2,
        port: common::free_port(),
        peers: vec![],
        registry: None,
        key: None,
    };
    let mut child = Daemon::command(&b, &opts).spawn().unwrap();
    let mut status = None;
    wait_for(
        "the second krgd to give up",
        Duration::from_secs(30),
        || {
            status = child.try_wait().unwrap();
            status.is_some()
        },
    );
    assert!(!status.unwrap().success());
    let log = fs::read_to_string(b.join("krgd.log")).unwrap();
    assert!(log.contains("already served by another krgd"), "{log}");
    // The first tree is untouched.
    fs::create_dir(first.path("probes/mem_probe")).unwrap();
}

/// The review's attack: a registry or plug-in another user could change
/// made root's `mkdir` run that user's code as root. The plug-in here notes
/// in a marker file that it ran; refused, it must never run.
#[test]
fn plugins_another_user_could_change_are_never_run() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = tmp.path().join("plugins.conf");
    let marker = tmp.path().join("ran");
    let exe = tmp.path().join("evil.sh");
    let body = "echo 'source v count'\necho ready\nwhile read c; do echo 'v 1'; echo end; done\n";
    script(
        &exe,
        &format!("echo \"$0\" >> {}\n{body}", marker.display()),
    );
    let public = tmp.path().join("public");
    fs::create_dir(&public).unwrap();
    fs::copy(&exe, public.join("evil.sh")).unwrap();
    chmod(&public, 0o777);
    let d = Daemon::start(tmp.path(), opts(Some(&registry)));
    let set_registry = |exe: &Path, mode: u32, uid: u32| {
        let text = format!("evil probe {0}\nevil_policy policy {0}\n", exe.display());
        fs::write(&registry, text).unwrap();
        chmod(&registry, mode);
        chown(&registry, uid);
    };
    let refused = |rel: &str| errno(fs::create_dir(d.path(rel)).unwrap_err()) == libc::EACCES;
    fs::create_dir(d.path("schedulers/s")).unwrap();

    set_registry(&exe, 0o666, 0); // anyone may write it
    assert!(refused("probes/evil"));
    assert!(refused("schedulers/s/evil_policy"));
    fs::create_dir(d.path("probes/mem_probe")).unwrap(); // built-ins need no registry
    set_registry(&exe, 0o644, OTHER_USER); // another user's
    assert!(refused("probes/evil"));
    set_registry(&exe, 0o644, 0);
    chmod(&exe, 0o777); // a safe registry naming an executable anyone may write
    assert!(refused("probes/evil"));
    chmod(&exe, 0o755);
    chown(&exe, OTHER_USER); // or another user's
    assert!(refused("schedulers/s/evil_policy"));
    chown(&exe, 0);
    set_registry(&public.join("evil.sh"), 0o644, 0); // or one in a directory anyone may write
    assert!(refused("probes/evil"));

    assert!(!marker.exists(), "a refused plug-in ran");
    assert!(!d.path("probes/evil").exists());
    let log = d.log_text();
    for why in [
        "plug-in registry refused",
        "is writable by group or others (mode 0666)",
        "is owned by uid 65534, not root",
        "plug-in not started",
        "is writable by group or others (mode 0777) and not sticky",
    ] {
        assert!(log.contains(why), "log lacks {why:?}:\n{log}");
    }

    // The same plug-in from files only root can change runs as before.
    set_registry(&exe, 0o644, 0);
    fs::create_dir(d.path("probes/evil")).unwrap();
    assert!(marker.exists());
    fs::remove_dir(d.path("probes/evil")).unwrap();
}

/// krgd must not mount its tree on a kernel file system (a test once
/// covered /proc/sys) nor over a directory with content. It refuses to
/// start, its last line naming the directory, as for any mount it cannot
/// make.
#[test]
fn krgd_refuses_to_cover_proc_sys_or_a_full_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let krgd = Daemon::command_at(tmp.path(), &opts(None), Path::new("/proc/sys"));
    // In a mount namespace of its own, so that even a mount that should
    // have been refused would never cover this host's /proc/sys.
    let log = tmp.path().join("proc.log");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--"])
        .arg(krgd.get_program())
        .args(krgd.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    let status = run_to_exit(cmd, Duration::from_secs(30));
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("krgd: refusing to mount the scheduler tree on /proc/sys: it is on proc"),
        "{text}"
    );

    let full = tmp.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("keep"), "mine").unwrap();
    let b = tmp.path().join("b");
    let status = run_to_exit(
        Daemon::command_at(&b, &opts(None), &full),
        Duration::from_secs(30),
    );
    let text = fs::read_to_string(b.join("krgd.log")).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    let last = text.lines().last().unwrap_or_default();
    let want = format!(
        "krgd: refusing to mount the scheduler tree on {}: the directory is not empty",
        full.display()
    );
    assert!(last.starts_with(&want), "{text}");
    assert!(!common::is_mounted(&full));
    assert_eq!(fs::read_to_string(full.join("keep")).unwrap(), "mine");
}
