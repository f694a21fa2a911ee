//! Single-process checkpoint/restart with the real binaries and real programs.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// test code: a panic is a failed test
// Children are reaped by kill_reap (waitpid), which clippy cannot see.
#![allow(clippy::zombie_processes, clippy::type_complexity)]

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;

fn specials(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with("[vdso]") || l.ends_with("[vvar]") || l.ends_with("[vvar_vclock]"))
        .map(|l| {
            format!(
                "{} {}",
                l.split(' ').next().unwrap_or(""),
                l.rsplit(' ').next().unwrap_or("")
            )
        })
        .collect()
}

#[test]
fn c_program_memory_and_files_continue_exactly() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "memcount");
    let data = tmp.path().join("data.bin");
    std::fs::write(
        &data,
        (0..65536u32).map(|i| (i * 7) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let out = tmp.path().join("out.txt");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.arg(&data)
        .stdout(File::create(&out).unwrap())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let child = spawn(cmd);
    let pid = guard.add(child.id() as i32);
    wait_until("first lines", || last_count(&out) >= 5);
    let before = specials(pid);
    assert_eq!(
        before.len(),
        3,
        "expected vdso, vvar and vvar_vclock: {before:?}"
    );

    ok(&checkpoint_out(&store, pid, &[]), "checkpoint");
    let dir = store.join(pid.to_string());
    for f in [
        "description_v1.txt",
        "global_v1.bin",
        "node_0_v1.bin",
        &format!("task_{pid}_v1.bin"),
        &format!("task_mm_{pid}_v1.bin"),
    ] {
        let m = std::fs::metadata(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f} must be 0600");
    }
    // the job resumed by itself
    let at_ckpt = last_count(&out);
    wait_until("job runs on after checkpoint", || {
        last_count(&out) >= at_ckpt + 5
    });
    let at_kill = last_count(&out);
    kill_reap(pid);

    ok(&restart_out(&store, pid, 1), "restart");
    assert!(alive(pid), "restored process has its PID");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "memcount",
        "its name, not restart's"
    );
    assert_eq!(
        specials(pid),
        before,
        "vdso/vvar/vvar_vclock back at their addresses"
    );
    // It continues from the checkpoint: the counter neither resets nor skips
    // (counter_lines checks), and it goes past where the killed one stopped.
    wait_until("restored job counts on", || {
        last_count(&out) >= at_kill + 10
    });

    // A restored process can be checkpointed again: SN 2.
    ok(&checkpoint_out(&store, pid, &[]), "second checkpoint");
    assert!(dir.join("global_v2.bin").exists());
    let insp = run(Command::new(bin("checkpoint"))
        .arg("inspect")
        .arg(&dir)
        .arg("2"));
    ok(&insp, "inspect");
    let text = String::from_utf8_lossy(&insp.stdout);
    assert!(
        text.contains("Vdso") && text.contains("Heap") && text.contains("data.bin"),
        "{text}"
    );
    let js = run(Command::new(bin("checkpoint"))
        .args(["inspect", "--json"])
        .arg(&dir)
        .arg("2"));
    ok(&js, "inspect --json");
    let v: serde_json::Value =
        serde_json::from_slice(&js.stdout).expect("inspect --json prints JSON");
    assert_eq!(v["global"]["sn"], 2);
    assert_eq!(v["nodes"][0]["tasks"][0]["task"]["pid"], pid);
    let n2 = last_count(&out);
    wait_until("runs after second checkpoint", || {
        last_count(&out) >= n2 + 3
    });
    kill_reap(pid);
    ok(&restart_out(&store, pid, 2), "restart SN 2");
    let n3 = last_count(&out);
    wait_until("restored from SN 2 counts on", || {
        last_count(&out) >= n3 + 5
    });
    kill_reap(pid);
}

