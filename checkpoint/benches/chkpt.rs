//! `cargo bench -p checkpoint`: dump time, restore time and image size of
//! krg's checkpoint/restart for 64 MiB, 256 MiB and 1 GiB of touched anonymous
//! memory and for a 3-process pipe tree; when `criu` is on PATH, CRIU on the
//! same workloads in the same run (interleaved) and the krg/CRIU ratios.
//! Both save then end the job (`checkpoint --kill`, `criu dump`), so files the
//! job writes do not change between dump and restore. Medians of a few rounds. KRG_BENCH_SIZES=64,256 picks sizes (MiB);
//! KRG_BENCH_ROUNDS the number of rounds (default 3); KRG_BENCH_VERBOSE prints
//! every round's figures on stderr.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHECKPOINT: &str = env!("CARGO_BIN_EXE_checkpoint");
const RESTART: &str = env!("CARGO_BIN_EXE_restart");

fn clean(cmd: &mut Command) -> &mut Command {
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

fn must(cmd: &mut Command, what: &str) -> Duration {
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

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect()
}

fn tree_pids(pid: i32) -> Vec<i32> {
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
fn kill_tree(pid: i32) {
    kill_all(&tree_pids(pid));
}

fn kill_all(all: &[i32]) {
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

fn dir_size(p: &Path) -> u64 {
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

fn wait_for(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !p.exists() {
        assert!(Instant::now() < deadline, "workload did not get ready");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn compile(src: &Path, out: &Path) {
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

/// A workload: start it, return the root PID once it is ready.
enum Work {
    Hog(PathBuf, u64),
    Tree(PathBuf),
}

impl Work {
    fn start(&self, tmp: &Path) -> i32 {
        let ready = tmp.join("ready");
        let _ = std::fs::remove_file(&ready);
        let mut cmd = match self {
            Work::Hog(exe, mib) => {
                let mut c = Command::new(exe);
                c.arg(mib.to_string()).arg(&ready);
                c
            }
            Work::Tree(exe) => {
                let mut c = Command::new(exe);
                c.arg(tmp);
                c
            }
        };
        // Own session: CRIU refuses a job whose session leader it does not dump.
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let pid = clean(&mut cmd)
            .stderr(Stdio::null())
            .spawn()
            .expect("start workload")
            .id() as i32;
        match self {
            Work::Hog(..) => wait_for(&ready),
            Work::Tree(..) => {
                let deadline = Instant::now() + Duration::from_secs(30);
                while tree_pids(pid).len() < 3 || !tmp.join("grandchild.log").exists() {
                    assert!(Instant::now() < deadline, "tree did not start");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        pid
    }
}

#[derive(Default)]
struct Samples {
    dump: Vec<f64>,
    restore: Vec<f64>,
    size: u64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn round_krg(work: &Work, tmp: &Path, s: &mut Samples) {
    let store = tmp.join("krg");
    let _ = std::fs::remove_dir_all(&store);
    let pid = work.start(tmp);
    let all = tree_pids(pid);
    let d = must(
        Command::new(CHECKPOINT)
            .args(["--no-capability-check", "--kill", "--dir"])
            .arg(&store)
            .arg(pid.to_string()),
        "checkpoint",
    );
    s.size = dir_size(&store.join(pid.to_string()));
    kill_all(&all);
    let r = must(
        Command::new(RESTART)
            .arg("--dir")
            .arg(&store)
            .arg(pid.to_string())
            .arg("1"),
        "restart",
    );
    kill_tree(pid);
    s.dump.push(d.as_secs_f64());
    s.restore.push(r.as_secs_f64());
}

fn round_criu(work: &Work, tmp: &Path, s: &mut Samples) {
    let dir = tmp.join("criu");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("criu dir");
    let pid = work.start(tmp);
    let all = tree_pids(pid);
    let d = must(
        Command::new("criu")
            .args(["dump", "-t", &pid.to_string(), "-D"])
            .arg(&dir)
            .args(["-o", "dump.log"]),
        "criu dump",
    );
    s.size = dir_size(&dir);
    kill_all(&all);
    let r = must(
        Command::new("criu")
            .args(["restore", "-d", "-D"])
            .arg(&dir)
            .args(["-o", "restore.log"]),
        "criu restore",
    );
    kill_tree(pid);
    s.dump.push(d.as_secs_f64());
    s.restore.push(r.as_secs_f64());
}

fn main() {
    // Restored processes are orphaned when restart/criu exit: adopt them.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("chkpt bench: needs root (restart uses clone3 with chosen PIDs)");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let hog = tmp.path().join("hog");
    compile(&here.join("benches/hog.c"), &hog);
    let tree = tmp.path().join("tree");
    compile(&here.join("tests/progs/tree.c"), &tree);
    let have_criu = Command::new("criu")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let sizes: Vec<u64> = std::env::var("KRG_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![64, 256, 1024]);
    let rounds: usize = std::env::var("KRG_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let verbose = std::env::var_os("KRG_BENCH_VERBOSE").is_some();
    let mut works: Vec<(String, Work)> = sizes
        .iter()
        .map(|&m| (format!("{m} MiB anon"), Work::Hog(hog.clone(), m)))
        .collect();
    works.push(("3-process pipe tree".into(), Work::Tree(tree)));

    println!(
        "checkpoint/restart, median of {rounds} round(s){}",
        if have_criu {
            ", krg vs CRIU interleaved"
        } else {
            " (criu not on PATH: no comparison)"
        }
    );
    println!(
        "{:<22} {:>10} {:>10} {:>11} | {:>10} {:>10} {:>11} | {:>6} {:>6} {:>6}",
        "workload",
        "dump s",
        "restore s",
        "image MiB",
        "criu dump",
        "criu rest",
        "criu MiB",
        "dump×",
        "rest×",
        "size×"
    );
    for (name, work) in &works {
        let wdir = tmp.path().join("w");
        std::fs::create_dir_all(&wdir).expect("work dir");
        let (mut k, mut c) = (Samples::default(), Samples::default());
        for r in 0..rounds {
            // Who goes first alternates: the second run of a round finds the
            // memory the first one freed, which this VM hands back slowly.
            if have_criu && r % 2 == 1 {
                round_criu(work, &wdir, &mut c);
            }
            round_krg(work, &wdir, &mut k);
            if have_criu && r % 2 == 0 {
                round_criu(work, &wdir, &mut c);
            }
            if verbose {
                let last = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
                eprintln!(
                    "  {name} round {}: krg dump {:.3} restore {:.3} | criu dump {:.3} restore {:.3}",
                    r + 1,
                    last(&k.dump),
                    last(&k.restore),
                    last(&c.dump),
                    last(&c.restore)
                );
            }
        }
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let (kd, kr) = (median(&mut k.dump), median(&mut k.restore));
        if have_criu {
            let (cd, cr) = (median(&mut c.dump), median(&mut c.restore));
            println!(
                "{:<22} {:>10.3} {:>10.3} {:>11.1} | {:>10.3} {:>10.3} {:>11.1} | {:>6.2} {:>6.2} {:>6.2}",
                name, kd, kr, mib(k.size), cd, cr, mib(c.size), kd / cd, kr / cr, k.size as f64 / c.size as f64
            );
        } else {
            println!(
                "{:<22} {:>10.3} {:>10.3} {:>11.1} |",
                name,
                kd,
                kr,
                mib(k.size)
            );
        }
        let _ = std::fs::remove_dir_all(&wdir);
    }
}
