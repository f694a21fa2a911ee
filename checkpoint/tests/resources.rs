//! What real programs hold, saved and restored: eventfd, timerfd,
//! signalfd and epoll (with its registrations), …
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
#![allow(clippy::zombie_processes)] // children are reaped by kill_reap

mod common;

use std::process::{Command, Stdio};

use common::*;

/// Forge the node file `node` (from its `genuine` bytes) with `forge`: a
/// restart of SN 1 must fail in one line containing `why`, leaving
/// nothing running.
fn refused_forged_node(
    store: &std::path::Path,
    pid: i32,
    node: &std::path::Path,
    genuine: &[u8],
    forge: impl FnOnce(&mut checkpoint::image::NodeImage),
    why: &str,
) {
    use checkpoint::image::{self, FileKind, NodeImage};
    std::fs::write(node, genuine).unwrap();
    let mut n: NodeImage = image::read_file(node, FileKind::Node).unwrap().meta;
    forge(&mut n);
    std::fs::write(node, image::encode(FileKind::Node, &n).unwrap()).unwrap();
    let o = restart_out(store, pid, 1);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a forged image was restored ({why})");
    assert!(err.contains(why), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!alive(pid), "nothing left running");
}

/// The node file of SN 1 of `pid`'s checkpoint in `store`.
fn node_file(store: &std::path::Path, pid: i32) -> std::path::PathBuf {
    std::fs::read_dir(store.join(pid.to_string()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("node_") && name.ends_with("_v1.bin")
        })
        .unwrap()
}

#[test]
fn epoll_timerfd_eventfd_signalfd_event_loop() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "evloop");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.stderr(Stdio::null());
    let (child, out) = spawn_reading(cmd);
    let pid = guard.add(child.id() as i32);
    wait_until("event loop runs", || last_of(&out.get()) >= 3);
    let o = checkpoint_out(&store, pid, &["--kill"]);
    ok(&o, "checkpoint");
    kill_reap(pid);
    let at = last_of(&out.get());
    let log = tmp.path().join("restored.txt");
    ok(&restart_into(&store, pid, 1, &[], &log), "restart");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    // the timer fires on, the eventfd counts every tick, the semaphore gives
    wait_until("restored loop runs", || counter_lines(&text()).len() >= 5);
    let first = counter_lines(&text())[0];
    assert!(
        first >= at && first <= at + 2,
        "resumed at {first}, saved near {at}"
    );
    // SAFETY: plain kill of the restored process.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    wait_until("the signalfd reads SIGUSR1", || {
        text().contains("got SIGUSR1")
    });
    kill_reap(pid);
}

/// A periodic timer with expirations left unread at checkpoint time (the
/// kernel holds it stopped until they are read, it_value 0) keeps firing
/// after restart: restoring it as shown would have disarmed it.
#[test]
fn a_periodic_timer_due_at_checkpoint_keeps_firing() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "timerdue");
    let store = tmp.path().join("store");
    let go = tmp.path().join("go");
    let mut cmd = Command::new(&exe);
    cmd.arg(&go).stderr(Stdio::null());
    let (child, out) = spawn_reading(cmd);
    let pid = guard.add(child.id() as i32);
    wait_until("timer armed", || last_of(&out.get()) >= 1);
    // several periods pass unread: the timer is due and stopped
    std::thread::sleep(std::time::Duration::from_millis(100));
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    let log = tmp.path().join("restored.txt");
    ok(&restart_into(&store, pid, 1, &[], &log), "restart");
    std::fs::write(&go, b"").unwrap();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("ten reads after restart", || {
        counter_lines(&text()).last() == Some(&11)
    });
    kill_reap(pid);
}

/// "N ok" lines only (the program also prints other lines).
fn oks(text: &str) -> Vec<u64> {
    let mut v = Vec::new();
    for l in text.lines() {
        assert!(!l.contains("BAD"), "program reported a problem: {l}");
        if let Some(n) = l.strip_suffix(" ok").and_then(|n| n.parse().ok()) {
            v.push(n);
        }
    }
    v
}