#[test]
fn python_script_with_stdio_inherited_from_restart() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(prog("count.py"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let mut child = spawn(cmd);
    let pid = guard.add(child.id() as i32);
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = BufReader::new(child.stdout.take().unwrap());
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for l in reader.lines().map_while(Result::ok) {
            let mut s = s2.lock().unwrap();
            s.push_str(&l);
            s.push('\n');
        }
    });
    let count = |s: &Arc<Mutex<String>>| {
        counter_lines(&s.lock().unwrap())
            .last()
            .copied()
            .unwrap_or(0)
    };
    wait_until("python prints", || count(&seen) >= 5);
    // the job runs on between its freeze and checkpoint's return (it
    // prints every 20 ms): what it printed before is the lower bound
    let at_ckpt = count(&seen);
    ok(&checkpoint_out(&store, pid, &[]), "checkpoint");
    wait_until("python runs on", || count(&seen) >= at_ckpt + 3);
    kill_reap(pid);
    let last_seen = count(&seen);

    // stdout was a pipe to us: the restored script writes to restart's stdout.
    let out = tmp.path().join("restored.txt");
    let o = Command::new(bin("restart"))
        .arg("--dir")
        .arg(&store)
        .arg(pid.to_string())
        .arg("1")
        .stdout(File::create(&out).unwrap())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    ok(&o, "restart");
    wait_until("restored python prints", || {
        counter_lines(&std::fs::read_to_string(&out).unwrap()).len() >= 10
    });
    let lines = counter_lines(&std::fs::read_to_string(&out).unwrap());
    assert!(
        lines[0] >= at_ckpt && lines[0] <= last_seen + 1,
        "resumed at {} (checkpoint near {at_ckpt})",
        lines[0]
    );
    kill_reap(pid);
}

#[test]
fn unsupported_socket_refused_and_job_keeps_running() {
    refused_socket(
        "import socket,time\ns=socket.socket(socket.AF_NETLINK,socket.SOCK_RAW,0)\nprint('up',flush=True)\ntime.sleep(60)",
        "is not saved by this version",
    );
    // a file descriptor in flight on a unix stream socket (sent, never
    // received): only datagram and seqpacket ones carry them into the image
    refused_socket(
        "import socket,time\na,b=socket.socketpair()\nsocket.send_fds(a,[b'x'],[0])\nprint('up',flush=True)\ntime.sleep(60)",
        "in flight on this stream socket (SCM_RIGHTS)",
    );
    // a TCP connection closed on both sides, its fds still open: restored
    // as a bound socket its reads would fail instead of ending
    refused_socket(
        "import socket,time\nl=socket.socket()\nl.bind(('127.0.0.1',0))\nl.listen()\nc=socket.create_connection(l.getsockname())\ns,_=l.accept()\nl.close()\nc.shutdown(socket.SHUT_WR)\ns.shutdown(socket.SHUT_WR)\nc.recv(1)\ns.recv(1)\ntime.sleep(0.3)\nprint('up',flush=True)\ntime.sleep(60)",
        "closed on both sides",
    );
    // a connection waiting to be accepted, from a process outside the tree
    // (a grandchild left to init; it ends when the listener goes)
    refused_socket(
        "import socket,os,time\np='/tmp/krg-wait-%d.sock'%os.getpid()\nl=socket.socket(socket.AF_UNIX)\nl.bind(p)\nl.listen()\nif os.fork()==0:\n  if os.fork()==0:\n    l.close()\n    c=socket.socket(socket.AF_UNIX)\n    c.connect(p)\n    c.recv(1)\n  os._exit(0)\nos.wait()\ntime.sleep(0.3)\nos.unlink(p)\nprint('up',flush=True)\ntime.sleep(60)",
        "wait to be accepted on it, at least one from outside the tree",
    );
    // a datagram from a named socket outside the tree (a grandchild's, gone)
    refused_socket(
        "import socket,os,time\nd='/tmp/krg-dg-%d'%os.getpid()\nr=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\nr.bind(d+'.rx')\nif os.fork()==0:\n  if os.fork()==0:\n    t=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n    t.bind(d+'.tx')\n    t.sendto(b'hi',d+'.rx')\n    os.unlink(d+'.tx')\n  os._exit(0)\nos.wait()\ntime.sleep(0.3)\nos.unlink(d+'.rx')\nprint('up',flush=True)\ntime.sleep(60)",
        "a socket outside the tree, waits on it",
    );
    // a socket only in flight (its sender closed it): not saved
    refused_socket(
        "import socket,time\na,b=socket.socketpair(socket.AF_UNIX,socket.SOCK_DGRAM)\nc,d=socket.socketpair()\nsocket.send_fds(a,[b'x'],[c.fileno()])\nc.close()\nprint('up',flush=True)\ntime.sleep(60)",
        "is in flight on it (SCM_RIGHTS): only pipes, files opened by path and sockets",
    );
}

