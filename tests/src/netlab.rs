//! Network namespaces for multi-host tests: one namespace per node, each
//! with a veth whose other end is attached to a bridge living in a namespace
//! of its own. Addresses are `10.77.0.<node>/24` on that private bridge; nothing
//! leaves the machine. Everything is deleted on drop.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

pub struct NetLab {
    prefix: String,
    count: u32,
    created: Vec<String>,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl NetLab {
    /// Create namespaces for nodes 1..=count (needs root).
    pub fn new(count: u32) -> Result<Self> {
        let seq = LAB_SEQ.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("krg{}x{seq}", std::process::id());
        let mut lab = Self {
            prefix,
            count,
            created: Vec::new(),
        };
        let br = lab.bridge_ns();
        ip(&["netns", "add", &br])?;
        lab.created.push(br.clone());
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for id in 1..=count {
            let ns = lab.ns(id);
            ip(&["netns", "add", &ns])?;
            lab.created.push(ns.clone());
            let port = format!("v{id}");
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
            let cidr = format!("{}/24", lab.addr(id)?);
            ip(&["-n", &ns, "addr", "add", &cidr, "brd", "+", "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn bridge_ns(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// Namespace name of node `id`.
    pub fn ns(&self, id: u32) -> String {
        format!("{}n{id}", self.prefix)
    }

    pub fn addr(&self, id: u32) -> Result<Ipv4Addr> {
        if id == 0 || id > self.count || id > 250 {
            bail!("node {id} has no namespace in this lab");
        }
        Ok(Ipv4Addr::new(10, 77, 0, id as u8))
    }

    /// Cut node `id` off the bridge (its veth goes down).
    pub fn isolate(&self, id: u32) -> Result<()> {
        ip(&[
            "-n",
            &self.bridge_ns(),
            "link",
            "set",
            &format!("v{id}"),
            "down",
        ])
    }

    /// Split the bridge: the nodes of `group` move to a second bridge, where
    /// they see each other but not the rest.
    pub fn split(&self, group: &[u32]) -> Result<()> {
        let br = self.bridge_ns();
        if !self.has_second_bridge() {
            ip(&["-n", &br, "link", "add", "br1", "type", "bridge"])?;
            ip(&["-n", &br, "link", "set", "br1", "up"])?;
        }
        for id in group {
            ip(&["-n", &br, "link", "set", &format!("v{id}"), "master", "br1"])?;
        }
        Ok(())
    }

    fn has_second_bridge(&self) -> bool {
        Command::new("ip")
            .args(["-n", &self.bridge_ns(), "link", "show", "br1"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Undo every split and isolation: all veths up, on the first bridge.
    pub fn heal_all(&self) -> Result<()> {
        let br = self.bridge_ns();
        for id in 1..=self.count {
            let port = format!("v{id}");
            ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &port, "up"])?;
        }
        Ok(())
    }

    pub fn heal(&self, id: u32) -> Result<()> {
        ip(&[
            "-n",
            &self.bridge_ns(),
            "link",
            "set",
            &format!("v{id}"),
            "up",
        ])
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}
