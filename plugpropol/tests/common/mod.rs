//! Start real krgd processes with the scheduler tree mounted in a temporary
//! directory, and tear them down by PID.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace's target/debug directory.
pub fn bin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug")
}

#[path = "../../../tests/src/nested_cargo.rs"]
mod nested_cargo;

/// Build krgd and krgadm once per test binary (a no-op when they are up to
/// date; `cargo test -p plugpropol` alone does not build other packages' binaries).
pub fn build_binaries() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = nested_cargo::cargo_build(&["krgd", "krgadm"])
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building krgd and krgadm failed");
        bin_dir()
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait for `cond` with a generous bound; the bound only catches hangs.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn is_mounted(path: &Path) -> bool {
    plugpropol::mount::is_our_mount(path)
}

pub struct Daemon {
    pub dir: PathBuf,
    pub mnt: PathBuf,
    pub sock: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    pub node: u32,
    child: Option<Child>,
}

pub struct Opts<'a> {
    pub node: u32,
    pub port: u16,
    pub peers: Vec<u16>,
    pub registry: Option<&'a Path>,
    /// Shared key file (two-node tests); else one is written in `dir`.
    pub key: Option<&'a Path>,
}

impl Daemon {
    /// The krgd command line for `dir` (mount at dir/mnt).
    pub fn command(dir: &Path, o: &Opts) -> Command {
        Daemon::command_at(dir, o, &dir.join("mnt"))
    }

    /// The krgd command line for `dir`, with the tree mounted at `mnt`.
    pub fn command_at(dir: &Path, o: &Opts, mnt: &Path) -> Command {
        let bins = build_binaries();
        std::fs::create_dir_all(dir).unwrap();
        let key = match o.key {
            Some(k) => k.to_path_buf(),
            None => {
                let k = dir.join("key");
                std::fs::write(&k, "plugpropol-test-cluster-key-0123456789").unwrap();
                std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .unwrap();
                k
            }
        };
        let sock = dir.join("krgd.sock");
        let log = dir.join("krgd.log");
        let mut cmd = Command::new(bins.join("krgd"));
        cmd.args(["--node-id", &o.node.to_string(), "--session-id", "1"])
            .args(["--listen", &format!("127.0.0.1:{}", o.port)])
            .arg("--socket")
            .arg(&sock)
            .arg("--data-dir")
            .arg(dir.join("d"))
            .arg("--cluster-key-file")
            .arg(&key)
            .arg("--scheduler-mount")
            .arg(mnt)
            .arg("--plugin-registry")
            .arg(
                o.registry
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| dir.join("plugins.conf")),
            )
            // No broadcast discovery between unrelated tests: peers are explicit.
            .args(["--discovery-port", &free_port().to_string()])
            // Tests run in parallel: the /krg tree and the HTTP port are
            // one per machine (two krgds raced for /krg and one exited).
            .args(["--no-krg-mount", "--no-http"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("krgd.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        for p in &o.peers {
            cmd.args(["--peer", &format!("127.0.0.1:{p}")]);
        }
        cmd
    }

    /// Start krgd in `dir` (mount at dir/mnt) and wait until the tree is mounted.
    pub fn start(dir: &Path, o: Opts) -> Daemon {
        let mut cmd = Daemon::command(dir, &o);
        let (mnt, sock, log) = (dir.join("mnt"), dir.join("krgd.sock"), dir.join("krgd.log"));
        let child = cmd.spawn().expect("starting krgd");
        let mut d = Daemon {
            dir: dir.to_path_buf(),
            mnt,
            sock,
            log,
            port: o.port,
            node: o.node,
            child: Some(child),
        };
        let mnt = d.mnt.clone();
        wait_for(
            "the scheduler tree to be mounted",
            Duration::from_secs(30),
            || {
                if let Some(Ok(Some(status))) = d.child.as_mut().map(|c| c.try_wait()) {
                    panic!(
                        "krgd exited early ({status}): {}",
                        std::fs::read_to_string(&d.log).unwrap_or_default()
                    );
                }
                is_mounted(&mnt) && mnt.join("probes").is_dir()
            },
        );
        d
    }

    pub fn simple(dir: &Path) -> Daemon {
        Daemon::start(
            dir,
            Opts {
                node: 1,
                port: free_port(),
                peers: vec![],
                registry: None,
                key: None,
            },
        )
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait: krgd unmounts the tree on the way out.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGKILL and wait: the mount is left behind, answering ENOTCONN.
    pub fn kill_hard(&mut self) {
        self.signal(libc::SIGKILL);
    }

    fn signal(&mut self, sig: i32) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the PID of our own child.
            unsafe { libc::kill(c.id() as i32, sig) };
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // A test that failed half-way must not leave a mount behind.
        if is_mounted(&self.mnt) {
            let c = std::ffi::CString::new(self.mnt.to_string_lossy().as_bytes()).unwrap();
            // SAFETY: valid C string; lazy unmount of our own test mount.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Run `cmd`, which must exit by itself within `limit`. One still running
/// then is stopped with SIGTERM (krgd unmounts its tree on it) before the
/// test fails.
pub fn run_to_exit(mut cmd: Command, limit: Duration) -> std::process::ExitStatus {
    let mut child = cmd.spawn().expect("starting the command");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            // SAFETY: kill(2) on the PID of our own, unreaped child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
            panic!("{cmd:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The errno of an io::Error (0 when there is none).
pub fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Write an executable shell script.
pub fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
