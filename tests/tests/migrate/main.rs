//! `migrate` between real krgds of a loopback cluster (the moved process
//! keeps its PID: in a PID namespace of its own behind a stand-in, or, with
//! `--no-stand-in`, as a child of the target's krgd in the one kernel):
//! a counter keeps counting from where it was, a multi-threaded process and
//! a tree with a pipe keep working, `krg ps` shows the new node, the
//! refusals leave the process running, and a target killed mid-transfer
//! leaves it running on the origin; the origin's `/metrics` count and time
//! its migrations. Needs root.
//!
//! `memory`: every page arrives (pre-copy and post-copy); `faults`: a
//! target killed or cut off mid-transfer, post-copy without its origin.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use krg_tests::migrating::{
    capset, err, grows, last, migrate, moved_host_pid, ppid, ps, socket, stamps_intact, state, Job,
    STAMPER,
};
use krg_tests::{bin, detached_stdio, free_port, serial, wait_for, TestCluster};

const SETTLE: Duration = Duration::from_secs(20);

fn formed(n: u32) -> Result<TestCluster> {
    TestCluster::loopback(n)?.formed(n, SETTLE)
}

/// Like [`formed`], node 1 serving `/metrics` on the port returned.
fn formed_with_metrics(n: u32) -> Result<(TestCluster, u16)> {
    let mut c = TestCluster::loopback(n)?;
    let port = free_port();
    c.start_with(
        1,
        &c.key.clone(),
        &[&format!("--http-listen=127.0.0.1:{port}")],
    )?;
    for id in 2..=n {
        c.start(id)?;
    }
    let ids: Vec<u32> = (1..=n).collect();
    c.wait_present(1, &ids, SETTLE)?;
    c.krgadm_ok(1, &["cluster", "start"])?;
    c.wait_agreement(&ids, SETTLE)?;
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok((c, port))
}

