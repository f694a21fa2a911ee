//! A real kDFS on loopback: N krgd processes on 127.0.0.1 ports with their own
//! sockets and data directories, a started cluster, every node's directory
//! formatted with mkfs.kdfs and mounted with mount.kdfs.
#![allow(dead_code)]

pub mod observe;
pub mod random;
pub mod xattrs;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn bin_dir() -> PathBuf {
    // target/debug/deps/<test> -> target/debug
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

#[path = "../../../tests/src/nested_cargo.rs"]
mod nested_cargo;

/// krgd, krgadm (and migrate) and checkpoint's restart and krgcapset
/// belong to other packages: build them once.
pub fn ensure_binaries() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let st = nested_cargo::cargo_build(&["krgd", "krgadm", "checkpoint"])
            .status()
            .expect("run cargo build");
        assert!(st.success(), "building krgd, krgadm and checkpoint failed");
    });
}

pub fn mkfs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mkfs-kdfs"))
}

pub fn fsck_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fsck-kdfs"))
}

pub fn mount_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mount-kdfs"))
}

/// A port for a krgd: below the kernel's ephemeral range, where the
/// outgoing connections of other tests' daemons cannot take it before
/// the krgd binds it (a port from `bind(:0)` could, and that krgd then
/// never made its socket).
fn free_port() -> u16 {
    krg_tests::free_port()
}

pub struct Node {
    pub id: u32,
    /// Network namespace the node's krgd and mount.kdfs run in (None: the host's).
    pub netns: Option<String>,
    pub ip: String,
    pub port: u16,
    /// Where its krgd serves /metrics (127.0.0.1, in its network namespace).
    pub http_port: u16,
    pub sock: PathBuf,
    pub data: PathBuf,
    pub store: PathBuf,
    pub mnt: PathBuf,
    krgd: Option<Child>,
    peers: Vec<String>,
}

pub struct Cluster {
    pub root: tempfile::TempDir,
    pub key: PathBuf,
    pub nodes: Vec<Node>,
    /// Further mounts made with [`Cluster::mount_at`], unmounted on drop.
    pub extra_mounts: std::cell::RefCell<Vec<PathBuf>>,
}

/// Where test clusters keep their stores and mounts: `KDFS_TEST_DIR`, by
/// default /tmp (the bench puts its other targets there too, so that all
/// of them sit on one file system).
pub fn test_dir() -> PathBuf {
    std::env::var_os("KDFS_TEST_DIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
}

pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn command");
    out
}

/// A command run in network namespace `ns` (only the network: mounts made
/// there are visible to everyone), or on the host.
pub fn in_netns(ns: &Option<String>, prog: PathBuf) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(prog);
            c
        }
        None => Command::new(prog),
    }
}

/// uid and gid of the unprivileged `tests` user, created if missing (as
/// .ci/run does).
pub fn tests_user() -> (u32, u32) {
    static USER: OnceLock<(u32, u32)> = OnceLock::new();
    *USER.get_or_init(|| {
        let id = |flag: &str| {
            let out = run(Command::new("id").args([flag, "tests"]));
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u32>()
                .ok()
        };
        if id("-u").is_none() {
            let _ = run(Command::new("useradd").args(["-M", "-s", "/usr/sbin/nologin", "tests"]));
        }
        (
            id("-u").expect("a `tests` user (useradd -M tests)"),
            id("-g").expect("the `tests` user's group"),
        )
    })
}

/// `prog` run as the `tests` user, with no supplementary groups.
pub fn as_tests_user(prog: impl AsRef<OsStr>) -> Command {
    let (uid, gid) = tests_user();
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args(["--clear-groups", "--"])
        .arg(prog);
    c
}

/// The per-mount options (`rw,nosuid,nodev,…`) of the newest mount at `p`.
pub fn mount_flags(p: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = p.display().to_string();
    table
        .lines()
        .rev()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[4] == p)
        .map(|f| f[5].split(',').map(String::from).collect())
        .unwrap_or_default()
}

pub fn is_mounted(p: &Path) -> bool {
    let s = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = p.display().to_string();
    s.lines().any(|l| l.split(' ').nth(1) == Some(p.as_str()))
}