fn port_of(text: &str, what: &str) -> u16 {
    text.lines()
        .find_map(|l| l.strip_prefix(what)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Unix socketpairs (stream and datagram, with bytes and messages queued),
/// a listening unix socket, a UDP socket and a listening TCP socket with
/// an established connection (TCP_REPAIR): all work again after restart,
/// and the client connected before the checkpoint goes on on the same
/// connection.
#[test]
fn sockets_of_every_kind() {
    use std::io::{Read, Write};
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "sockets");
    let store = tmp.path().join("store");
    let path = tmp.path().join("listen.sock");
    let mut cmd = Command::new(&exe);
    cmd.arg(&path).stderr(Stdio::null());
    let (child, out) = spawn_reading(cmd);
    let pid = guard.add(child.id() as i32);
    wait_until("the program listens", || port_of(&out.get(), "tcp ") != 0);
    let (udp, tcp) = (port_of(&out.get(), "udp "), port_of(&out.get(), "tcp "));
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", tcp)).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let echo = |c: &mut std::net::TcpStream, s: &str| {
        c.write_all(s.as_bytes()).unwrap();
        let mut b = vec![0u8; 4 + s.len()];
        c.read_exact(&mut b).unwrap();
        String::from_utf8_lossy(&b).into_owned()
    };
    assert_eq!(echo(&mut conn, "one\n"), "tcp:one\n");
    wait_until("pings queue up", || oks(&out.get()).len() >= 8);
    let o = checkpoint_out(&store, pid, &["--kill"]);
    ok(&o, "checkpoint");
    for p in image_pids(&store, pid, 1) {
        kill_reap(p);
    }
    let at = oks(&out.get()).last().copied().unwrap_or(0);
    let log = tmp.path().join("restored.txt");
    ok(&restart_into(&store, pid, 1, &[], &log), "restart");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    // pings and pongs (and datagrams) go on in order: nothing lost, nothing twice
    wait_until("restored program runs", || oks(&text()).len() >= 10);
    assert!(oks(&text())[0] <= at + 1);
    // the connection made before the checkpoint is the same one
    assert_eq!(echo(&mut conn, "two\n"), "tcp:two\n");
    // new ones too
    let mut c2 = std::net::TcpStream::connect(("127.0.0.1", tcp)).unwrap();
    c2.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    assert_eq!(echo(&mut c2, "three\n"), "tcp:three\n");
    let mut us = std::os::unix::net::UnixStream::connect(&path).unwrap();
    us.write_all(b"hi").unwrap();
    let mut got = String::new();
    us.read_to_string(&mut got).unwrap();
    assert_eq!(got, "unix:hi");
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    u.send_to(b"ping", ("127.0.0.1", udp)).unwrap();
    let mut b = [0u8; 16];
    let n = u.recv(&mut b).unwrap();
    assert_eq!(&b[..n], b"ping");
    wait_until("still fine", || oks(&text()).len() >= 15);
    for p in image_pids(&store, pid, 1) {
        kill_reap(p);
    }
}

/// Files in flight on unix sockets (sent with SCM_RIGHTS, not received
/// yet) come back in flight, in their messages: a pipe's read end whose
/// write end the process kept (with the bytes buffered in the pipe), both
/// ends of a pipe only in flight (seqpacket), a file at its offset, and a
/// socket in flight on itself. A unix stream socket shut down for writing
/// still cannot write, and its peer reads the end after the queued data.
/// A listening socket whose path was removed keeps its name, and the path
/// stays removed. Two connections of the tree waiting to be accepted are
/// accepted after restart, in their order. Datagrams queued on an
/// unconnected socket come with their senders' addresses.
#[test]
fn files_in_flight_on_unix_sockets_come_back() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exe = build_c(dir, "scmrights");
    std::fs::write(dir.join("data"), "0123456789").unwrap();
    let store = dir.join("store");
    let mut cmd = Command::new(&exe);
    cmd.arg(dir).stdout(Stdio::null()).stderr(Stdio::null());
    let pid = guard.add(spawn(cmd).id() as i32);
    wait_until("the files are in flight", || dir.join("ready").exists());
    let o = checkpoint_out(&store, pid, &["--kill"]);
    ok(&o, "checkpoint");
    kill_reap(pid);
    let d = run(Command::new(bin("checkpoint"))
        .arg("inspect")
        .arg(store.join(pid.to_string()))
        .arg("1"));
    let shown = String::from_utf8_lossy(&d.stdout);
    assert!(
        shown.contains("2 file(s) in flight"),
        "the decoder shows them: {shown}"
    );
    // a forged list: a message the socket does not have, a socket the
    // tree does not have — one line, nothing left running
    let node = node_file(&store, pid);
    let genuine = std::fs::read(&node).unwrap();
    let no_message = |n: &mut checkpoint::image::NodeImage| n.in_flight[0].msg = 99;
    refused_forged_node(&store, pid, &node, &genuine, no_message, "in flight");
    let no_socket = |n: &mut checkpoint::image::NodeImage| n.in_flight[0].sock = 1;
    refused_forged_node(&store, pid, &node, &genuine, no_socket, "in flight");
    std::fs::write(&node, genuine).unwrap();
    ok(&restart_out(&store, pid, 1), "restart");
    assert_eq!(ask_usr1(dir, pid, "check"), "ok");
    kill_reap(pid);
}

