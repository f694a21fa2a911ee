//! krgcapset + a real krgd following forks + checkpoint's CHECKPOINTABLE check.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

struct Krgd {
    child: Child,
    sock: PathBuf,
}

impl Drop for Krgd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Build (if needed) and start a krgd of this workspace on a free port.
#[path = "../../tests/src/nested_cargo.rs"]
mod nested_cargo;

fn start_krgd(dir: &Path) -> Krgd {
    let bindir = Path::new(env!("CARGO_BIN_EXE_checkpoint"))
        .parent()
        .unwrap()
        .to_path_buf();
    let krgd = bindir.join("krgd");
    // Always: a no-op when krgd is up to date, and a krgd left over from
    // before a protocol change would answer in another language.
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let st = nested_cargo::cargo_build(&["krgd"]).status().unwrap();
        assert!(st.success(), "building krgd");
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(dir.join("key"), b"0123456789abcdef0123456789abcdef").unwrap();
    std::fs::set_permissions(
        dir.join("key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let sock = dir.join("krgd.sock");
    let mut cmd = Command::new(krgd);
    cmd.args([
        "--node-id",
        "3",
        "--session-id",
        "1",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--socket",
    ])
    .arg(&sock)
    .arg("--data-dir")
    .arg(dir.join("data"))
    .arg("--cluster-key-file")
    .arg(dir.join("key"))
    .arg("--no-scheduler-mount")
    // tests run in parallel: the /krg tree and the HTTP port are one per host
    .args(["--no-krg-mount", "--no-http"])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let child = spawn(cmd);
    wait_until("krgd socket", || sock.exists());
    Krgd { child, sock }
}

fn capset(sock: &Path, args: &[&str]) -> std::process::Output {
    run(Command::new(bin("krgcapset"))
        .arg("--socket")
        .arg(sock)
        .args(args))
}

fn checkpoint(sock: &Path, store: &Path, pid: i32) -> std::process::Output {
    run(Command::new(bin("checkpoint"))
        .arg("--socket")
        .arg(sock)
        .arg("--dir")
        .arg(store)
        .arg(pid.to_string()))
}

#[test]
fn checkpointable_is_inherited_by_later_children_only() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let d = start_krgd(tmp.path());
    let store = tmp.path().join("store");
    // A shell sets the flag on itself, starts a job in the background, exits.
    let script = format!(
        "sleep 60 >/dev/null 2>&1 & echo $! ; {} --socket {} -d +CHECKPOINTABLE || exit 1; sleep 60 >/dev/null 2>&1 & echo $!",
        bin("krgcapset").display(),
        d.sock.display()
    );
    let o = run(Command::new("sh").arg("-c").arg(script));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pids: Vec<i32> = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    let (before, after) = (guard.add(pids[0]), guard.add(pids[1]));

    // started after the flag, its shell gone: still CHECKPOINTABLE
    let s = capset(&d.sock, &["--show", "-k", &after.to_string()]);
    assert_eq!(
        String::from_utf8_lossy(&s.stdout).trim(),
        format!("{after}: CHECKPOINTABLE")
    );
    let o = checkpoint(&d.sock, &store, after);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The image names the node of the krgd that answered.
    let node_file = store.join(after.to_string()).join("node_3_v1.bin");
    assert!(node_file.exists(), "{} missing", node_file.display());

    // started before the flag was set: refused with the documented line
    let o = checkpoint(&d.sock, &store, before);
    assert!(!o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        format!("checkpoint: process {before} is not CHECKPOINTABLE (run krgcapset -d +CHECKPOINTABLE in the shell that starts it)")
    );

    // -k PID -d -CHECKPOINTABLE takes it away again
    assert!(capset(
        &d.sock,
        &["-k", &after.to_string(), "-d", "-CHECKPOINTABLE"]
    )
    .status
    .success());
    assert!(!checkpoint(&d.sock, &store, after).status.success());
    assert!(capset(
        &d.sock,
        &["-k", &before.to_string(), "-d", "+CHECKPOINTABLE"]
    )
    .status
    .success());
    assert!(checkpoint(&d.sock, &store, before).status.success());

    // a restarted job is CHECKPOINTABLE again (restart tells krgd)
    kill_reap(before);
    let o = run(Command::new(bin("restart"))
        .arg("--socket")
        .arg(&d.sock)
        .arg("--dir")
        .arg(&store)
        .arg(before.to_string())
        .arg("1"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = capset(&d.sock, &["--show", "-k", &before.to_string()]);
    assert_eq!(
        String::from_utf8_lossy(&s.stdout).trim(),
        format!("{before}: CHECKPOINTABLE")
    );
    assert!(checkpoint(&d.sock, &store, before).status.success());

    let bad = capset(&d.sock, &["-k", &before.to_string(), "-d", "+FOO"]);
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).starts_with("krgcapset: ")
    );
    for p in [before, after] {
        kill_reap(p);
    }
}

#[test]
fn no_daemon_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = checkpoint(
        &tmp.path().join("none.sock"),
        &tmp.path().join("store"),
        std::process::id() as i32,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no krgd listens at"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

/// A user may not flag a setuid program they started (real uid theirs,
/// effective and saved uid root); their own plain process they may.
#[test]
fn user_cannot_make_a_setuid_process_checkpointable() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let guard = Guard::new();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = start_krgd(tmp.path());
    let sleeper = |ruid: u32, euid: u32| {
        let mut cmd = Command::new("sleep");
        cmd.arg("60").stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: setresuid in the child before exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setresuid(ruid, euid, euid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        guard.add(spawn(cmd).id() as i32)
    };
    let setuid = sleeper(65534, 0);
    let plain = sleeper(65534, 65534);
    let as_nobody = |pid: i32| {
        run(Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin("krgcapset"))
            .arg("--socket")
            .arg(&d.sock)
            .args(["-k", &pid.to_string(), "-d", "+CHECKPOINTABLE"]))
    };
    wait_until("sleepers started", || {
        [setuid, plain].iter().all(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.starts_with("sleep"))
        })
    });
    let o = as_nobody(setuid);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("not entirely yours"),
        "{err}"
    );
    let o = as_nobody(plain);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for p in [setuid, plain] {
        kill_reap(p);
    }
}

