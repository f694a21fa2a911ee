//! `nfsroot serve` for real, without a VM: in a network namespace with a
//! bridge, it starts rpcbind, NFS-Ganesha and dnsmasq from a rendering, the
//! namespace answers TFTP with the rendered files and rpcbind lists NFS and
//! MOUNT, and SIGTERM stops every daemon. Stale or ISC renderings, and bad
//! `boot-test` arguments, are refused with one line.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nfsroot::desc::Subnet;
use nfsroot::lab::net::LabNet;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);

/// A description served from `work`, with an image store holding a small
/// built image and node1's clone; rendered for dnsmasq.
fn rendered(work: &Path) -> (PathBuf, PathBuf, MountSweeper) {
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755)).unwrap();
    let images = work.join("images");
    let i = images.to_str().unwrap();
    let tree = prepared_tree(work);
    let bins = work.join("bins");
    std::fs::create_dir_all(&bins).unwrap();
    std::fs::copy("/bin/true", bins.join("krgd")).unwrap();
    ok(&[
        "image",
        "build",
        "base",
        "--root",
        i,
        "--from-tree",
        tree.to_str().unwrap(),
        "--krg-bin-dir",
        bins.to_str().unwrap(),
    ]);
    let sweeper = MountSweeper(images.clone());
    ok(&["image", "clone", "base", "node1", "--root", i]);
    let out = work.join("out");
    let text = nfsroot::example::EXAMPLE
        .replace("/srv/krg/images", i)
        .replace("boot = \"base@1\"", "boot = \"base\"")
        .replace("10.0.0.", "10.79.0.")
        .replace("# interface = \"eth1\"", "interface = \"krgbr0\"")
        .replace(
            "tftp_root = \"/srv/krg/tftp\"",
            &format!("tftp_root = \"{}\"", out.join("tftp").display()),
        );
    let desc = work.join("cluster.toml");
    std::fs::write(&desc, text).unwrap();
    ok(&[
        "render",
        desc.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dhcp",
        "dnsmasq",
    ]);
    (desc, out, sweeper)
}

/// Read `file` by TFTP from SERVER, from inside network namespace `ns`.
fn tftp_get(ns: &str, file: &str) -> Vec<u8> {
    let ns = ns.to_string();
    let file = file.to_string();
    std::thread::spawn(move || {
        // setns(CLONE_NEWNET) moves this thread only.
        nfsroot::sys::enter_netns(&ns).unwrap();
        let sock = UdpSocket::bind((SERVER, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rrq = vec![0u8, 1];
        rrq.extend_from_slice(file.as_bytes());
        rrq.push(0);
        rrq.extend_from_slice(b"octet\0");
        sock.send_to(&rrq, (SERVER, 69)).unwrap();
        let mut data = Vec::new();
        let mut buf = [0u8; 600];
        loop {
            let (n, from) = sock.recv_from(&mut buf).unwrap();
            assert!(
                n >= 4 && buf[1] == 3,
                "not a TFTP DATA packet: {:?}",
                &buf[..n]
            );
            data.extend_from_slice(&buf[4..n]);
            sock.send_to(&[0, 4, buf[2], buf[3]], from).unwrap();
            if n - 4 < 512 {
                return data;
            }
        }
    })
    .join()
    .unwrap()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn serve_runs_dnsmasq_ganesha_and_rpcbind_in_a_namespace_and_stops_them_all() {
    let t = tempfile::tempdir().unwrap();
    let (desc, out, _sweeper) = rendered(t.path());
    let net = LabNet::new("krgbr0", SERVER, Subnet::parse("10.79.0.0/24").unwrap()).unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_nfsroot"))
        .args(["serve", desc.to_str().unwrap(), "--out"])
        .arg(&out)
        .args(["--netns", &net.ns, "--private-run"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = serve.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let t0 = Instant::now();
    while !log
        .iter()
        .any(|l: &String| l.starts_with(nfsroot::serve::READY))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "serve not ready: {}",
            log.join("\n")
        );
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            log.push(l);
        }
    }
    let names: Vec<String> = net.pids().into_iter().map(comm).collect();
    for d in ["rpcbind", "ganesha.nfsd", "dnsmasq", "nfsroot"] {
        assert!(
            names.iter().any(|n| n == d),
            "{d} not running in {}: {names:?}",
            net.ns
        );
    }
    // TFTP serves the rendered files.
    for f in ["ipxe/boot.ipxe", "ipxe/52-54-00-00-00-01.ipxe"] {
        assert_eq!(
            tftp_get(&net.ns, f),
            std::fs::read(out.join("tftp").join(f)).unwrap(),
            "{f}"
        );
    }
    // Ganesha registered NFS v3 and MOUNT with the namespace's own rpcbind.
    let rpc = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.ns,
            "rpcinfo",
            "-p",
            &SERVER.to_string(),
        ])
        .output()
        .unwrap();
    let rpc = String::from_utf8_lossy(&rpc.stdout);
    assert!(
        rpc.lines()
            .any(|l| l.contains("100003") && l.contains(" 3 ") && l.contains("2049")),
        "{rpc}"
    );
    assert!(rpc.contains("100005"), "no MOUNT service: {rpc}");
    // No NLM: the nodes mount with nolock.
    assert!(!rpc.contains("100021"), "{rpc}");

    nfsroot::sys::kill(serve.id(), libc::SIGTERM);
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = serve.try_wait().unwrap() {
            break s;
        }
        assert!(t1.elapsed() < Duration::from_secs(20), "serve did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        log.push(l);
    }
    assert!(
        log.iter().any(|l| l == "nfsroot serve: stopping"),
        "{}",
        log.join("\n")
    );
    assert_eq!(net.pids(), Vec::<u32>::new(), "daemons left in {}", net.ns);
}