/// An nftables table dropping the TCP SYNs sent to a port of 127.0.0.1,
/// removed when dropped.
struct DropSyns(String);

impl DropSyns {
    fn new(port: u16) -> Self {
        let table = format!("krgtest_syn_{port}");
        let script = format!(
            "add table inet {table}\nadd chain inet {table} input {{ type filter hook input priority -10 ; }}\nadd rule inet {table} input tcp dport {port} tcp flags syn drop\n"
        );
        nft(&script);
        DropSyns(table)
    }
}

impl Drop for DropSyns {
    fn drop(&mut self) {
        nft(&format!("delete table inet {}\n", self.0));
    }
}

fn nft(script: &str) {
    use std::io::Write;
    let mut c = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft runs");
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success(), "nft {script}");
}

/// The TCP states of this host's connections to `port` (from /proc/net/tcp,
/// the local side of each as hex state codes), for the message of a failure.
fn tcp_states(port: u16) -> String {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let want = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter(|l| l.contains(&want))
        .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Connections half closed when checkpointed come back half closed: one
/// whose own side shut down writing (FIN_WAIT2) still reads what the peer
/// sends after the restart, then its end, and cannot write; one whose peer
/// shut down (CLOSE_WAIT) reads the queued data then its end, and still
/// writes; one that shut down with its send queue full and unacknowledged
/// (FIN_WAIT1) delivers all of it, then its end; one whose connect was under
/// way (SYN_SENT, its SYNs dropped) connects once they pass. The peer
/// (this test) sees no reset, its data and the ends.
#[test]
fn half_closed_tcp_connections_come_back() {
    use std::io::{Read, Write};
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exe = build_c(dir, "tcphalf");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // connection 4's SYNs are dropped until after the restart
    let late = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let late_port = late.local_addr().unwrap().port();
    let drop_syns = DropSyns::new(late_port);
    let mut cmd = Command::new(&exe);
    cmd.arg(dir)
        .arg(port.to_string())
        .arg(late_port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = guard.add(spawn(cmd).id() as i32);
    let timeout = Some(std::time::Duration::from_secs(20));
    // each connection says which it is first; 1 and 2 go on before 3 starts
    let mut by_id = std::collections::HashMap::new();
    while by_id.len() < 3 {
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(timeout).unwrap();
        let mut id = [0u8; 1];
        c.read_exact(&mut id).unwrap();
        if id[0] == b'1' {
            let mut got = String::new();
            c.read_to_string(&mut got).unwrap();
            assert_eq!(got, "hello");
        }
        if id[0] == b'2' {
            c.write_all(b"data").unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
        }
        by_id.insert(id[0], c);
    }
    let (mut c1, mut c2, mut c3) = (
        by_id.remove(&b'1').unwrap(),
        by_id.remove(&b'2').unwrap(),
        by_id.remove(&b'3').unwrap(),
    );
    wait_until("the connections are half closed", || {
        dir.join("ready").exists()
    });
    let store = dir.join("store");
    // a checkpoint the job runs on from (its connections in and out of
    // repair mode), then one that ends it
    ok(&checkpoint_out(&store, pid, &[]), "checkpoint");
    let o = checkpoint_out(&store, pid, &["--kill"]);
    ok(&o, "checkpoint --kill");
    let sn = saved_sn(&o);
    kill_reap(pid);
    ok(&restart_out(&store, pid, sn), "restart");
    c1.write_all(b"world").unwrap();
    c1.shutdown(std::net::Shutdown::Write).unwrap();
    // connection 4, under way when checkpointed, connects once its SYNs pass
    drop(drop_syns);
    late.set_nonblocking(false).unwrap();
    let accepted = std::thread::spawn(move || late.accept().map(|(c, _)| c));
    // connection 3: everything its full send queue held, then its end
    let sent: usize = std::fs::read_to_string(dir.join("sent3"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(sent > 0);
    let mut rest = Vec::new();
    c3.read_to_end(&mut rest).unwrap();
    assert_eq!(rest.len(), sent, "bytes of connection 3");
    assert!(
        rest.iter().enumerate().all(|(i, &b)| b as usize == i % 251),
        "connection 3's bytes in order"
    );
    assert_eq!(
        ask_usr1(dir, pid, "check"),
        "ok",
        "states {}",
        tcp_states(port)
    );
    let mut c4 = accepted.join().unwrap().unwrap();
    c4.set_read_timeout(timeout).unwrap();
    let mut four = [0u8; 1];
    c4.read_exact(&mut four).unwrap();
    assert_eq!(&four, b"4");
    let mut reply = String::new();
    c2.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "reply");
    kill_reap(pid);
}

/// Socket options set beyond a new socket's (priority, low-water mark,
/// TOS, TTL, free bind, keepalive timers, IPv6 traffic class and hops,
/// SO_PASSSEC, the bound device, linger, a receive timeout, a locked BPF
/// filter) have their values again after restart.
#[test]
fn socket_options_come_back() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exe = build_c(dir, "sockopts");
    let mut cmd = Command::new(&exe);
    cmd.arg(dir).stdout(Stdio::null()).stderr(Stdio::null());
    let pid = guard.add(spawn(cmd).id() as i32);
    wait_until("options set", || dir.join("ready").exists());
    assert_eq!(ask_usr1(dir, pid, "check"), "ok", "before");
    let store = dir.join("store");
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    ok(&restart_out(&store, pid, 1), "restart");
    assert_eq!(ask_usr1(dir, pid, "check"), "ok", "after restart");
    kill_reap(pid);
}

/// A user's image forged to give its socket SO_MARK (CAP_NET_ADMIN) or an
/// option restart does not set: refused in one line, nothing left running
/// (the options are set as the user, so the kernel says no to the first).
#[test]
fn forged_socket_options_are_refused() {
    use checkpoint::image::{NodeImage, SockOption};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let exe = build_c(dir, "sockopts");
    let mut cmd = Command::new(&exe);
    cmd.arg(dir)
        .uid(65534)
        .gid(65534)
        .current_dir("/")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let pid = guard.add(spawn(cmd).id() as i32);
    wait_until("options set", || dir.join("ready").exists());
    let store = dir.join("store");
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    let node = node_file(&store, pid);
    let genuine = std::fs::read(&node).unwrap();
    for (forged, why) in [
        (
            SockOption::int(libc::SOL_SOCKET, libc::SO_MARK, 7),
            "Operation not permitted",
        ),
        (
            SockOption::int(libc::SOL_SOCKET, libc::SO_DEBUG, 1),
            "not one restart sets",
        ),
    ] {
        let add = |n: &mut NodeImage| {
            let with_options = n.sockets.iter_mut().find(|e| !e.options.is_empty());
            with_options.unwrap().options.push(forged);
        };
        refused_forged_node(&store, pid, &node, &genuine, add, why);
    }
    std::fs::write(&node, genuine).unwrap();
    ok(&restart_out(&store, pid, 1), "restart");
    assert_eq!(ask_usr1(dir, pid, "check"), "ok");
    kill_reap(pid);
}