fn refused_socket(script: &str, why: &str) {
    let guard = Guard::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", script]);
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    let mut child = spawn(cmd);
    let pid = guard.add(child.id() as i32);
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let o = checkpoint_out(&tmp.path().join("store"), pid, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("checkpoint: ")
            && err.contains(&format!("process {pid}"))
            && err.contains("socket")
            && err.contains(why),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        alive(pid) && state(pid) != 't',
        "job left running, not stopped"
    );
    assert!(!tmp
        .path()
        .join("store")
        .join(pid.to_string())
        .join("global_v1.bin")
        .exists());
    kill_reap(pid);
}

#[test]
fn bad_images_refused_before_anything_starts() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "memcount");
    let data = tmp.path().join("data.bin");
    std::fs::write(&data, vec![1u8; 65536]).unwrap();
    let out = tmp.path().join("out.txt");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.arg(&data)
        .stdout(File::create(&out).unwrap())
        .stdin(Stdio::null());
    let child = spawn(cmd);
    let pid = guard.add(child.id() as i32);
    wait_until("first lines", || last_count(&out) >= 2);
    ok(&checkpoint_out(&store, pid, &[]), "checkpoint");
    kill_reap(pid);
    let dir = store.join(pid.to_string());
    let task = dir.join(format!("task_{pid}_v1.bin"));
    let mm = dir.join(format!("task_mm_{pid}_v1.bin"));
    let good_task = std::fs::read(&task).unwrap();
    let good_mm = std::fs::read(&mm).unwrap();

    let cases: Vec<(&str, Box<dyn Fn()>)> = vec![
        (
            "CRC mismatch",
            Box::new(|| {
                let mut b = good_task.clone();
                let i = b.len() - 10;
                b[i] ^= 0x55;
                std::fs::write(&task, b).unwrap();
            }),
        ),
        (
            "unknown format version",
            Box::new(|| {
                let mut b = good_task.clone();
                b[8] = 77;
                std::fs::write(&task, b).unwrap();
            }),
        ),
        (
            "truncated",
            Box::new(|| std::fs::write(&mm, &good_mm[..good_mm.len() - 4096]).unwrap()),
        ),
        (
            "No such file",
            Box::new(|| std::fs::remove_file(&mm).unwrap()),
        ),
        (
            // one byte of page data (the data section starts at 4096)
            "does not match its CRC",
            Box::new(|| {
                let mut b = good_mm.clone();
                b[4096 + 1000] ^= 0x01;
                std::fs::write(&mm, b).unwrap();
            }),
        ),
        (
            // one byte in the middle of the page data: in the 8 MiB
            // anonymous mapping, whose blocks restart checks as it copies
            // them in (the tasks exist then, but never run)
            "does not match its CRC",
            Box::new(|| {
                let mut b = good_mm.clone();
                let i = 4096 + (b.len() - 4096) / 2;
                b[i] ^= 0x01;
                std::fs::write(&mm, b).unwrap();
            }),
        ),
        (
            "not a krg checkpoint",
            Box::new(|| std::fs::write(&task, [b'x'; 100]).unwrap()),
        ),
    ];
    for (want, mutate) in cases {
        std::fs::write(&task, &good_task).unwrap();
        std::fs::write(&mm, &good_mm).unwrap();
        mutate();
        let o = restart_out(&store, pid, 1);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(want),
            "expected {want:?}, got {err}"
        );
        assert!(!alive(pid), "nothing may start from a bad image ({want})");
    }
    let o = restart_out(&store, pid, 9);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no checkpoint 9"));
}

