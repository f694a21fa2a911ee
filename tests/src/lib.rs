//! Harness for cluster-level tests and benchmarks: starts real `krgd`
//! processes (on loopback ports, or inside network namespaces joined by a
//! bridge), drives them with the real `krgadm`, and tears everything down —
//! processes by PID, namespaces by name — when dropped.
//!
//! - [`TestCluster`] (`cluster.rs`): the krgds of one session; [`Node`]
//!   (`node.rs`): one of them; [`NetLab`]: namespaces, veth and a bridge
//! - [`admin`], [`migrating`], [`balance`], [`faults`], [`serf`]: what
//!   each group of tests drives through them
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

pub mod admin;
pub mod balance;
mod cluster;
pub mod faults;
pub mod migrating;
pub mod netlab;
mod node;
pub mod serf;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

pub use cluster::{detach_mounts_under, TestCluster, Topology};
pub use netlab::NetLab;
pub use node::{KillOnDrop, Node};

/// Directory holding the workspace's built binaries (target/debug or target/release).
pub fn bin_dir() -> PathBuf {
    // Test and bench executables live in target/<profile>/deps.
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target/debug"))
}

/// Path of a workspace binary. The first call of a test process runs
/// `cargo build` for krgd, krgadm and checkpoint (restart: migrations) (a
/// no-op when they are up to date), so
/// `cargo test -p krg-tests` never tests a stale daemon.
pub fn bin(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let _ = cargo_build(&["krgd", "krgadm", "checkpoint"]).status();
    });
    bin_dir().join(name)
}

mod nested_cargo;
pub use nested_cargo::cargo_build;

/// Cluster tests take this lock so that only one cluster runs at a time:
/// failure detection is about timing, and the machine has two cores.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range when
/// possible: dozens of daemons connecting to each other draw outgoing ports
/// from that range, and one could take a port reserved for a node that has
/// not started yet. The listener is closed again, so a rare race with
/// another process is possible. A port is never given twice in one test
/// process: the free ports drawn for one cluster's nodes one after the
/// other were, now and then, the same (its second krgd then failed with
/// "Address already in use").
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for _ in 0..16 {
        let port = draw_port();
        if given.insert(port) {
            return port;
        }
    }
    draw_port()
}

fn draw_port() -> u16 {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if first_ephemeral > 20_000 {
        let span = u32::from(first_ephemeral - 20_000);
        let mut seed = [0u8; 4];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            use std::io::Read;
            let _ = f.read_exact(&mut seed);
        }
        let mut x = u32::from_le_bytes(seed);
        for _ in 0..64 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let port = 20_000 + (x >> 8) % span;
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
                drop(l);
                return port as u16;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Poll `f` every 20 ms until it returns Some, or fail after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 32 random bytes, base64-free hex, as a key file body.
pub fn random_key() -> String {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Resident set size of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `cmd` starts with no descriptor above 2: a process to checkpoint or
/// migrate must hold no stray descriptor (cargo's test harness leaves
/// some open), or it is refused.
pub fn without_stray_fds(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: close_range between fork and exec touches only the child's
    // descriptor table and is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0);
            Ok(())
        });
    }
    cmd
}

/// `cmd` with no stdio (all /dev/null) and none of the test's other fds.
pub fn detached_stdio(cmd: &mut Command) -> &mut Command {
    without_stray_fds(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
}

#[cfg(test)]
mod tests {
    /// Ports drawn one after the other (a cluster's nodes) are distinct:
    /// with about 12,000 to draw from, two in a row were the same in one
    /// CI run in a few hundred clusters.
    #[test]
    fn free_ports_are_never_given_twice() {
        let ports: Vec<u16> = (0..500).map(|_| super::free_port()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(!distinct.contains(&0));
    }
}
