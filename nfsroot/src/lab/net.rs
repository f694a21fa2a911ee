//! The lab's private network: a network namespace holding a bridge with the
//! boot server's address and one tap device per VM. Nothing is routed out
//! of it. Deleting the namespace removes the bridge and the taps with it;
//! processes still inside are killed first, by PID (`ip netns pids`).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::desc::Subnet;
use crate::error::{NfsrootError, Result};
use crate::sys;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Run `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new(crate::tools::find_tool("ip")?)
        .args(args)
        .output()
        .map_err(|e| NfsrootError::Tool {
            tool: "ip".into(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NfsrootError::Tool {
            tool: format!("ip {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace with a bridge; deleted (with everything in it) on drop.
pub struct LabNet {
    pub ns: String,
    pub bridge: String,
    taps: u32,
}

impl LabNet {
    /// Make the namespace, the bridge `bridge` carrying `server/prefix`, and
    /// loopback. The namespace name carries this process's PID.
    pub fn new(bridge: &str, server: std::net::Ipv4Addr, subnet: Subnet) -> Result<LabNet> {
        let ns = format!(
            "krgnb{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &ns])?;
        let net = LabNet {
            ns,
            bridge: bridge.to_string(),
            taps: 0,
        };
        let cidr = format!("{server}/{}", subnet.prefix);
        ip(&["-n", &net.ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &net.ns, "link", "add", bridge, "type", "bridge"])?;
        // No STP delay: a port forwards as soon as it is up.
        ip(&[
            "-n",
            &net.ns,
            "link",
            "set",
            bridge,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ])?;
        ip(&[
            "-n", &net.ns, "addr", "add", &cidr, "brd", "+", "dev", bridge,
        ])?;
        ip(&["-n", &net.ns, "link", "set", bridge, "up"])?;
        Ok(net)
    }

    /// A new tap device on the bridge, for one VM.
    pub fn add_tap(&mut self) -> Result<String> {
        self.taps += 1;
        let tap = format!("tap{}", self.taps);
        ip(&["-n", &self.ns, "tuntap", "add", "dev", &tap, "mode", "tap"])?;
        ip(&[
            "-n",
            &self.ns,
            "link",
            "set",
            &tap,
            "master",
            &self.bridge,
            "up",
        ])?;
        Ok(tap)
    }

    /// A command run inside the namespace (`ip netns exec` replaces itself
    /// with the program, so the child's PID is the program's).
    pub fn command(&self, program: &Path) -> Result<Command> {
        let mut c = Command::new(crate::tools::find_tool("ip")?);
        c.args(["netns", "exec", &self.ns]).arg(program);
        Ok(c)
    }

    /// PIDs of the processes inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        ip(&["netns", "pids", &self.ns])
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for LabNet {
    fn drop(&mut self) {
        // Whatever is still inside (a daemon that outlived its parent) goes
        // first: SIGTERM, then SIGKILL after 5 s.
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in &pids {
                sys::kill(*p, sig);
            }
            let t = Instant::now();
            while !self.pids().is_empty() && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = ip(&["netns", "del", &self.ns]);
    }
}
