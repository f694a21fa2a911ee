//! Part 1 of the checkpoint benchmark: how long a job is frozen, measured
//! inside it (`gaphog.c` keeps the longest gap between its own clock
//! readings, taken every 200 us) and by the tool, with the job left
//! running (`checkpoint`, `criu dump --leave-running`); and SN 2 of the same
//! job after 5 % of its memory changed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

/// One job of `gaphog`.
struct Job {
    pid: i32,
    report: PathBuf,
}

impl Job {
    fn start(exe: &Path, dir: &Path, mib: u64) -> Job {
        let ready = dir.join("ready");
        let report = dir.join("report");
        let _ = std::fs::remove_file(&ready);
        let mut c = Command::new(exe);
        c.arg(mib.to_string()).arg(&ready).arg(&report);
        let pid = start(c);
        wait_for(&ready);
        Job { pid, report }
    }

    /// Send `sig` and wait for the report it triggers.
    fn ask(&self, sig: i32, what: &str) -> i64 {
        let _ = std::fs::remove_file(&self.report);
        // SAFETY: plain kill of our workload.
        unsafe { libc::kill(self.pid, sig) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(t) = std::fs::read_to_string(&self.report) {
                if let Some(v) = t.strip_prefix(what).and_then(|r| r.trim().parse().ok()) {
                    return v;
                }
            }
            assert!(Instant::now() < deadline, "workload did not report {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The longest gap (ms) the job saw since the last call.
    fn gap_ms(&self) -> f64 {
        self.ask(libc::SIGUSR1, "gap_us") as f64 / 1000.0
    }

    fn end(self) {
        kill_tree(self.pid);
    }
}

#[derive(Default)]
struct Krg {
    frozen_job: Vec<f64>,
    frozen_tool: Vec<f64>,
    dump: Vec<f64>,
    sn2: Vec<f64>,
    sn2_frozen: Vec<f64>,
    sn2_bytes: u64,
    /// The longest gap the job saw while nothing checkpointed it (for as
    /// long as the dump took, at most 5 s): the machine's own noise.
    idle: Vec<f64>,
}

#[derive(Default)]
struct Criu {
    frozen_job: Vec<f64>,
    dump: Vec<f64>,
    /// What `criu pre-dump` did (its incremental mode), once.
    pre_dump: Option<String>,
}

/// "frozen 12.3 ms" in checkpoint's output.
fn tool_frozen(out: &str) -> f64 {
    out.split("frozen ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn checkpoint(store: &Path, pid: i32) -> (f64, String) {
    let t = Instant::now();
    let o = clean(
        Command::new(CHECKPOINT)
            .args(["--no-capability-check", "--dir"])
            .arg(store)
            .arg(pid.to_string()),
    )
    .stdout(std::process::Stdio::piped())
    .output()
    .expect("checkpoint");
    let d = t.elapsed().as_secs_f64();
    assert!(
        o.status.success(),
        "checkpoint failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (d, String::from_utf8_lossy(&o.stdout).into_owned())
}

fn round_krg(exe: &Path, dir: &Path, mib: u64, s: &mut Krg) {
    let store = dir.join("krg");
    let _ = std::fs::remove_dir_all(&store);
    let job = Job::start(exe, dir, mib);
    job.gap_ms();
    let (d, out) = checkpoint(&store, job.pid);
    s.frozen_job.push(job.gap_ms());
    s.frozen_tool.push(tool_frozen(&out));
    s.dump.push(d);
    std::thread::sleep(Duration::from_secs_f64(d.min(5.0)));
    s.idle.push(job.gap_ms());
    job.ask(libc::SIGUSR2, "changed");
    job.gap_ms();
    let (d2, out2) = checkpoint(&store, job.pid);
    assert!(out2.contains("incremental on SN 1"), "{out2}");
    s.sn2_frozen.push(job.gap_ms());
    s.sn2.push(d2);
    let app = store.join(job.pid.to_string());
    s.sn2_bytes = std::fs::read_dir(&app)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().contains("_v2."))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    job.end();
    let _ = std::fs::remove_dir_all(&store);
}

fn round_criu(exe: &Path, dir: &Path, mib: u64, s: &mut Criu) {
    let img = dir.join("criu");
    let _ = std::fs::remove_dir_all(&img);
    std::fs::create_dir_all(&img).expect("criu dir");
    let job = Job::start(exe, dir, mib);
    job.gap_ms();
    let d = must(
        Command::new("criu")
            .args(["dump", "--leave-running", "-t", &job.pid.to_string(), "-D"])
            .arg(&img)
            .args(["-o", "dump.log"]),
        "criu dump --leave-running",
    );
    s.frozen_job.push(job.gap_ms());
    s.dump.push(d.as_secs_f64());
    if s.pre_dump.is_none() {
        // CRIU's incremental mode: pre-dump, then a dump on top of it.
        let pre = dir.join("criu-pre");
        let _ = std::fs::remove_dir_all(&pre);
        std::fs::create_dir_all(&pre).expect("criu pre dir");
        let o = clean(
            Command::new("criu")
                .args(["pre-dump", "-t", &job.pid.to_string(), "-D"])
                .arg(&pre)
                .args(["-o", "pre.log"]),
        )
        .output()
        .expect("criu pre-dump");
        let why = std::fs::read_to_string(pre.join("pre.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .find(|l| l.contains("Error") || l.contains("rror ("))
            .map(|l| l.trim().chars().take(70).collect::<String>())
            .unwrap_or_default();
        s.pre_dump = Some(if o.status.success() {
            "pre-dump works".into()
        } else {
            format!("pre-dump fails: {why}")
        });
        let _ = std::fs::remove_dir_all(&pre);
    }
    job.end();
    let _ = std::fs::remove_dir_all(&img);
}

pub fn run(tmp: &Path, sizes: &[u64], rounds: usize, criu: bool, verbose: bool) {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = tmp.join("gaphog");
    compile(&here.join("benches/gaphog.c"), &exe);
    println!("\ntime frozen, job left running (ms; \"job\" = longest gap the job saw between its own clock readings)");
    println!(
        "{:<10} {:>10} {:>10} {:>9} {:>9} | {:>10} {:>9} | {:>8}",
        "job", "krg job", "krg tool", "krg s", "idle gap", "criu job", "criu s", "frozen×"
    );
    let mut sn2 = Vec::new();
    for &mib in sizes {
        let dir = tmp.join(format!("f{mib}"));
        std::fs::create_dir_all(&dir).expect("bench dir");
        let (mut k, mut c) = (Krg::default(), Criu::default());
        for r in 0..rounds {
            if criu && r % 2 == 1 {
                round_criu(&exe, &dir, mib, &mut c);
            }
            round_krg(&exe, &dir, mib, &mut k);
            if criu && r % 2 == 0 {
                round_criu(&exe, &dir, mib, &mut c);
            }
            if verbose {
                let last = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
                eprintln!(
                    "  {mib} MiB round {}: krg frozen {:.1} ms (tool {:.1}, idle gap {:.1}) dump {:.3} s, SN 2 {:.3} s frozen {:.1} ms | criu frozen {:.1} ms dump {:.3} s; load {}",
                    r + 1,
                    last(&k.frozen_job),
                    last(&k.frozen_tool),
                    last(&k.idle),
                    last(&k.dump),
                    last(&k.sn2),
                    last(&k.sn2_frozen),
                    last(&c.frozen_job),
                    last(&c.dump),
                    load()
                );
            }
        }
        let kf = median(&mut k.frozen_job);
        let name = format!("{mib} MiB");
        if criu {
            let cf = median(&mut c.frozen_job);
            println!(
                "{:<10} {:>10.1} {:>10.1} {:>9.3} {:>9.1} | {:>10.1} {:>9.3} | {:>8.3}",
                name,
                kf,
                median(&mut k.frozen_tool),
                median(&mut k.dump),
                median(&mut k.idle),
                cf,
                median(&mut c.dump),
                kf / cf
            );
        } else {
            println!(
                "{:<10} {:>10.1} {:>10.1} {:>9.3} {:>9.1} |",
                name,
                kf,
                median(&mut k.frozen_tool),
                median(&mut k.dump),
                median(&mut k.idle)
            );
        }
        sn2.push((name, k, c.pre_dump));
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("\nSN 2 after 5 % of the memory changed (krg, incremental on SN 1)");
    println!(
        "{:<10} {:>9} {:>10} {:>10} | CRIU",
        "job", "SN 2 s", "frozen ms", "image MiB"
    );
    for (name, mut k, pre) in sn2 {
        println!(
            "{:<10} {:>9.3} {:>10.1} {:>10.1} | {}",
            name,
            median(&mut k.sn2),
            median(&mut k.sn2_frozen),
            mib(k.sn2_bytes),
            pre.unwrap_or_else(|| "-".into())
        );
    }
}