impl Cluster {
    /// Start `n` krgds on loopback and form the cluster (no kDFS yet).
    pub fn start(n: u32) -> Cluster {
        Cluster::start_in((0..n).map(|_| (None, "127.0.0.1".to_string())).collect())
    }

    /// Start one krgd per (network namespace, address) and form the cluster.
    pub fn start_in(places: Vec<(Option<String>, String)>) -> Cluster {
        let n = places.len() as u32;
        ensure_binaries();
        // Under /tmp (or KDFS_TEST_DIR) and world-searchable so that other
        // users reach the mounts.
        let root = tempfile::Builder::new()
            .prefix("kdfs-test")
            .tempdir_in(test_dir())
            .expect("tempdir");
        std::fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let key = root.path().join("cluster.key");
        std::fs::write(&key, "kdfs-test-cluster-key-0123456789").unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let d = root.path().join(format!("n{}", i + 1));
            for sub in ["data", "store", "mnt"] {
                std::fs::create_dir_all(d.join(sub)).unwrap();
            }
            let (netns, ip) = places[i as usize].clone();
            nodes.push(Node {
                id: i + 1,
                netns,
                ip,
                port: ports[i as usize],
                http_port: free_port(),
                sock: d.join("krgd.sock"),
                data: d.join("data"),
                store: d.join("store"),
                mnt: d.join("mnt"),
                krgd: None,
                peers: Vec::new(),
            });
        }
        let all: Vec<String> = nodes
            .iter()
            .map(|n| format!("{}:{}", n.ip, n.port))
            .collect();
        for n in nodes.iter_mut() {
            let me = format!("{}:{}", n.ip, n.port);
            n.peers = all.iter().filter(|a| **a != me).cloned().collect();
        }
        let mut c = Cluster {
            root,
            key,
            nodes,
            extra_mounts: Default::default(),
        };
        for i in 0..n as usize {
            c.start_krgd(i);
        }
        let sock = c.nodes[0].sock.clone();
        let nodes_seen = |s: &Path, word: &str| {
            let out = run(Command::new(bin_dir().join("krgadm"))
                .arg("--socket")
                .arg(s)
                .args(["nodes", "status"]));
            String::from_utf8_lossy(&out.stdout).matches(word).count()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while nodes_seen(&sock, "present") + nodes_seen(&sock, "online") < n as usize {
            if std::time::Instant::now() > deadline {
                // what the daemons said is the only clue once the test is gone
                let logs: Vec<String> = c
                    .nodes
                    .iter()
                    .map(|n| {
                        let log =
                            std::fs::read_to_string(n.data.join("krgd.log")).unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(15).collect();
                        format!(
                            "node {}:\n{}",
                            n.id,
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        )
                    })
                    .collect();
                panic!(
                    "timed out waiting for every krgd present\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        wait_until("cluster start", Duration::from_secs(30), || {
            let out = run(Command::new(bin_dir().join("krgadm"))
                .arg("--socket")
                .arg(&sock)
                .args(["cluster", "start"]));
            out.status.success()
        });
        // Every node must see every member before mkfs asks it.
        for i in 0..n as usize {
            let s = c.nodes[i].sock.clone();
            wait_until("membership", Duration::from_secs(30), || {
                nodes_seen(&s, "online") >= n as usize
            });
        }
        c
    }

    /// Start, format (root on node 1) and mount every node.
    pub fn with_kdfs(n: u32) -> Cluster {
        Cluster::with_kdfs_formatted(n, &[])
    }

    /// [`Cluster::with_kdfs`], each store formatted with `mkfs_args` too.
    pub fn with_kdfs_formatted(n: u32, mkfs_args: &[&str]) -> Cluster {
        Cluster::start(n).format_and_mount(mkfs_args)
    }

    /// Format every node's store (root on node 1) with `mkfs_args` too,
    /// and mount them all.
    pub fn format_and_mount(self, mkfs_args: &[&str]) -> Cluster {
        let c = self;
        let n = c.nodes.len() as u32;
        let mkfs = |i: usize| c.mkfs_with(i, 1, mkfs_args);
        for i in 0..n as usize {
            // `nodes status` reads the node's cluster table, which the
            // view its services get (mkfs asks the kDFS service) follows
            // a moment later: mkfs may still hear of no cluster (CI)
            let mut out = mkfs(i);
            let t = std::time::Instant::now();
            while String::from_utf8_lossy(&out.stderr).contains("no cluster is running")
                && t.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(100));
                out = mkfs(i);
            }
            assert!(
                out.status.success(),
                "mkfs: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for i in 0..n as usize {
            let out = c.mount(i, "");
            assert!(
                out.status.success(),
                "mount: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        c
    }

    pub fn start_krgd(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let _ = std::fs::remove_file(&n.sock);
        let mut cmd = in_netns(&n.netns, bin_dir().join("krgd"));
        cmd.args(["--node-id", &n.id.to_string(), "--session-id", "1"])
            .arg("--listen")
            .arg(format!("{}:{}", n.ip, n.port))
            .arg("--socket")
            .arg(&n.sock)
            .arg("--data-dir")
            .arg(&n.data)
            .arg("--cluster-key-file")
            .arg(&self.key)
            .arg("--no-scheduler-mount")
            // the tests run in parallel: none needs the /krg tree
            .arg("--no-krg-mount")
            .arg(format!("--http-listen=127.0.0.1:{}", n.http_port));
        for p in &n.peers {
            cmd.arg("--peer").arg(p);
        }
        // Crash points (tests/fsck.rs): armed by writing a point's name there.
        cmd.env("KDFS_TEST_CRASH_FILE", n.data.join("crash-at"));
        let log = std::fs::File::create(n.data.join("krgd.log")).unwrap();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        n.krgd = Some(cmd.spawn().expect("spawn krgd"));
        let sock = n.sock.clone();
        let log = n.data.join("krgd.log");
        let child = n.krgd.as_mut().expect("just spawned");
        wait_until("krgd socket", Duration::from_secs(20), || {
            // a krgd that ended (its port taken, say) never makes it
            if let Ok(Some(status)) = child.try_wait() {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                panic!(
                    "krgd of node {} ended ({status}) before making its socket:\n{said}",
                    i + 1
                );
            }
            sock.exists()
        });
    }

    /// The PID of node index `i`'s krgd, while it runs.
    pub fn krgd_pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].krgd.as_ref().map(std::process::Child::id)
    }

