//! The krgd on the host side of the lab's bridge: it listens on the boot
//! server's address, polls every described node, forms a cluster of its own
//! at start, and the lab adds each booted node to it with `krgadm nodes add`
//! once the node's krgd is present. Everything is asked through the real
//! `krgadm` (`--json`), as an administrator would.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::net::LabNet;
use crate::error::{NfsrootError, Result};
use crate::sys;

/// One row of `krgadm nodes status --json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct NodeRow {
    pub id: u32,
    pub mac: Option<String>,
    pub address: String,
    pub state: String,
}

pub struct HostKrgd {
    child: Option<Child>,
    pub node_id: u32,
    pub socket: PathBuf,
    pub log: PathBuf,
    krgadm: PathBuf,
}

/// How the host krgd is started.
pub struct HostSpec<'a> {
    pub krg_bin_dir: &'a Path,
    pub dir: &'a Path,
    pub node_id: u32,
    pub session_id: u32,
    pub listen: SocketAddrV4,
    pub peers: Vec<SocketAddrV4>,
    pub key: &'a Path,
    pub heartbeat_ms: Option<u64>,
    pub failure_timeout_ms: Option<u64>,
    pub max_voters: Option<usize>,
}

impl HostKrgd {
    pub fn start(net: &LabNet, s: &HostSpec) -> Result<HostKrgd> {
        let krgd = s.krg_bin_dir.join("krgd");
        let krgadm = s.krg_bin_dir.join("krgadm");
        for b in [&krgd, &krgadm] {
            if !b.is_file() {
                return Err(NfsrootError::Image(format!(
                    "{} not found (build krg: cargo build -p krgd -p krgadm; or pass --krg-bin-dir)",
                    b.display()
                )));
            }
        }
        let socket = s.dir.join("host-krgd.sock");
        let log = s.dir.join("host-krgd.log");
        let out = std::fs::File::create(&log)
            .map_err(|e| NfsrootError::io(format!("creating {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| NfsrootError::io("duplicating a log descriptor", e))?;
        let mut cmd = net.command(&krgd)?;
        cmd.arg("--node-id")
            .arg(s.node_id.to_string())
            .arg("--session-id")
            .arg(s.session_id.to_string())
            .arg("--listen")
            .arg(s.listen.to_string())
            .arg("--cluster-key-file")
            .arg(s.key)
            .arg("--socket")
            .arg(&socket)
            .arg("--data-dir")
            .arg(s.dir.join("host-krgd-data"))
            // The host's own scheduler tree is not the lab's business.
            .arg("--no-scheduler-mount")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        for p in &s.peers {
            cmd.arg("--peer").arg(p.to_string());
        }
        for (flag, v) in [
            ("--heartbeat-ms", s.heartbeat_ms.map(|v| v.to_string())),
            (
                "--failure-timeout-ms",
                s.failure_timeout_ms.map(|v| v.to_string()),
            ),
            ("--max-voters", s.max_voters.map(|v| v.to_string())),
        ] {
            if let Some(v) = v {
                cmd.arg(flag).arg(v);
            }
        }
        let child = sys::daemon_child(&mut cmd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| NfsrootError::Tool {
                tool: "krgd".into(),
                message: e.to_string(),
            })?;
        let mut host = HostKrgd {
            child: Some(child),
            node_id: s.node_id,
            socket,
            log,
            krgadm,
        };
        host.wait_ready()?;
        Ok(host)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(NfsrootError::Tool {
                        tool: "krgd (host side)".into(),
                        message: format!("exited ({status}): {}", self.log_tail(3)),
                    });
                }
            }
            if self.nodes().is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(NfsrootError::Tool {
            tool: "krgd (host side)".into(),
            message: format!("no answer on {} after 30 s", self.socket.display()),
        })
    }

    /// Run `krgadm --socket S ARGS`; Ok holds stdout, Err the one-line error.
    pub fn krgadm(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.krgadm)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .map_err(|e| NfsrootError::Tool {
                tool: "krgadm".into(),
                message: e.to_string(),
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(NfsrootError::Tool {
                tool: format!("krgadm {}", args.join(" ")),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// `krgadm nodes status --json`, parsed.
    pub fn nodes(&self) -> Result<Vec<NodeRow>> {
        let text = self.krgadm(&["--json", "nodes", "status"])?;
        serde_json::from_str(&text).map_err(|e| NfsrootError::Tool {
            tool: "krgadm nodes status --json".into(),
            message: format!("unreadable answer ({e}): {}", text.trim()),
        })
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join(" | ")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        sys::kill(child.id(), libc::SIGTERM);
        let t = Instant::now();
        while let Ok(None) = child.try_wait() {
            if t.elapsed() > Duration::from_secs(10) {
                sys::kill(child.id(), libc::SIGKILL);
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HostKrgd {
    fn drop(&mut self) {
        self.stop();
    }
}
