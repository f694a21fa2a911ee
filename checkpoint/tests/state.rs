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
