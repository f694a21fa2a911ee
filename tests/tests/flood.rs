//! Denial of service before authentication (issue 14, item 6), against a
//! real krgd of a 3-node loopback cluster: while the Raft leader's peer port
//! is flooded (connections announcing 17 MiB frames and pushing data,
//! slowloris connections trickling a byte at a time from many source
//! addresses) and its admin socket is flooded by ordinary users (connections
//! announcing the largest request a user may send and sending most of it,
//! then holding on; requests announcing 17 MiB),
//! its RSS stays under 32 MiB, `krgadm cluster status` answers, and a member
//! killed meanwhile is detected as failed within the failure timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use krg_tests::{rss_kib, serial, wait_for, KillOnDrop, TestCluster};

const SETTLE: Duration = Duration::from_secs(10);
const FLOOD: Duration = Duration::from_secs(8);
/// What the flood may add to krgd's RSS. The issue's goal (RSS ≤ 32 MiB
/// under flood) is for the installed, release build, which idles at about
/// 12 MiB (docs/cluster-bench.md); this test runs the debug build, whose
/// code pages alone put it at about 25 MiB before the flood, so it bounds
/// what the flood adds (it was hundreds of MiB before the pre-auth limits;
/// on Dec 6 2026 it added 11.6-13.8 MiB from run to run, the allocator's
/// arenas included, so 12 MiB failed now and then).
const RSS_GROWTH_LIMIT_KIB: u64 = 16 * 1024;
const FAILURE_TIMEOUT: Duration = Duration::from_millis(1000);

/// A TCP connection to `to` from the loopback address `from` (127.0.0.x:
/// each is another source address for krgd's per-source limit).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2_free_connect(from, to)?;
    sock.set_write_timeout(Some(Duration::from_millis(200)))?;
    Ok(sock)
}