    /// kill -9 the krgd of node index `i`.
    pub fn kill_krgd(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].krgd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn mkfs(&self, i: usize, root: u32, force: bool) -> std::process::Output {
        self.mkfs_with(i, root, if force { &["--force"] } else { &[] })
    }

    /// mkfs.kdfs of node index `i`'s store with `args` too.
    pub fn mkfs_with(&self, i: usize, root: u32, args: &[&str]) -> std::process::Output {
        let n = &self.nodes[i];
        let mut cmd = Command::new(mkfs_bin());
        cmd.arg("--socket")
            .arg(&n.sock)
            .arg(&n.store)
            .arg(root.to_string())
            .args(args);
        run(&mut cmd)
    }

    pub fn mount_opts(&self, i: usize) -> String {
        let n = &self.nodes[i];
        format!("socket={},keyfile={}", n.sock.display(), self.key.display())
    }

    pub fn mount(&self, i: usize, extra: &str) -> std::process::Output {
        let mnt = self.nodes[i].mnt.clone();
        self.mount_on(i, &mnt, extra, "kdfs.log")
    }

    /// A further mount of node `i`'s store at `mnt` (made here), logging to
    /// `log` in the node's data directory; unmounted when the cluster goes.
    pub fn mount_at(&self, i: usize, mnt: &Path, log: &str) -> std::process::Output {
        std::fs::create_dir_all(mnt).unwrap();
        self.extra_mounts.borrow_mut().push(mnt.to_path_buf());
        self.mount_on(i, mnt, "", log)
    }