/// `job > log 2>&1`: fds 1 and 2 share one open file (one offset). Odd
/// numbers go to stdout, even ones to stderr: the log only stays a clean
/// sequence after restart if they still share it.
#[test]
fn dup_shared_file_offset_is_shared_again() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("log.txt");
    let store = tmp.path().join("store");
    let f = File::create(&out).unwrap();
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", "import sys,time\nn=0\nwhile True:\n n+=1\n s=sys.stdout if n%2 else sys.stderr\n s.write(f'{n} ok\\n'); s.flush(); time.sleep(0.01)"]);
    cmd.stdout(f.try_clone().unwrap())
        .stderr(f)
        .stdin(Stdio::null());
    let pid = guard.add(spawn(cmd).id() as i32);
    wait_until("log grows", || last_count(&out) >= 6);
    ok(&checkpoint_out(&store, pid, &[]), "checkpoint");
    kill_reap(pid);
    let at_kill = last_count(&out);
    ok(&restart_out(&store, pid, 1), "restart");
    wait_until("restored job logs on", || last_count(&out) >= at_kill + 10);
    kill_reap(pid);
}

/// `restart --new-pids` while the original still runs (its PID is taken).
#[test]
fn new_pids_while_the_original_still_runs() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mut cmd = Command::new("/usr/bin/python3");
    // stdout a pipe (kept open, unread): the copy writes to restart's stdout
    cmd.arg(prog("count.py"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let child = spawn(cmd);
    let pid = guard.add(child.id() as i32);
    std::thread::sleep(std::time::Duration::from_millis(200));
    ok(&checkpoint_out(&store, pid, &[]), "checkpoint");
    let o = run(Command::new(bin("restart"))
        .args(["--pid-wait", "0"])
        .arg("--dir")
        .arg(&store)
        .arg(pid.to_string())
        .arg("1"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains(&format!("PID {pid} is in use")),
        "{err}"
    );
    let out = tmp.path().join("new.txt");
    let o = Command::new(bin("restart"))
        .args(["--new-pids", "--dir"])
        .arg(&store)
        .arg(pid.to_string())
        .arg("1")
        .stdout(File::create(&out).unwrap())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    ok(&o, "restart --new-pids");
    let msg = String::from_utf8_lossy(&o.stderr);
    let new: i32 = msg
        .rsplit('[')
        .next()
        .and_then(|r| {
            r.trim()
                .trim_end_matches(')')
                .trim_end_matches(']')
                .parse()
                .ok()
        })
        .unwrap();
    guard.add(new);
    assert_ne!(new, pid);
    assert!(alive(pid) && alive(new));
    wait_until("copy counts on", || {
        counter_lines(&std::fs::read_to_string(&out).unwrap()).len() >= 5
    });
    kill_reap(new);
    kill_reap(pid);
}

#[test]
fn already_traced_process_refused() {
    let guard = Guard::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("30").stdin(Stdio::null());
    let child = spawn(cmd);
    let pid = guard.add(child.id() as i32);
    // SAFETY: this thread seizes (does not stop) its own child, then detaches.
    assert_eq!(unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) }, 0);
    let o = checkpoint_out(&tmp.path().join("store"), pid, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("already being traced")
            && err.contains(&pid.to_string()),
        "{err}"
    );
    // SAFETY: PTRACE_INTERRUPT + wait + DETACH of our own tracee.
    unsafe {
        libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0);
        let mut st = 0;
        libc::waitpid(pid, &mut st, libc::__WALL);
        libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
    }
    kill_reap(pid);
}