/// The samples of `/metrics` on 127.0.0.1:port, as `name{labels}` → value.
fn metrics(port: u16) -> std::collections::BTreeMap<String, f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.lines()
        .filter(|l| l.starts_with("krg_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// A job started from the test, with no stray fds; its end is reaped by a
/// thread (the parent must reap the origin's copy for its PID to be free).
fn start(script: &str, out: &Path) -> Job {
    let mut cmd = Command::new("python3");
    detached_stdio(cmd.args(["-c", script]).arg(out));
    let mut child: Child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    std::thread::spawn(move || child.wait());
    Job(pid)
}

/// `script` started with its output in `name` under the test's directory,
/// flagged CAN_MIGRATE through node 1, and writing: the job, that file,
/// and its last count.
fn movable(c: &TestCluster, script: &str, name: &str) -> (Job, PathBuf, u64) {
    let out = c.dir.path().join(name);
    let job = start(script, &out);
    capset(c, 1, job.0);
    let count = grows(&out, 0);
    (job, out, count)
}

/// What `krgcapset --show` says node `via`'s krgd holds for `pid`.
fn show_caps(c: &TestCluster, via: u32, pid: i32) -> String {
    let o = Command::new(bin("krgcapset"))
        .env("KRG_SOCKET", socket(c, via))
        .args(["--show", "-k", &pid.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    text.trim()
        .strip_prefix(&format!("{pid}: "))
        .unwrap_or(&text)
        .to_string()
}

/// Counts in memory; each line: count, pid, and a checksum of a 20 MiB
/// buffer it keeps rewriting (memory must arrive whole).
const COUNTER: &str = r#"
import os, sys, time
buf = bytearray(20 << 20)
f = open(sys.argv[1], "a", buffering=1)
n = 0
while True:
    n += 1
    i = (n * 4096) % len(buf)
    buf[i] = n % 251
    f.write("%d %d %d\n" % (n, os.getpid(), sum(buf[::4096])))
    time.sleep(0.02)
"#;

#[test]
fn a_counter_moves_and_comes_back() -> Result<()> {
    let _g = serial();
    let (c, port) = formed_with_metrics(2)?;
    let (job, out, before) = movable(&c, COUNTER, "count.txt");
    let pid = job.0;
    assert_eq!(show_caps(&c, 1, pid), "CAN_MIGRATE");
    let o = Command::new(bin("krgcapset"))
        .env("KRG_SOCKET", socket(&c, 1))
        .args(["-k", &pid.to_string(), "-d", "+CHECKPOINTABLE"])
        .output()?;
    assert!(o.status.success(), "{}", err(&o));
    assert!(!migrate(&c, 1, &[&pid.to_string(), "9"]).status.success());
    let o = migrate(&c, 1, &[&pid.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("to node 2"), "{}", err(&o));
    eprintln!("{}", err(&o));
    // the origin's image goes (after the answer, on a thread of its own)
    c.wait_no_migration_image(1)?;
    // The origin counted a refusal and a move, and timed the move as the
    // report says (`stopped N ms, M ms in all`).
    let m = metrics(port);
    let report = err(&o);
    let ms = |word: &str| -> f64 {
        let before = report.split(word).next().unwrap();
        before
            .split_whitespace()
            .next_back()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            / 1000.0
    };
    let (stopped, total) = (ms(" ms, "), ms(" ms in all"));
    assert_eq!(m[r#"krg_migrations_total{outcome="moved"}"#], 1.0, "{m:?}");
    assert_eq!(
        m[r#"krg_migrations_total{outcome="refused"}"#], 1.0,
        "{m:?}"
    );
    assert_eq!(m["krg_migration_downtime_seconds_count"], 1.0, "{m:?}");
    assert_eq!(m["krg_standins"], 1.0, "its stand-in: {m:?}");
    assert!(
        (m["krg_migration_downtime_seconds_sum"] - stopped).abs() < 0.002,
        "{m:?} {report}"
    );
    assert!(
        (m["krg_migration_seconds_sum"] - total).abs() < 0.002,
        "{m:?} {report}"
    );
    assert!(stopped > 0.0 && stopped <= total, "{report}");
    let after = grows(&out, before);
    // never restarted from zero, same PID, numbers keep following each other
    let text = in_order(&out, "a gap or a repeat in the count");
    assert!(text
        .lines()
        .all(|l| l.split(' ').nth(1) == Some(&pid.to_string())));
    assert!(after > before);
    // It runs in a PID namespace of its own on node 2 (where it is still
    // `pid`); `pid` here is its stand-in. What it held on node 1 it holds
    // on node 2 (`threads_and_a_tree_with_a_pipe_move` checkpoints it
    // there; tests/tests/checkpoint_job.rs one in a job's namespace).
    let moved = moved_host_pid(pid);
    assert_eq!(show_caps(&c, 2, moved), "CHECKPOINTABLE,CAN_MIGRATE");
    assert_eq!(
        show_caps(&c, 1, pid),
        "(none)",
        "the stand-in holds nothing"
    );
    // krg ps shows it there, with its PID
    assert!(ps(&c, 1).contains(&(2, pid as i64)), "{:?}", ps(&c, 1));
    // `migrate PID TO` on node 1 reaches the process through its
    // stand-in (before Dec 7 evening: refused, and `migrate PID 1` said
    // "already runs on node 1"), as NODE:PID would
    let o = migrate(&c, 1, &[&pid.to_string(), "2"]);
    assert!(err(&o).contains("already runs on node 2"), "{}", err(&o));
    // passed on once only: node 2 naming the stand-in is told where to ask
    let o = migrate(&c, 2, &[&format!("1:{pid}"), "1"]);
    assert!(
        err(&o).contains("runs on node 2; this is its stand-in"),
        "{}",
        err(&o)
    );
    // by its PID on node 1, it comes back
    let o = migrate(&c, 1, &[&pid.to_string(), "1"]);
    assert!(o.status.success(), "{}", err(&o));
    grows(&out, last(&out));
    assert!(ps(&c, 2).contains(&(1, pid as i64)));
    // krg kill reaches it where it runs
    let k = c
        .krg(2)?
        .args(["kill", "-s", "KILL", &format!("1:{pid}")])
        .output()?;
    assert!(k.status.success(), "{}", err(&k));
    wait_for(Duration::from_secs(5), "the process to end", || {
        state(pid).is_none().then_some(())
    })?;
    std::mem::forget(job); // ended: its PID is not ours any more
                           // (node 2's session of the job, whose input had ended, re-awaited its
                           // finished reader when the job left: a panic in a task of krgd's)
    c.assert_no_panics()
}

const THREADS_AND_PIPE: &str = r#"
import os, sys, threading, time
out = sys.argv[1]
r, w = os.pipe()
if os.fork() == 0:
    os.close(w)
    f = open(out, "a", buffering=1)
    src = os.fdopen(r)
    for line in src:
        f.write(line)
    os._exit(0)
os.close(r)
counts = [0, 0, 0]
def spin(k):
    while True:
        counts[k] += 1
        time.sleep(0.01)
for k in range(3):
    threading.Thread(target=spin, args=(k,), daemon=True).start()
dst = os.fdopen(w, "w", buffering=1)
n = 0
while True:
    n += 1
    dst.write("%d %d %d\n" % (n, os.getpid(), min(counts)))
    time.sleep(0.02)
"#;

#[test]
fn threads_and_a_tree_with_a_pipe_move() -> Result<()> {
    let _g = serial();
    let c = formed(2)?;
    let (job, out, before) = movable(&c, THREADS_AND_PIPE, "tree.txt");
    let pid = job.0;
    // a process with children needs --tree
    let o = migrate(&c, 1, &[&pid.to_string(), "2"]);
    assert!(!o.status.success());
    assert!(err(&o).contains("give --tree"), "{}", err(&o));
    let o = Command::new(bin("krgcapset"))
        .env("KRG_SOCKET", socket(&c, 1))
        .args(["-k", &pid.to_string(), "-d", "+CHECKPOINTABLE"])
        .output()?;
    assert!(o.status.success(), "{}", err(&o));
    // Without a stand-in (`--no-stand-in`, as a leaving node moves its
    // processes): the process itself becomes node 2's krgd's child.
    let o = migrate(&c, 1, &["--no-stand-in", "--tree", &pid.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    let after = grows(&out, before);
    let text = in_order(&out, "a line lost or doubled in the pipe");
    // the threads kept counting too (their minimum grows)
    let threads = |l: &str| l.split(' ').nth(2).unwrap().parse::<u64>().unwrap();
    let last_line = text.lines().last().unwrap();
    assert!(threads(last_line) > 10, "{last_line}");
    assert!(after > before);
    assert_eq!(std::fs::read_dir(format!("/proc/{pid}/task"))?.count(), 4);
    let krgd2 = c.nodes.get(&2).unwrap().pid().unwrap() as i32;
    assert_eq!(ppid(pid), krgd2);
    // what it held on node 1 it holds on node 2: it can be checkpointed there
    assert_eq!(show_caps(&c, 2, pid), "CHECKPOINTABLE,CAN_MIGRATE");
    let o = Command::new(bin("checkpoint"))
        .env("KRG_SOCKET", socket(&c, 2))
        .arg("--dir")
        .arg(c.dir.path().join("chkpt"))
        .arg(pid.to_string())
        .output()?;
    assert!(o.status.success(), "checkpoint on node 2: {}", err(&o));
    // and back by post-copy: the child's and the threads' memory pulled too
    let o = migrate(
        &c,
        2,
        &[
            "--no-stand-in",
            "--postcopy",
            "--tree",
            &pid.to_string(),
            "1",
        ],
    );
    assert!(o.status.success(), "{}", err(&o));
    grows(&out, after + 3);
    in_order(
        &out,
        "a line lost or doubled in the pipe after the post-copy move",
    );
    assert_eq!(std::fs::read_dir(format!("/proc/{pid}/task"))?.count(), 4);
    let krgd1 = c.nodes.get(&1).unwrap().pid().unwrap() as i32;
    assert_eq!(ppid(pid), krgd1);
    // the reader ends first (its parent never waits for it), then the
    // writer on its broken pipe: krgd, their subreaper, reaps both, so the
    // PIDs are free for the next process moved here
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    let reader: i32 = children.trim().parse().unwrap();
    // SAFETY: kill(2) of the child of the process this test started.
    unsafe { libc::kill(reader, libc::SIGKILL) };
    wait_for(Duration::from_secs(5), "the tree to be reaped", || {
        (state(pid).is_none() && state(reader).is_none()).then_some(())
    })?;
    std::mem::forget(job); // ended: its PID is not ours any more
    Ok(())
}

#[test]
fn refusals_leave_the_process_running() -> Result<()> {
    let _g = serial();
    let c = formed(2)?;
    let out = c.dir.path().join("r.txt");
    let job = start(COUNTER, &out);
    let pid = job.0;
    let p = pid.to_string();
    // not CAN_MIGRATE
    let o = migrate(&c, 1, &[&p, "2"]);
    assert!(!o.status.success());
    assert!(err(&o).contains("is not CAN_MIGRATE"), "{}", err(&o));
    capset(&c, 1, pid);
    // unknown node, this node, not a PID
    let o = migrate(&c, 1, &[&p, "9"]);
    assert!(err(&o).contains("node 9 is unknown"), "{}", err(&o));
    let o = migrate(&c, 1, &[&p, "1"]);
    assert!(err(&o).contains("already runs on node 1"), "{}", err(&o));
    let o = migrate(&c, 1, &["abc", "2"]);
    assert!(
        err(&o).starts_with("migrate: \"abc\" is not a PID"),
        "{}",
        err(&o)
    );
    // not the owner
    let o = Command::new(bin("migrate"))
        .env("KRG_SOCKET", socket(&c, 1))
        .args([&p, "2"])
        .uid(65534)
        .gid(65534)
        .output()?;
    assert!(!o.status.success());
    assert!(
        err(&o).contains("only its owner or root may migrate it"),
        "{}",
        err(&o)
    );
    assert_eq!(err(&o).lines().count(), 1);
    let n = grows(&out, 0);
    assert!(ppid(pid) != c.nodes.get(&2).unwrap().pid().unwrap() as i32);
    // a socket: refused before anything stops
    let sock = c.dir.path().join("s.txt");
    let sjob = start(
        "import socket, sys, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nf = open(sys.argv[1], 'a', buffering=1)\nn = 0\nwhile True:\n    n += 1\n    f.write('%d\\n' % n)\n    time.sleep(0.02)\n",
        &sock,
    );
    let spid = sjob.0;
    capset(&c, 1, spid);
    let s = grows(&sock, 0);
    let o = migrate(&c, 1, &[&spid.to_string(), "2"]);
    assert!(err(&o).contains("sockets do not migrate"), "{}", err(&o));
    grows(&sock, s);
    grows(&out, n);
    for p in [pid, spid] {
        assert_ne!(state(p), Some('T'));
    }
    Ok(())
}

/// A holder of the cluster key that is not a member (a krgd outside the
/// cluster, node 9) cannot push an image, nor feed or commit a transfer.
#[test]
fn an_outsider_cannot_push_an_image() -> Result<()> {
    use krg_proto::auth::{ClusterKey, Identity, Role};
    use krg_proto::client::PeerClient;
    use krg_proto::migrate::{Data, ImageFile, MigratePeerRequest, Offer};
    use krg_proto::peer::{PeerRequest, PeerResponse};
    use krg_proto::proc::{Credentials, ProcPeerRequest};

    let _g = serial();
    let c = formed(2)?;
    let rt = tokio::runtime::Runtime::new()?;
    let key = ClusterKey::new(std::fs::read(&c.key)?.trim_ascii().to_vec())?;
    let me = Identity {
        session: c.session,
        node: 9,
        role: Role::Node,
    };
    let addr = c.nodes.get(&1).unwrap().listen;
    let peer = rt.block_on(PeerClient::connect(addr, &key, me, Duration::from_secs(5)))?;
    let offer = Offer {
        xfer: 1,
        app: 4242,
        sn: 1,
        pids: vec![4242],
        owner: 0,
        creds: Credentials {
            uid: 0,
            gid: 0,
            groups: vec![],
        },
        files: vec![ImageFile {
            name: "global_v1.bin".into(),
            len: 10,
        }],
        identities: vec![],
        postcopy: false,
    };
    for (m, want) in [
        (MigratePeerRequest::Offer(offer), "node 9 is not a member"),
        (
            MigratePeerRequest::Data(Data {
                xfer: 1,
                file: 0,
                offset: 0,
                data: vec![0; 10].into(),
            }),
            "only a member",
        ),
        (
            MigratePeerRequest::Files {
                xfer: 1,
                pids: vec![4242],
                files: vec![ImageFile {
                    name: "global_v1.bin".into(),
                    len: 10,
                }],
            },
            "only a member",
        ),
        (
            MigratePeerRequest::Commit {
                xfer: 1,
                checkpointable: vec![1],
            },
            "only a member",
        ),
        // nor read a post-copy image kept for a target
        (
            MigratePeerRequest::Pull {
                xfer: 1,
                file: 0,
                offset: 0,
                len: 10,
            },
            "only a member",
        ),
        (MigratePeerRequest::Release { xfer: 1 }, "only a member"),
    ] {
        let req = PeerRequest::Proc(ProcPeerRequest::Migrate(m));
        match rt.block_on(peer.call(req, Duration::from_secs(10)))? {
            PeerResponse::Error(e) => assert!(e.message.contains(want), "{}", e.message),
            other => panic!("an outsider's migration message was taken: {other:?}"),
        }
    }
    assert!(!c.dir.path().join("data1/migrate/in").join("9-1").exists());
    Ok(())
}

/// 600 MiB of memory and a line every 20 ms: a transfer long enough to
/// cut in the middle.
const BIG: &str = r#"
import sys, time
buf = bytearray(600 << 20)
for i in range(0, len(buf), 4096):
    buf[i] = 1
f = open(sys.argv[1], "a", buffering=1)
n = 0
while True:
    n += 1
    f.write("%d\n" % n)
    time.sleep(0.02)
"#;

/// Bytes of image data received under `dir` (sparse files count what is
/// allocated).
fn received(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let m = e.metadata().ok()?;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                n += m.blocks() * 512;
            }
        }
    }
    Some(n)
}

/// The lines in `out`, whose first numbers must follow each other (`why`
/// says what a gap or a repeat means).
fn in_order(out: &Path, why: &str) -> String {
    let text = std::fs::read_to_string(out).unwrap();
    let nums: Vec<u64> = text
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{why}");
    text
}

mod faults;
mod memory;
