//! Presence datagrams cannot be replayed (issue 14, item 7). On a bridge of
//! network namespaces (broadcast discovery), an attacker in a namespace of
//! its own captures the real presence datagrams of node 2, node 2 is killed,
//! and the attacker replays them — unchanged, and with a byte changed — for
//! longer than the freshness window: node 2 must still drop out of node 1's
//! table within the presence TTL and never come back.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use krg_tests::{serial, wait_for, TestCluster};

const SETTLE: Duration = Duration::from_secs(15);
/// The presence TTL (3.5 s) plus a polling margin.
const FORGOTTEN_WITHIN: Duration = Duration::from_millis(5500);
/// Longer than the 10 s freshness window.
const REPLAY_FOR: Duration = Duration::from_secs(13);

/// A UDP socket on port 7601 of network namespace `ns`, able to broadcast.
fn udp_in_netns(ns: &str) -> Result<UdpSocket> {
    let path = format!("/run/netns/{ns}");
    // A thread of our own enters the namespace; the socket it makes stays
    // in that namespace when handed back.
    std::thread::spawn(move || -> Result<UdpSocket> {
        let f = std::fs::File::open(&path)?;
        // SAFETY: setns(2) on a namespace fd we opened, for this thread only.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 7601))?;
        s.set_broadcast(true)?;
        Ok(s)
    })
    .join()
    .map_err(|_| anyhow!("netns thread panicked"))?
}

#[test]
fn replayed_presence_of_a_dead_node_does_not_keep_it_present() -> Result<()> {
    let _g = serial();
    // Three namespaces: krgd on 1 and 2; the attacker sits in 3.
    let mut c = TestCluster::namespaces(3)?;
    c.start(1)?;
    c.start(2)?;
    c.wait_present(1, &[2], SETTLE)?;
    let spy = udp_in_netns(&c.lab.as_ref().unwrap().ns(3))?;
    spy.set_read_timeout(Some(Duration::from_secs(3)))?;
    let node2 = Ipv4Addr::new(10, 77, 0, 2);
    let mut captured = Vec::new();
    let mut buf = [0u8; 2048];
    while captured.len() < 3 {
        let (n, from) = spy.recv_from(&mut buf)?;
        if from.ip() == node2 {
            captured.push(buf[..n].to_vec());
        }
    }
    c.node(2)?.kill9();
    let killed = Instant::now();
    let bcast = SocketAddr::from(([10, 77, 0, 255], 7601));
    let mut gone_at: Option<Duration> = None;
    let mut replays = 0u32;
    while killed.elapsed() < REPLAY_FOR {
        for dg in &captured {
            spy.send_to(dg, bcast)?;
            // The same datagram with one byte of its body changed.
            let mut bad = dg.clone();
            bad[2] ^= 0x01;
            spy.send_to(&bad, bcast)?;
            replays += 2;
        }
        let present = c.node_states(1)?.contains_key(&2);
        match (present, gone_at) {
            (false, None) => gone_at = Some(killed.elapsed()),
            (true, Some(at)) => bail!(
                "node 2 was forgotten {at:?} after its death, then present again \
                 {:?} after it, from replayed datagrams",
                killed.elapsed()
            ),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone = gone_at.ok_or_else(|| {
        anyhow!("node 2 was still present {REPLAY_FOR:?} after its death ({replays} replays)")
    })?;
    eprintln!(
        "replay: node 2 forgotten {gone:?} after kill -9 despite {replays} replayed datagrams"
    );
    assert!(
        gone <= FORGOTTEN_WITHIN,
        "node 2 forgotten only after {gone:?}"
    );
    // The receiver said why it dropped them (debug log), and node 1 runs on.
    wait_for(SETTLE, "node 1 answering", || c.node_states(1).ok())?;
    Ok(())
}
