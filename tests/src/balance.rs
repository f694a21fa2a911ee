//! Balancing scenario shared by `tests/balance.rs` and the migrate bench: a
//! loopback cluster whose krgds each serve a scheduler tree, every node
//! running `krg_load_probe` and a `balance_policy`, and CPU-bound
//! CAN_MIGRATE processes started on node 1 (killed by PID when dropped).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::{bin, wait_for, TestCluster};

const SETTLE: Duration = Duration::from_secs(20);

/// Node `id`'s scheduler tree.
pub fn tree(c: &TestCluster, id: u32) -> PathBuf {
    c.dir.path().join(format!("sched{id}"))
}

/// The plug-in registry every node of [`formed`] reads (absent until a
/// test writes it).
pub fn registry(c: &TestCluster) -> PathBuf {
    c.dir.path().join("plugins.conf")
}

/// A formed loopback cluster of `n` nodes, each with its scheduler tree
/// and the plug-in registry [`registry`].
pub fn formed(n: u32) -> Result<TestCluster> {
    let mut c = TestCluster::loopback(n)?;
    let key = c.key.clone();
    for id in 1..=n {
        let mount = format!("--scheduler-mount={}", tree(&c, id).display());
        let registry = format!("--plugin-registry={}", registry(&c).display());
        c.start_with(id, &key, &[&mount, &registry])?;
    }
    let ids: Vec<u32> = (1..=n).collect();
    c.wait_present(1, &ids, SETTLE)?;
    c.krgadm_ok(1, &["cluster", "start"])?;
    c.wait_agreement(&ids, SETTLE)?;
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(c)
}

/// `balance_policy` attributes a scenario sets.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub threshold: f64,
    pub max_moves: u32,
    pub interval_ms: u64,
    pub min_residency_ms: u64,
}

/// Load `krg_load_probe` (period 500 ms) and `balance_policy` on node
/// `id`, as docs/scheduler.md shows, and check that the values were taken.
pub fn setup_node(c: &TestCluster, id: u32, s: Settings) -> Result<()> {
    let t = tree(c, id);
    std::fs::create_dir(t.join("probes/krg_load_probe"))?;
    std::fs::write(t.join("probes/krg_load_probe/probe_period"), "500")?;
    std::fs::create_dir(t.join("schedulers/balance"))?;
    let p = t.join("schedulers/balance/balance_policy");
    std::fs::create_dir(&p)?;
    std::os::unix::fs::symlink(
        t.join("probes/krg_load_probe/run_load"),
        p.join("port_load"),
    )?;
    for (attr, v) in [
        ("threshold", s.threshold.to_string()),
        ("max_moves", s.max_moves.to_string()),
        ("interval", s.interval_ms.to_string()),
        ("min_residency", s.min_residency_ms.to_string()),
    ] {
        std::fs::write(p.join(attr), &v)?;
        let got = std::fs::read_to_string(p.join(attr))?;
        if got.trim() != v {
            bail!("{attr}: wrote {v}, reads {got}");
        }
    }
    Ok(())
}

/// Node `id`'s `decisions` file.
pub fn decisions(c: &TestCluster, id: u32) -> String {
    std::fs::read_to_string(tree(c, id).join("schedulers/balance/balance_policy/decisions"))
        .unwrap_or_default()
}

/// (node, pid) of the processes krg ps shows (jobs and processes that migrated in).
pub fn krg_ps(c: &TestCluster) -> BTreeSet<(u64, i64)> {
    let Ok(mut cmd) = c.krg(1) else {
        return BTreeSet::new();
    };
    let Ok(o) = cmd.args(["ps", "--json"]).output() else {
        return BTreeSet::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    v["processes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| Some((r["node"].as_u64()?, r["pid"].as_i64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Is process `pid` there?
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// A bash on node 1 holding CAN_MIGRATE, and the CPU-bound subshells it
/// started; every process is killed by PID when dropped.
pub struct Hogs {
    parent: Child,
    /// The busy subshells.
    pub pids: Vec<i32>,
    /// When they were started.
    pub started: Instant,
    /// The parent's `ended PID STATUS` lines (bash `wait -n`).
    pub ended: Arc<Mutex<Vec<String>>>,
}

impl Hogs {
    /// Start `n` busy processes under a bash flagged CAN_MIGRATE through
    /// node `via`'s krgd.
    pub fn start(c: &TestCluster, via: u32, n: usize) -> Result<Hogs> {
        let script = format!(
            r#"read go
for i in $(seq {n}); do (while :; do :; done) & pids="$pids $!"; done
echo $pids
while :; do who=; wait -n -p who; s=$?; [ -z "$who" ] && break; echo "ended $who $s"; done"#
        );
        let mut cmd = Command::new("bash");
        cmd.args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: close_range between fork and exec (stray fds would make
        // the busy processes refuse to migrate).
        unsafe {
            cmd.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0);
                Ok(())
            });
        }
        // From here on, dropping `hogs` kills what was started.
        let mut hogs = Hogs {
            parent: cmd.spawn()?,
            pids: Vec::new(),
            started: Instant::now(),
            ended: Arc::default(),
        };
        let o = Command::new(bin("krgcapset"))
            .env("KRG_SOCKET", c.dir.path().join(format!("krgd{via}.sock")))
            .args(["-k", &hogs.parent.id().to_string(), "-d", "+CAN_MIGRATE"])
            .output()?;
        if !o.status.success() {
            bail!("krgcapset: {}", String::from_utf8_lossy(&o.stderr));
        }
        hogs.started = Instant::now();
        if let Some(mut stdin) = hogs.parent.stdin.take() {
            writeln!(stdin, "go")?;
        }
        let Some(stdout) = hogs.parent.stdout.take() else {
            bail!("no stdout");
        };
        let mut out = BufReader::new(stdout);
        let mut line = String::new();
        out.read_line(&mut line)?;
        hogs.pids = line
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if hogs.pids.len() != n {
            bail!("the parent said {line:?}");
        }
        let ended = hogs.ended.clone();
        std::thread::spawn(move || {
            for l in out.lines().map_while(|l| l.ok()) {
                ended.lock().unwrap_or_else(|p| p.into_inner()).push(l);
            }
        });
        Ok(hogs)
    }

    /// Wait (up to `bound`) until one of them runs on each of nodes 2..=n
    /// (`krg ps` shows them there) and one is still on node 1, all alive;
    /// returns how long after their start.
    pub fn wait_one_per_node(
        &self,
        c: &TestCluster,
        nodes: u32,
        bound: Duration,
    ) -> Result<Duration> {
        let want: BTreeSet<u64> = (2..=u64::from(nodes)).collect();
        wait_for(bound, "one busy process per node", || {
            let ps = krg_ps(c);
            let on: Vec<u64> = ps
                .iter()
                .filter(|(_, p)| self.pids.contains(&(*p as i32)))
                .map(|(n, _)| *n)
                .collect();
            let spread =
                on.len() == want.len() && on.iter().copied().collect::<BTreeSet<_>>() == want;
            (spread && self.pids.iter().all(|&p| alive(p))).then(|| self.started.elapsed())
        })
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for &p in &self.pids {
            // SAFETY: kill(2) of processes this harness started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let _ = self.parent.kill();
        let _ = self.parent.wait();
    }
}
