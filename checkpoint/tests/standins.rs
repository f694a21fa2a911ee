//! A tree that holds a stand-in (`krg` in the place of a process that
//! moved to another node): saved as a stand-in entry once the caller had
//! its process saved where it runs, refused otherwise; restarted as a
//! stand-in again with the same PID, parent, group, command line and fds
//! 0-2, running the program and token it is given.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use checkpoint::dump::{self, DumpOptions};
use checkpoint::image::PartRef;
use common::*;

fn opts(store: &Path, stand_ins: Vec<(i32, PartRef)>) -> DumpOptions {
    DumpOptions {
        root: store.to_path_buf(),
        kill: true,
        stop: false,
        node: 1,
        sysv_sem: Vec::new(),
        sysv_msg: Vec::new(),
        full: true,
        other_pidns: false,
        stdio_files: Vec::new(),
        stand_ins,
    }
}

fn environ(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn fd_link(pid: i32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default()
}

fn ppid(pid: i32) -> i32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rsplit_once(") ")
        .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_stand_in_is_saved_as_one_and_made_again() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    // `krg` here is a copy of sleep: what makes a stand-in is its name
    // and its token variable
    let krg = tmp.path().join("krg");
    std::fs::copy("/bin/sleep", &krg).unwrap();
    let out = tmp.path().join("out");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("KRG_STANDIN=ab \"$0\" 1000 | cat > \"$1\"; echo done")
        .arg(&krg)
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let sh = guard.add(spawn(cmd).id() as i32);
    // both children must have run exec: before it, a child is a copy of
    // sh (its name and environment are sh's), so tell them apart only once
    // one is called krg and carries the token and the other is cat
    let is_krg = |p: i32| comm(p) == "krg" && environ(p).iter().any(|v| v == "KRG_STANDIN=ab");
    let pick = || {
        let kids = children(sh);
        let krg = kids.iter().copied().find(|&p| is_krg(p))?;
        let cat = kids.iter().copied().find(|&p| comm(p) == "cat")?;
        Some((krg, cat))
    };
    wait_until("the pipeline runs", || pick().is_some());
    let (stand_in, cat) = pick().unwrap();
    let (stand_in, cat) = (guard.add(stand_in), guard.add(cat));
    let part = PartRef {
        node: 2,
        pid: stand_in,
        host_pid: 81234,
        sn: 1,
    };

    // Without its process saved where it runs, the tree is refused.
    let e = dump::checkpoint(sh, &opts(&store, Vec::new()), &|_, _| {}).unwrap_err();
    assert!(e.to_string().contains("stand-in"), "{e}");
    assert!(alive(stand_in) && alive(sh));

    let rep = dump::checkpoint(sh, &opts(&store, vec![(stand_in, part)]), &|_, _| {}).unwrap();
    for p in [sh, cat, stand_in] {
        kill_reap(p);
    }
    let shown = run(Command::new(bin("checkpoint"))
        .args(["inspect", "--json"])
        .arg(store.join(sh.to_string()))
        .arg(rep.sn.to_string()));
    ok(&shown, "inspect");
    let json = String::from_utf8_lossy(&shown.stdout);
    assert!(
        json.contains("stand_ins") && json.contains("81234"),
        "{json}"
    );
    // the node mask names node 1 (the tree's file) and node 2 (the part)
    assert!(json.contains("\"node_mask\": 6"), "{json}");
    let shown = run(Command::new(bin("checkpoint"))
        .arg("inspect")
        .arg(store.join(sh.to_string()))
        .arg(rep.sn.to_string()));
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains(&format!(
            "task {stand_in} parent {sh}: the stand-in of a process on node 2 (PID 81234 there"
        )) && text.contains("node 2: it saved processes of this SN"),
        "{text}"
    );

    // restart asks krgd for the stand-ins' tokens: without one, it says so
    let o = restart_out(&store, sh, rep.sn);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("asking krgd to run the parts"), "{err}");
    assert!(!alive(sh), "nothing was started");

    let o = run(Command::new(bin("restart"))
        .arg("--dir")
        .arg(&store)
        .arg("--stand-in")
        .arg(format!("{stand_in}:beef"))
        .arg("--stand-in-program")
        .arg(&krg)
        .arg("--socket")
        .arg(tmp.path().join("krgd.sock"))
        .arg(sh.to_string())
        .arg(rep.sn.to_string()));
    ok(&o, "restart");
    wait_until("the stand-in runs again", || alive(stand_in) && alive(cat));
    assert_eq!(ppid(stand_in), sh);
    let env = environ(stand_in);
    assert!(env.iter().any(|v| v == "KRG_STANDIN=beef"), "{env:?}");
    assert!(
        env.iter()
            .any(|v| v.starts_with("KRG_SOCKET=") && v.ends_with("krgd.sock")),
        "{env:?}"
    );
    let cmdline = std::fs::read(format!("/proc/{stand_in}/cmdline")).unwrap();
    assert!(cmdline.ends_with(b"1000\0"), "{cmdline:?}");
    // its stdout is the pipe cat reads
    let pipe = fd_link(stand_in, 1);
    assert!(pipe.starts_with("pipe:"), "{pipe}");
    assert_eq!(pipe, fd_link(cat, 0));
    for p in [sh, cat, stand_in] {
        kill_reap(p);
    }
}