    fn mount_on(&self, i: usize, mnt: &Path, extra: &str, log: &str) -> std::process::Output {
        let n = &self.nodes[i];
        let mut opts = self.mount_opts(i);
        if !extra.is_empty() {
            opts = format!("{opts},{extra}");
        }
        let log = n.data.join(log);
        let mut cmd = in_netns(&n.netns, mount_bin());
        cmd.arg(&n.store)
            .arg(mnt)
            .arg("-o")
            .arg(format!("{opts},log={}", log.display()))
            .env("RUST_LOG", "info")
            // Client crash points (tests/fsck.rs).
            .env("KDFS_TEST_CRASH_FILE", n.data.join("client-crash-at"));
        run(&mut cmd)
    }

    pub fn umount(&self, i: usize) {
        let mnt = &self.nodes[i].mnt;
        if is_mounted(mnt) {
            let _ = run(Command::new("umount").arg(mnt));
            if is_mounted(mnt) {
                let _ = run(Command::new("umount").arg("-l").arg(mnt));
            }
        }
    }

    /// Unmount every node, kill -9 every krgd, and wait until no process
    /// uses the stores any more (for fsck.kdfs).
    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.umount(i);
        }
        for i in 0..self.nodes.len() {
            self.kill_krgd(i);
        }
        for n in &self.nodes {
            wait_unused(&n.store);
        }
    }

    /// Start every krgd and mount every node again (after stop_all).
    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start_krgd(i);
        }
        for i in 0..self.nodes.len() {
            let out = self.mount(i, "");
            assert!(
                out.status.success(),
                "mount: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    pub fn mnt(&self, i: usize) -> &Path {
        &self.nodes[i].mnt
    }
}

/// The processes with `dir` open.
pub fn holders(dir: &Path) -> Vec<u32> {
    let dir = std::fs::canonicalize(dir).unwrap();
    let mut pids = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).ok().as_deref() == Some(&*dir))
        {
            pids.push(pid);
        }
    }
    pids
}

/// Wait until nothing uses store `dir` (umount returns before mount.kdfs
/// has exited, and its view of the store holds the lock until then). A
/// mount.kdfs still there after 20 s (seen once on a loaded machine) is
/// killed, by its pid, as a crashed client would be: it holds no state.
pub fn wait_unused(dir: &Path) {
    let in_use = || {
        let out = run(Command::new(fsck_bin()).arg(dir));
        String::from_utf8_lossy(&out.stderr).contains("is in use")
    };
    let t = std::time::Instant::now();
    while in_use() {
        if t.elapsed() > Duration::from_secs(20) {
            for pid in holders(dir) {
                let cmd =
                    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                eprintln!(
                    "{} still held by {pid} ({cmd:?}): killing it",
                    dir.display()
                );
                if cmd.contains("mount-kdfs") {
                    let _ = run(Command::new("kill").args(["-9", &pid.to_string()]));
                }
            }
            wait_until("the store unused", Duration::from_secs(20), || !in_use());
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    /// Every panic in the logs of the cluster's daemons (each node's krgd
    /// and mounts): `LOG: <where> <message>`. A panicking task or FUSE
    /// request is caught and the daemon goes on, so nothing else tells.
    pub fn panics(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let Ok(dir) = std::fs::read_dir(&n.data) else {
                continue;
            };
            for log in dir.flatten().map(|e| e.path()) {
                if log.extension().is_none_or(|x| x != "log") {
                    continue;
                }
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let mut lines = text.lines();
                while let Some(l) = lines.next() {
                    if let Some((_, at)) = l.split_once(" panicked at ") {
                        let why = lines.next().unwrap_or("");
                        out.push(format!("{}: {at} {why}", log.display()));
                    }
                }
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for mnt in self.extra_mounts.borrow().iter() {
            let _ = run(Command::new("umount").arg("-l").arg(mnt));
        }
        for i in 0..self.nodes.len() {
            self.umount(i);
        }
        for i in 0..self.nodes.len() {
            self.kill_krgd(i);
        }
        // every test also checks that no daemon panicked (failed only
        // when the test itself did not)
        let panics = self.panics();
        if !panics.is_empty() {
            eprintln!("a daemon panicked:\n{}", panics.join("\n"));
            assert!(std::thread::panicking(), "a daemon panicked: {panics:?}");
        }
    }
}
