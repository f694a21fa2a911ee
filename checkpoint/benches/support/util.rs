//! Helpers of the checkpoint benchmark: run the tools with a clean fd
//! table, kill and reap trees, sizes, medians.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const CHECKPOINT: &str = env!("CARGO_BIN_EXE_checkpoint");
pub const RESTART: &str = env!("CARGO_BIN_EXE_restart");

pub fn clean(cmd: &mut Command) -> &mut Command {
    // SAFETY: close_range is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
}

pub fn must(cmd: &mut Command, what: &str) -> Duration {
    let t = Instant::now();
    let o = clean(cmd)
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let d = t.elapsed();
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    d
}

pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect()
}

pub fn tree_pids(pid: i32) -> Vec<i32> {
    let mut v = vec![pid];
    let mut i = 0;
    while i < v.len() {
        let c = children(v[i]);
        v.extend(c);
        i += 1;
    }
    v
}

/// Kill a tree and reap every member (orphans are re-parented to us, the
/// subreaper, so wait until each PID is really free).
pub fn kill_tree(pid: i32) {
    kill_all(&tree_pids(pid));
}

pub fn kill_all(all: &[i32]) {
    for &p in all {
        // SAFETY: plain kill.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    for &p in all {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{p}")).exists() && Instant::now() < deadline {
            let mut st = 0;
            // SAFETY: status is a valid pointer.
            unsafe { libc::waitpid(p, &mut st, libc::WNOHANG) };
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

pub fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    e.metadata()
                        .map(|m| {
                            if m.is_dir() {
                                dir_size(&e.path())
                            } else {
                                m.len()
                            }
                        })
                        .unwrap_or(0)
                })
                .sum()
        })
        .unwrap_or(0)
}

pub fn wait_for(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !p.exists() {
        assert!(Instant::now() < deadline, "workload did not get ready");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn compile(src: &Path, out: &Path) {
    assert!(
        Command::new("cc")
            .args(["-O2", "-o"])
            .arg(out)
            .arg(src)
            .status()
            .expect("cc")
            .success(),
        "cc {}",
        src.display()
    );
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The one-minute load average (the machine is shared).
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Start a workload in its own session (CRIU refuses a job whose session
/// leader it does not dump), with a clean fd table and no output.
pub fn start(mut cmd: Command) -> i32 {
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    clean(&mut cmd)
        .stderr(Stdio::null())
        .spawn()
        .expect("start workload")
        .id() as i32
}

pub fn have_criu() -> bool {
    Command::new("criu")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}