/// bind(from:0) then connect(to), with libc (no socket2 dependency).
fn socket2_free_connect(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = to else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    // SAFETY: plain socket(2); the fd is owned by the TcpStream below or closed.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own; TcpStream closes it on drop.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let local = sin(from, 0);
    let remote = sin(*to.ip(), to.port());
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid sockaddr_in of the given length on our own socket.
    if unsafe { libc::bind(fd, (&raw const local).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::connect(fd, (&raw const remote).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// Connections announcing a 17 MiB frame, then pushing 1 MiB of data: krgd
/// must refuse them from the header, before reading or reserving anything.
fn huge_announcements(to: SocketAddr, stop: &AtomicBool, count: &AtomicU64) {
    let junk = vec![0x5au8; 1 << 20];
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let from = Ipv4Addr::new(127, 0, 1, (i % 200 + 1) as u8);
        if let Ok(mut s) = connect_from(from, to) {
            count.fetch_add(1, Ordering::Relaxed);
            let _ = s.write_all(&[0x01, 0x10, 0x00, 0x00, 0, 0, 0, 0]);
            let _ = s.write_all(&junk);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Slowloris: 600 connections from 10 source addresses, each sending a
/// handshake frame announcing 4 KiB one byte at a time, reopened when krgd
/// drops them: more than krgd's per-source and total pre-auth limits.
fn slowloris(to: SocketAddr, stop: &AtomicBool, count: &AtomicU64, dropped: &AtomicU64) {
    const HEADER: [u8; 8] = [0, 0, 0x10, 0, 0, 0, 0, 0];
    let mut conns: Vec<Option<(TcpStream, usize)>> = (0..600).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        for (i, slot) in conns.iter_mut().enumerate() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match slot {
                Some((s, sent)) => {
                    let byte = HEADER.get(*sent).copied().unwrap_or(0);
                    *sent += 1;
                    if s.write_all(&[byte]).is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        *slot = None;
                    }
                }
                None => {
                    let from = Ipv4Addr::new(127, 0, 2, (i % 10 + 1) as u8);
                    if let Ok(s) = connect_from(from, to) {
                        count.fetch_add(1, Ordering::Relaxed);
                        *slot = Some((s, 0));
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Run by python3 as an ordinary user: hold up to N connections to the
/// admin socket, each announcing the largest request an ordinary user may
/// send (16 KiB) and sending 12 KiB of it; reopen those krgd closes; on every
/// round also announce a 17 MiB request; print what krgd answered.
const ADMIN_FLOODER: &str = r#"
import socket, struct, sys, time
path, secs, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
end = time.time() + secs
conns, opened, refusals, closed = [], 0, set(), 0
def connect(announce, body):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        s.setblocking(False)
        s.send(struct.pack(">II", announce, 0))
        s.send(body)
    except OSError:
        pass
    return s
while time.time() < end:
    conns.append(connect(17 << 20, b"\0" * 4096))
    while len(conns) < n + 1:
        conns.append(connect(16 * 1024, b"\0" * (12 * 1024)))
        opened += 1
    alive = []
    for s in conns:
        try:
            d = s.recv(4096)
        except BlockingIOError:
            alive.append(s)
            continue
        except OSError:
            d = b""
        if b"the most" in d or b"limit" in d:
            refusals.add("".join(ch for ch in d[8:].decode("utf-8", "replace") if ch.isprintable()))
        closed += 1
        s.close()
    conns = alive
    time.sleep(0.05)
print("opened", opened, "closed", closed)
for r in sorted(refusals):
    print("refused:", r)
"#;

/// Flood the admin socket as `uid` with `n` connections for `secs`.
fn admin_flooder(socket: &Path, uid: u32, n: usize, secs: f64) -> Result<KillOnDrop> {
    let child = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .args(["/usr/bin/python3", "-c", ADMIN_FLOODER])
        .arg(socket)
        .arg(secs.to_string())
        .arg(n.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    Ok(KillOnDrop(child))
}

fn krgadm_as(c: &TestCluster, via: u32, uid: u32, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(krg_tests::bin("krgadm"))
        .arg("--socket")
        .arg(&c.nodes[&via].socket)
        .args(args)
        .output()?)
}

#[test]
fn flood_before_authentication_keeps_krgd_small_and_detecting_failures() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::loopback(3)?;
    c.extra_args = vec![
        "--failure-timeout-ms".into(),
        FAILURE_TIMEOUT.as_millis().to_string(),
    ];
    for id in 1..=3 {
        c.start(id)?;
    }
    c.wait_present(1, &[1, 2, 3], SETTLE)?;
    c.krgadm_ok(1, &["cluster", "start"])?;
    c.wait_agreement(&[1, 2, 3], SETTLE)?;
    let target = c.leader(1).expect("a leader");
    let victim = [1, 2, 3].into_iter().find(|id| *id != target).unwrap();
    let pid = c.nodes[&target].pid().expect("target pid");
    let listen = c.nodes[&target].listen;
    let socket = c.nodes[&target].socket.clone();
    // Open the test's private directory as a node's /run/krg is.
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let rss_before = rss_kib(pid).expect("rss");

    let stop = Arc::new(AtomicBool::new(false));
    let huge = Arc::new(AtomicU64::new(0));
    let slow = Arc::new(AtomicU64::new(0));
    let slow_dropped = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..2 {
        let (stop, huge) = (stop.clone(), huge.clone());
        threads.push(std::thread::spawn(move || {
            huge_announcements(listen, &stop, &huge)
        }));
    }
    {
        let (stop, slow, dropped) = (stop.clone(), slow.clone(), slow_dropped.clone());
        threads.push(std::thread::spawn(move || {
            slowloris(listen, &stop, &slow, &dropped)
        }));
    }
    // Three ordinary users, 20 connections each: over the per-uid limit
    // (16) and, together, over the limit for all users (32). The first
    // gets a head start, so that it meets its own limit before the three
    // together meet theirs (started at once, the others could take the
    // slots first, and no user ever held 16: a CI run saw it).
    let secs = FLOOD.as_secs_f64();
    let mut flooders = vec![admin_flooder(&socket, 60001, 20, secs)?];
    std::thread::sleep(Duration::from_millis(300));
    for uid in [60002, 60003] {
        flooders.push(admin_flooder(&socket, uid, 20, secs)?);
    }

    let start = Instant::now();
    let mut max_rss = rss_before;
    let mut status_ok = 0;
    let mut killed_at: Option<Instant> = None;
    let mut detected_after: Option<Duration> = None;
    while start.elapsed() < FLOOD {
        max_rss = max_rss.max(rss_kib(pid).expect("krgd still runs"));
        if killed_at.is_none() && start.elapsed() > Duration::from_secs(3) {
            c.node(victim)?.kill9();
            killed_at = Some(Instant::now());
        }
        if let (Some(at), None) = (killed_at, detected_after) {
            if c.node_states(target)?.get(&victim).map(String::as_str) == Some("failed") {
                detected_after = Some(at.elapsed());
            }
        } else {
            let out = c.krgadm(target, &["cluster", "status"])?;
            assert!(
                out.status.success(),
                "cluster status during the flood: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            status_ok += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Another ordinary user gets in, or is told in one line why not now.
    let other = krgadm_as(&c, target, 60004, &["cluster", "status"])?;
    max_rss = max_rss.max(rss_kib(pid).expect("krgd still runs"));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let mut reports = String::new();
    for mut f in flooders {
        // The flooders stop by themselves after the flood's duration.
        for pipe in [
            f.0.stdout.take().map(|p| Box::new(p) as Box<dyn Read>),
            f.0.stderr.take().map(|p| Box::new(p) as Box<dyn Read>),
        ]
        .into_iter()
        .flatten()
        {
            let mut pipe = pipe;
            pipe.read_to_string(&mut reports)?;
        }
        let _ = f.0.wait();
    }
    let log = c.nodes[&target].log_text();
    eprintln!(
        "flood: krgd RSS {} KiB before, {} KiB at most during {FLOOD:?} \
         ({} huge-frame and {} slowloris connections, {} slowloris dropped by krgd); \
         {status_ok} cluster status answered; victim detected failed after {:?}\n{reports}",
        rss_before,
        max_rss,
        huge.load(Ordering::Relaxed),
        slow.load(Ordering::Relaxed),
        slow_dropped.load(Ordering::Relaxed),
        detected_after
    );
    assert!(
        max_rss.saturating_sub(rss_before) <= RSS_GROWTH_LIMIT_KIB,
        "krgd RSS grew from {rss_before} to {max_rss} KiB (limit +{RSS_GROWTH_LIMIT_KIB})"
    );
    let Some(detected) = detected_after else {
        bail!("node {victim}, killed during the flood, was never seen failed");
    };
    // Failure timeout, plus one heartbeat round and the Raft commit that
    // publishes the failure, plus the test's own polling.
    assert!(
        detected <= FAILURE_TIMEOUT + Duration::from_millis(1000),
        "failure detected after {detected:?}"
    );
    assert!(status_ok > 10, "cluster status answered {status_ok} times");
    // The flooders' slots churn (krgd closes their oversized requests), so
    // the other user may get in; if not, one line says why.
    let other_err = String::from_utf8_lossy(&other.stderr);
    assert!(
        other.status.success()
            || (other_err.contains("the most it takes") && other_err.lines().count() == 1),
        "{other_err}"
    );
    // The flood was real: krgd dropped slowloris connections and refused
    // admin connections over each limit, and said so in its log.
    assert!(slow_dropped.load(Ordering::Relaxed) > 0);
    assert!(
        reports.contains("already holds 16 connections"),
        "{reports}"
    );
    assert!(
        reports.contains("connections of ordinary users"),
        "{reports}"
    );
    assert!(reports.contains("over the 16384-byte limit"), "{reports}");
    assert!(log.contains("too many unauthenticated peer connections"));
    assert!(log.contains("refused peer connection"));
    // And the cluster goes on afterwards.
    wait_for(SETTLE, "status after the flood", || {
        c.krgadm(target, &["cluster", "status"])
            .ok()
            .filter(|o| o.status.success())
    })?;
    Ok(())
}
