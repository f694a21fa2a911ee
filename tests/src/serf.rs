//! serf, the reference for the cluster benchmark: agents started and killed
//! by PID, and a client of serf's msgpack RPC (`members`) kept open, so that
//! the bench polls serf the way it polls krgd (a long-lived connection per
//! node, no process spawned per look).

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::{free_port, wait_for};

/// One serf agent, killed (SIGKILL, by PID) and reaped when dropped.
pub struct SerfAgent {
    pub name: String,
    pub bind: String,
    pub rpc: String,
    child: Option<Child>,
}

impl SerfAgent {
    pub fn start(dir: &Path, i: u32) -> Result<Self> {
        let name = format!("n{i}");
        let bind = format!("127.0.0.1:{}", free_port());
        let rpc = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join(format!("serf{i}.log")))?;
        let child = Command::new("serf")
            .arg("agent")
            .arg(format!("-node={name}"))
            .arg(format!("-bind={bind}"))
            .arg(format!("-rpc-addr={rpc}"))
            .arg("-log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting serf agent")?;
        let mut agent = Self {
            name,
            bind,
            rpc,
            child: Some(child),
        };
        let rpc = agent.rpc.clone();
        wait_for(Duration::from_secs(10), &format!("serf {i} RPC"), || {
            SerfRpc::connect(&rpc).ok().map(|_| ())
        })?;
        if !agent.is_running() {
            bail!("serf agent {i} exited at start");
        }
        Ok(agent)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SerfAgent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `serf join` from the agent at `rpc` to `addrs` (the CLI, as an
/// administrator would run it).
pub fn serf_join(rpc: &str, addrs: &[&str]) -> Result<()> {
    let out = Command::new("serf")
        .args(["join", &format!("-rpc-addr={rpc}")])
        .args(addrs)
        .output()?;
    if !out.status.success() {
        bail!(
            "serf join failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct Header<'a> {
    #[serde(rename = "Command")]
    command: &'a str,
    #[serde(rename = "Seq")]
    seq: u64,
}

#[derive(Serialize)]
struct Handshake {
    #[serde(rename = "Version")]
    version: u32,
}

#[derive(Deserialize)]
struct ResponseHeader {
    #[serde(rename = "Seq")]
    _seq: u64,
    #[serde(rename = "Error")]
    error: String,
}

#[derive(Deserialize)]
struct Members {
    #[serde(rename = "Members")]
    members: Vec<Member>,
}

#[derive(Deserialize)]
struct Member {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Status")]
    status: String,
}

/// A connection to one agent's RPC port.
pub struct SerfRpc {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    seq: u64,
}

impl SerfRpc {
    pub fn connect(addr: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_nodelay(true)?;
        let mut rpc = Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            seq: 0,
        };
        rpc.send("handshake", Some(&Handshake { version: 1 }))?;
        rpc.header()?;
        Ok(rpc)
    }

    fn send<B: Serialize>(&mut self, command: &str, body: Option<&B>) -> Result<()> {
        let mut buf = rmp_serde::to_vec_named(&Header {
            command,
            seq: self.seq,
        })?;
        if let Some(b) = body {
            buf.extend(rmp_serde::to_vec_named(b)?);
        }
        self.seq += 1;
        self.writer.write_all(&buf)?;
        Ok(())
    }

    fn header(&mut self) -> Result<()> {
        let h: ResponseHeader = rmp_serde::from_read(&mut self.reader)?;
        if !h.error.is_empty() {
            bail!("serf RPC: {}", h.error);
        }
        Ok(())
    }

    /// name → status ("alive", "failed", "left") as this agent sees them.
    pub fn members(&mut self) -> Result<BTreeMap<String, String>> {
        self.send::<()>("members", None)?;
        self.header()?;
        let m: Members = rmp_serde::from_read(&mut self.reader)?;
        Ok(m.members.into_iter().map(|m| (m.name, m.status)).collect())
    }
}
