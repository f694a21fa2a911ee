//! A set of krgds of one session ([`TestCluster`]): started on loopback
//! or in network namespaces, driven with the real tools, torn down when
//! dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::{bin, free_port, random_key, wait_for, NetLab, Node};

/// How nodes find each other.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// 127.0.0.1 ports; every node gets `--peer` for the seed nodes.
    Loopback,
    /// One network namespace per node on a shared bridge; UDP broadcast discovery.
    Namespaces,
}

/// A set of krgd processes of one session, with their files in a temp dir.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    pub session: u32,
    pub topology: Topology,
    pub nodes: BTreeMap<u32, Node>,
    /// Loopback: node id → port. The seeds' ports are drawn up front (every
    /// node lists them as `--peer`); any other node listens on port 0 at its
    /// first start, and the port the kernel gave it is kept for restarts.
    ports: BTreeMap<u32, u16>,
    /// Loopback: how many low ids act as seeds in every node's `--peer` list.
    seeds: u32,
    pub lab: Option<NetLab>,
    /// Extra flags for every krgd (e.g. failure timeouts).
    pub extra_args: Vec<String>,
    /// Extra environment for every krgd (e.g. `KDFS_TEST_CRASH_FILE`).
    pub extra_env: Vec<(String, String)>,
    pub binary: PathBuf,
}

/// Panics the end-of-test check lets pass (printed), by a piece of their
/// location: known bugs written down in the docs, not fixed yet.
/// openraft 0.9.25's engine asserting "Only leader is allowed to call
/// update_effective_membership()" under the fault campaign's faults
/// (docs/cluster.md, Limits).
const KNOWN_PANICS: &[&str] = &["openraft-0.9.25/src/engine/handler/replication_handler/mod.rs"];

