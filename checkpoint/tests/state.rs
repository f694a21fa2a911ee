//! Process state that must come back as it was (or be refused at
//! checkpoint): zombies, …
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
#![allow(clippy::zombie_processes)] // children are reaped by kill_reap

mod common;

use std::process::{Command, Stdio};

use common::*;

/// Zombies are saved and come back as zombies of their parent, with the
/// status it finds when it reaps them.
#[test]
fn zombies_come_back_as_zombies() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "zombies");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.stderr(Stdio::null());
    let (child, out) = spawn_reading(cmd);
    let pid = guard.add(child.id() as i32);
    wait_until("two zombie children", || {
        let k = children(pid);
        k.len() == 2 && k.iter().all(|&c| state(c) == 'Z')
    });
    let kids = children(pid);
    let o = checkpoint_out(&store, pid, &["--kill"]);
    ok(&o, "checkpoint");
    assert!(String::from_utf8_lossy(&o.stdout).contains("3 task(s)"));
    kill_reap(pid);
    for &k in &kids {
        // adopted by this test (subreaper) when their parent went
        kill_reap(k);
    }
    let log = tmp.path().join("restored.txt");
    ok(&restart_into(&store, pid, 1, &[], &log), "restart");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("restored parent runs", || last_of(&text()) >= 3);
    let mut now = children(pid);
    now.sort_unstable();
    let mut want = kids.clone();
    want.sort_unstable();
    assert_eq!(now, want, "the zombies have their PIDs, under their parent");
    assert!(now.iter().all(|&c| state(c) == 'Z'), "still zombies");
    // SAFETY: plain kill of the restored parent.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    wait_until("parent reaps them", || text().contains("signal"));
    let t = text();
    assert!(t.contains(&format!("reaped {} exit 7", kids[0])), "{t}");
    assert!(t.contains(&format!("reaped {} signal 15", kids[1])), "{t}");
    assert!(!out.get().contains("reap"), "the original never reaped");
    kill_reap(pid);
}

/// A pseudo-terminal the job holds both sides of comes back with its
/// number, raw settings and window size, and carries data both ways
/// (`progs/pty.c` checks all of it every step).
#[test]
fn pseudo_terminal_pair_comes_back() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let (pid, out) = start_counter(&guard, tmp.path(), "pty", &[tmp.path()], 3);
    let store = tmp.path().join("store");
    let pts = std::fs::read_to_string(tmp.path().join("pts")).unwrap();
    // a step's bytes may be in flight at the freeze: refused, tried again
    let mut tries = 0;
    loop {
        let o = checkpoint_out(&store, pid, &["--kill"]);
        if o.status.success() {
            break;
        }
        let e = String::from_utf8_lossy(&o.stderr);
        tries += 1;
        assert!(e.contains("wait to be read") && tries < 10, "{e}");
    }
    kill_reap(pid);
    let at = last_count(&out);
    let o = run(Command::new(bin("restart"))
        .arg("--dir")
        .arg(&store)
        .arg(pid.to_string())
        .arg(saved_sn_of(&store, pid).to_string()));
    ok(&o, "restart");
    // counter_lines fails on "BAD"
    wait_until("restored steps", || last_count(&out) >= at + 5);
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    assert!(fds.iter().any(|l| l == "/dev/ptmx"), "{fds:?}");
    assert!(fds.iter().any(|l| l == pts.trim()), "{fds:?}");
    kill_reap(pid);
}

/// The last SN committed for `pid` in `store`.
fn saved_sn_of(store: &std::path::Path, pid: i32) -> u32 {
    std::fs::read_dir(store.join(pid.to_string()))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            n.strip_prefix("global_v")?
                .strip_suffix(".bin")?
                .parse()
                .ok()
        })
        .max()
        .unwrap()
}