/// A user's own checkpoint, which sees no frame numbers: the pages a
/// forked parent and child still share are found by content, and stay one
/// page each after restart.
#[test]
fn a_users_checkpoint_keeps_copy_on_write_sharing() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = start_krgd(tmp.path());
    let exe = build_c(tmp.path(), "cowtree");
    let (work, store) = (tmp.path().join("work"), tmp.path().join("store"));
    for dir in [&work, &store] {
        std::fs::create_dir(dir).unwrap();
        std::os::unix::fs::chown(dir, Some(65534), Some(65534)).unwrap();
    }
    let mut cmd = Command::new(&exe);
    cmd.arg(&work)
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let root = guard.add(spawn(cmd).id() as i32);
    wait_until("forked", || !children(root).is_empty());
    let child = guard.add(children(root)[0]);
    wait_until("both ready", || {
        [root, child]
            .iter()
            .all(|p| work.join(format!("ready.{p}")).exists())
    });
    let addr: u64 = std::fs::read_to_string(work.join("addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        capset(&d.sock, &["-k", &root.to_string(), "-d", "+CHECKPOINTABLE"])
            .status
            .success()
    );
    let o = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("checkpoint"))
        .arg("--socket")
        .arg(&d.sock)
        .arg("--dir")
        .arg(&store)
        .args(["--kill", &root.to_string()]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    kill_reap(root);
    wait_until("tree gone", || !alive(child));
    kill_reap(child);
    ok(&restart_out(&store, root, 1), "restart");
    let (p, c) = (frames(root, addr, 256), frames(child, addr, 256));
    for i in 0..256 {
        if i < 24 {
            assert_ne!(p[i], c[i], "page {i} private to each");
        } else {
            assert!(p[i] != 0 && p[i] == c[i], "page {i} shared");
        }
    }
    assert_eq!(cow_check(&work, root), "ok", "parent's pages");
    assert_eq!(cow_check(&work, child), "ok", "child's pages");
    for p in [child, root] {
        kill_reap(p);
    }
}