#[test]
fn serve_and_boot_test_refuse_what_they_cannot_use() {
    let t = tempfile::tempdir().unwrap();
    let (desc, out, _sweeper) = rendered(t.path());
    let d = desc.to_str().unwrap();
    let o = out.to_str().unwrap();
    // An ISC rendering is not what serve runs.
    ok(&["render", d, "--out", o]);
    let e = fails(&["serve", d, "--out", o]);
    assert!(
        e.starts_with("nfsroot: ") && e.contains("render --dhcp dnsmasq") && e.lines().count() == 1,
        "{e}"
    );
    ok(&["render", d, "--out", o, "--dhcp", "dnsmasq"]);
    // tftp_root elsewhere: dnsmasq would not serve the rendered tree.
    let moved = t.path().join("moved.toml");
    let text = std::fs::read_to_string(&desc).unwrap().replace(
        &out.join("tftp").display().to_string(),
        "/srv/elsewhere/tftp",
    );
    std::fs::write(&moved, text).unwrap();
    ok(&[
        "render",
        moved.to_str().unwrap(),
        "--out",
        o,
        "--dhcp",
        "dnsmasq",
    ]);
    let e = fails(&["serve", moved.to_str().unwrap(), "--out", o]);
    assert!(e.contains("does not hold the rendered TFTP tree"), "{e}");
    ok(&["render", d, "--out", o, "--dhcp", "dnsmasq"]);
    let e = fails(&["serve", d, "--out", o, "--netns", "../etc"]);
    assert!(e.contains("not a network namespace name"), "{e}");
    let e = fails(&["serve", d, "--out", o, "--netns", "krg-no-such-ns"]);
    assert!(e.contains("/run/netns/krg-no-such-ns"), "{e}");

    let e = fails(&["boot-test", d, "nodeX", "--out", o]);
    assert!(e.contains("no node named nodeX"), "{e}");
    let e = fails(&["boot-test", d, "--out", o]);
    assert!(e.contains("name at least one node"), "{e}");
    let e = fails(&["boot-test", d, "--mac", "52:54:00:00:00:01", "--out", o]);
    assert!(e.contains("is node node1's MAC"), "{e}");
    let e = fails(&["boot-test", d, "--mac", "52:54:00:zz:00:01", "--out", o]);
    assert!(e.contains("not a MAC address"), "{e}");
    let e = fails(&["boot-test", d, "node1", "--host-node-id", "0", "--out", o]);
    assert!(e.contains("node ids are 1..=65535"), "{e}");
}