impl TestCluster {
    /// A loopback cluster with room for node ids 1..=max_id; seed peers are
    /// every id (small clusters) or the first three (large ones).
    pub fn loopback(max_id: u32) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("krg-test-").tempdir()?;
        let key = dir.path().join("cluster.key");
        std::fs::write(&key, random_key())?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let seeds = if max_id <= 8 { max_id } else { 3 };
        // KRG_TEST_KRGD runs a test against another krgd build (e.g. to
        // show that a regression test fails on the code it guards).
        let other = std::env::var_os("KRG_TEST_KRGD").map(PathBuf::from);
        // Only the seeds' ports are drawn in advance: a port reserved and
        // released can be taken before its krgd binds it (with hundreds of
        // daemons connecting on loopback, it was, now and then). Another
        // build may predate `--listen ADDR:0`: it gets every port in advance.
        let drawn = if other.is_some() { max_id } else { seeds };
        let ports = (1..=drawn).map(|id| (id, free_port())).collect();
        Ok(Self {
            dir,
            key,
            session: 1,
            topology: Topology::Loopback,
            nodes: BTreeMap::new(),
            ports,
            seeds,
            lab: None,
            extra_args: Vec::new(),
            extra_env: Vec::new(),
            binary: other.unwrap_or_else(|| bin("krgd")),
        })
    }

    /// A cluster in network namespaces (root only): nodes 1..=count.
    pub fn namespaces(count: u32) -> Result<Self> {
        let lab = NetLab::new(count)?;
        let mut c = Self::loopback(0)?;
        c.topology = Topology::Namespaces;
        c.lab = Some(lab);
        Ok(c)
    }

    fn listen_of(&self, id: u32) -> Result<SocketAddr> {
        match (&self.topology, &self.lab) {
            (Topology::Namespaces, Some(lab)) => Ok(SocketAddr::new(lab.addr(id)?.into(), 7600)),
            // Port 0 (not started yet, not a seed): the kernel chooses.
            _ => Ok(SocketAddr::from((
                [127, 0, 0, 1],
                self.ports.get(&id).copied().unwrap_or(0),
            ))),
        }
    }

    /// Start krgd for node `id` with the cluster's key.
    pub fn start(&mut self, id: u32) -> Result<()> {
        let key = self.key.clone();
        self.start_with(id, &key, &[])
    }

    /// Start krgd for node `id` with a chosen key file and extra flags.
    pub fn start_with(&mut self, id: u32, key: &Path, extra: &[&str]) -> Result<()> {
        let listen = self.listen_of(id)?;
        let socket = self.dir.path().join(format!("krgd{id}.sock"));
        // A restart replaces the node's earlier process (a node removed
        // with `nodes del` keeps running): it must be gone before the new
        // one binds its address, and its socket file must not pass for the
        // new one's being ready.
        if let Some(old) = self.nodes.remove(&id) {
            drop(old);
        }
        let _ = std::fs::remove_file(&socket);
        let log = self.dir.path().join(format!("krgd{id}.log"));
        let data = self.dir.path().join(format!("data{id}"));
        let mut args: Vec<String> = vec![
            "--node-id".into(),
            id.to_string(),
            "--session-id".into(),
            self.session.to_string(),
            "--listen".into(),
            listen.to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            "--cluster-key-file".into(),
            key.display().to_string(),
        ];
        // No scheduler tree either, unless the test gives one.
        if !extra.iter().any(|a| a.starts_with("--scheduler-mount")) {
            args.push("--no-scheduler-mount".into());
        }
        // Many krgd share this host: none mounts the host's /krg unless a
        // test gives it a mount point of its own.
        if !extra.iter().any(|a| a.starts_with("--krg-mount")) {
            args.push("--no-krg-mount".into());
        }
        // Nor does it take the host's HTTP port (7690) unless told to.
        if !extra.iter().any(|a| a.starts_with("--http")) {
            args.push("--no-http".into());
        }
        if self.topology == Topology::Loopback {
            for seed in 1..=self.seeds {
                if seed != id {
                    args.push("--peer".into());
                    args.push(self.listen_of(seed)?.to_string());
                }
            }
        }
        args.extend(self.extra_args.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        let netns = self.lab.as_ref().map(|l| l.ns(id));
        let mut cmd = match &netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        // Appended to: a restarted node's log follows the earlier runs'.
        let logfile = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        cmd.args(&args)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("KRG_TEST_LOG").unwrap_or_else(|_| "info,openraft=off".into()),
            )
            .stdin(Stdio::null())
            .stdout(logfile.try_clone()?)
            .stderr(logfile);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let mut node = Node {
            id,
            listen,
            socket: socket.clone(),
            log,
            netns,
            child: Some(child),
        };
        wait_for(
            Duration::from_secs(10),
            &format!("krgd {id} socket"),
            || {
                if !node.is_running() {
                    return Some(());
                }
                socket.exists().then_some(())
            },
        )?;
        if !node.is_running() {
            // Kept, so that a test expecting the refusal can read its log.
            let log = node.log_text();
            self.nodes.insert(id, node);
            bail!("krgd {id} exited at start: {log}");
        }
        self.nodes.insert(id, node);
        if listen.port() == 0 {
            if let Err(e) = self.learn_port(id) {
                let log = self.nodes.get(&id).map(Node::log_text).unwrap_or_default();
                bail!("{e:#}; krgd {id}'s log: {log}");
            }
        }
        Ok(())
    }

    /// A node started on port 0: ask it which port it got, and keep that
    /// port for its restarts.
    fn learn_port(&mut self, id: u32) -> Result<()> {
        let rows: Value =
            serde_json::from_str(&self.krgadm_ok(id, &["--json", "nodes", "status"])?)?;
        let addr: SocketAddr = rows
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["id"].as_u64() == Some(u64::from(id)))
            .and_then(|r| r["address"].as_str()?.parse().ok())
            .ok_or_else(|| anyhow!("krgd {id} does not say where it listens: {rows}"))?;
        self.ports.insert(id, addr.port());
        self.node(id)?.listen = addr;
        Ok(())
    }

    pub fn node(&mut self, id: u32) -> Result<&mut Node> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no node {id}"))
    }

    /// Run krgadm against node `via`'s socket.
    pub fn krgadm(&self, via: u32, args: &[&str]) -> Result<Output> {
        let node = self
            .nodes
            .get(&via)
            .ok_or_else(|| anyhow!("no node {via}"))?;
        Ok(Command::new(bin("krgadm"))
            .arg("--socket")
            .arg(&node.socket)
            .args(args)
            .output()?)
    }

    /// A `krg` command talking to node `via`'s krgd (not started).
    pub fn krg(&self, via: u32) -> Result<Command> {
        let node = self
            .nodes
            .get(&via)
            .ok_or_else(|| anyhow!("no node {via}"))?;
        let mut cmd = Command::new(bin("krg"));
        cmd.env("KRG_SOCKET", &node.socket);
        Ok(cmd)
    }

    /// Run krgadm and require success; returns stdout.
    pub fn krgadm_ok(&self, via: u32, args: &[&str]) -> Result<String> {
        let out = self.krgadm(via, args)?;
        if !out.status.success() {
            bail!(
                "krgadm {args:?} via node {via} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn status(&self, via: u32) -> Result<Value> {
        Ok(serde_json::from_str(
            &self.krgadm_ok(via, &["--json", "cluster", "status"])?,
        )?)
    }

    /// `nodes status` as node id → state string.
    pub fn node_states(&self, via: u32) -> Result<BTreeMap<u32, String>> {
        let rows: Value =
            serde_json::from_str(&self.krgadm_ok(via, &["--json", "nodes", "status"])?)?;
        let mut out = BTreeMap::new();
        for r in rows
            .as_array()
            .ok_or_else(|| anyhow!("nodes status is not a list"))?
        {
            let id = r["id"].as_u64().ok_or_else(|| anyhow!("row without id"))? as u32;
            out.insert(id, r["state"].as_str().unwrap_or_default().to_string());
        }
        Ok(out)
    }

    /// Wait until node `via` sees every id in `ids` as present or better.
    /// Start nodes 1..=n, form the cluster (`cluster start` through node
    /// 1), wait until all agree, and let other users into its directory
    /// (their jobs' working directory, sockets).
    /// Arm krgd's crash points (`kdfs::store::crash`) in every node
    /// started from now on: a point fires once its name is written into
    /// the file returned.
    pub fn arm_crash_points(&mut self) -> PathBuf {
        let file = self.dir.path().join("crash-at");
        self.extra_env
            .push(("KDFS_TEST_CRASH_FILE".into(), file.display().to_string()));
        file
    }

    /// Wait until node `node` keeps no migration image (a post-copy
    /// origin drops its own once the target has every byte).
    pub fn wait_no_migration_image(&self, node: u32) -> Result<()> {
        let kept = self.dir.path().join(format!("data{node}/migrate/out"));
        wait_for(
            Duration::from_secs(20),
            "the origin to drop its image",
            || {
                let n = std::fs::read_dir(&kept).map_or(0, |d| d.count());
                (n == 0).then_some(())
            },
        )
    }

    pub fn formed(mut self, n: u32, settle: Duration) -> Result<Self> {
        let ids: Vec<u32> = (1..=n).collect();
        let first = 1;
        for &id in &ids {
            self.start(id)?;
        }
        self.wait_present(first, &ids, settle)?;
        self.krgadm_ok(first, &["cluster", "start"])?;
        self.wait_agreement(&ids, settle)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755))?;
        Ok(self)
    }

    pub fn wait_present(&self, via: u32, ids: &[u32], timeout: Duration) -> Result<()> {
        wait_for(
            timeout,
            &format!("nodes {ids:?} visible from node {via}"),
            || {
                let states = self.node_states(via).ok()?;
                ids.iter().all(|id| states.contains_key(id)).then_some(())
            },
        )
    }

    /// (sorted members, epoch) as node `via` reports them.
    pub fn view(&self, via: u32) -> Result<(Vec<u64>, u64)> {
        let s = self.status(via)?;
        let mut members: Vec<u64> = s["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        members.sort_unstable();
        Ok((members, s["epoch"].as_u64().unwrap_or(0)))
    }

    /// Wait until every node in `via` reports the same members and epoch of
    /// a formed cluster (some members, epoch > 0), and return that view.
    /// Nodes outside any cluster, or restarted ones that have not replayed
    /// their log yet, all answer "no members, epoch 0": that is no agreement.
    pub fn wait_agreement(&self, via: &[u32], timeout: Duration) -> Result<(Vec<u64>, u64)> {
        wait_for(timeout, &format!("nodes {via:?} to agree"), || {
            let views: Vec<_> = via
                .iter()
                .map(|id| self.view(*id).ok())
                .collect::<Option<_>>()?;
            let first = views.first()?.clone();
            let formed = !first.0.is_empty() && first.1 > 0;
            (formed && views.iter().all(|v| *v == first)).then_some(first)
        })
    }

    /// Keep the test directory (every krgd's log and Raft state) when the
    /// cluster is dropped; returns where it is.
    pub fn keep_files(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }

    /// Every panic a krgd logged (tokio catches a panicking task's, and the
    /// daemon goes on without that task): `krgd N: <where>: <message>`.
    pub fn panics(&self) -> Vec<String> {
        let mut out = Vec::new();
        for node in self.nodes.values() {
            let text = node.log_text();
            let mut lines = text.lines();
            while let Some(l) = lines.next() {
                if let Some(at) = l.split_once(" panicked at ").map(|(_, at)| at) {
                    let why = lines.next().unwrap_or("");
                    out.push(format!("krgd {}: {at} {why}", node.id));
                }
            }
        }
        out
    }

    /// Fail if any krgd panicked (see [`panics`](Self::panics)).
    pub fn assert_no_panics(&self) -> anyhow::Result<()> {
        let p = self.panics();
        if !p.is_empty() {
            anyhow::bail!("krgd panicked:\n{}", p.join("\n"));
        }
        Ok(())
    }

    /// The last `lines` lines of every krgd's log, each headed by its node
    /// id: what a failed wait prints so that it can be diagnosed.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in self.nodes.values() {
            let text = node.log_text();
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            out.push_str(&format!(
                "---- krgd {} ({}, last {} of {} lines) ----\n",
                node.id,
                node.log.display(),
                all.len() - from,
                all.len()
            ));
            for l in &all[from..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    pub fn leader(&self, via: u32) -> Option<u32> {
        self.status(via).ok()?["leader"].as_u64().map(|l| l as u32)
    }
}

/// Detach every mount left under `dir`: a krgd killed with -9 (fault
/// tests) leaves its scheduler tree mounted, and nothing else would ever
/// unmount it.
pub fn detach_mounts_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    // the deepest first
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p) else {
            continue;
        };
        // SAFETY: umount2 with a NUL-terminated path and a flag.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Every test against real daemons also checks that none panicked
        // (a panicking task is caught by tokio and the daemon goes on
        // without it, so nothing else would notice). Read before the
        // nodes go; failed only when the test itself did not.
        let panics = self.panics();
        // Processes first (they live in the namespaces), then the namespaces.
        self.nodes.clear();
        self.lab.take();
        detach_mounts_under(self.dir.path());
        if std::env::var_os("KRG_TEST_KEEP").is_some() {
            let kept = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().unwrap_or_else(|_| unreachable!()),
            );
            eprintln!("keeping test files in {}", kept.keep().display());
        }
        if !panics.is_empty() {
            eprintln!("krgd panicked:\n{}", panics.join("\n"));
            let unknown: Vec<&String> = panics
                .iter()
                .filter(|p| !KNOWN_PANICS.iter().any(|k| p.contains(k)))
                .collect();
            assert!(
                unknown.is_empty() || std::thread::panicking(),
                "krgd panicked: {unknown:?}"
            );
        }
    }
}
