//! Helpers shared by the integration tests: build test programs, run them
//! with a clean fd table, run the real binaries, wait for output.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub fn bin(name: &str) -> PathBuf {
    match name {
        "checkpoint" => PathBuf::from(env!("CARGO_BIN_EXE_checkpoint")),
        "restart" => PathBuf::from(env!("CARGO_BIN_EXE_restart")),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_krgcapset")),
    }
}

/// Restored processes are orphaned when `restart` exits; make this test
/// process their reaper so they never linger as zombies of PID 1.
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    });
}

/// Compile a C program of tests/progs with cc.
pub fn build_c(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/progs")
        .join(format!("{name}.c"));
    let out = dir.join(name);
    let st = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc runs");
    assert!(st.success(), "cc {name}.c failed");
    out
}

/// Compile a Rust program of tests/progs with rustc (the toolchain that
/// builds these tests; `$RUSTC` if set).
pub fn build_rust(dir: &Path, name: &str) -> PathBuf {
    let src = prog(&format!("{name}.rs"));
    let out = dir.join(name);
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let st = Command::new(rustc)
        .args(["--edition", "2021", "-C", "opt-level=1", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("rustc runs");
    assert!(st.success(), "rustc {name}.rs failed");
    out
}

pub fn prog(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/progs")
        .join(name)
}

/// Spawn with only fds 0-2 (the test harness may leak others).
pub fn spawn(mut cmd: Command) -> Child {
    // SAFETY: close_range is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    cmd.spawn().expect("spawn test program")
}

/// `checkpoint --no-capability-check --dir STORE [EXTRA…] PID`. No krgd is
/// asked (the socket named does not exist), so the image holds node 0.
pub fn checkpoint_out(store: &Path, pid: i32, extra: &[&str]) -> Output {
    run(Command::new(bin("checkpoint"))
        .arg("--no-capability-check")
        .arg("--socket")
        .arg(store.with_extension("no-krgd.sock"))
        .arg("--dir")
        .arg(store)
        .args(extra)
        .arg(pid.to_string()))
}

/// The SN a successful `checkpoint` reported ("... as SN N in ..."). A
/// refused attempt can use up an SN number (its tombstone), so tests that
/// retry read the number instead of counting.
pub fn saved_sn(o: &Output) -> u32 {
    let said = String::from_utf8_lossy(&o.stdout);
    said.split(" as SN ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no SN in the checkpoint's report: {said}"))
}

/// `restart --dir STORE PID SN`.
pub fn restart_out(store: &Path, pid: i32, sn: u32) -> Output {
    run(Command::new(bin("restart"))
        .arg("--dir")
        .arg(store)
        .arg(pid.to_string())
        .arg(sn.to_string()))
}

/// Panic with the command's stderr unless it succeeded.
pub fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Run to completion, with only fds 0-2 and stdin from /dev/null.
pub fn run(cmd: &mut Command) -> Output {
    // SAFETY: close_range is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    cmd.stdin(Stdio::null()).output().expect("run binary")
}

/// Wait until `f` holds (bounded, generous: the machine may be loaded).
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Parse "N ok" lines; panics on a BAD line or a gap in N.
pub fn counter_lines(text: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for l in text.lines() {
        let mut it = l.split_whitespace();
        let (Some(n), Some(st)) = (it.next(), it.next()) else {
            continue;
        };
        assert_eq!(st, "ok", "program reported a problem: {l:?}");
        out.push(n.parse::<u64>().expect("counter"));
    }
    for w in out.windows(2) {
        assert_eq!(w[1], w[0] + 1, "counter skipped or reset: {:?}", &out);
    }
    out
}

pub fn last_count(path: &Path) -> u64 {
    counter_lines(&std::fs::read_to_string(path).unwrap_or_default())
        .last()
        .copied()
        .unwrap_or(0)
}

/// Kill and reap `pid` (our child or, as subreaper, an adopted process).
pub fn kill_reap(pid: i32) {
    // SAFETY: plain kill/waitpid.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
    }
}

pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Process state letter from /proc/PID/stat.
pub fn state(pid: i32) -> char {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rsplit_once(") ")
        .and_then(|(_, r)| r.chars().next())
        .unwrap_or('?')
}

/// Clock ticks since boot (the unit of /proc/PID/stat's start time).
fn ticks_now() -> u64 {
    let up = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let secs: f64 = up
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    (secs * unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64) as u64
}

fn start_ticks(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Kills the processes of a test that fails half way, so that no job is
/// left running. Only processes started after the guard was made are
/// touched: a PID recycled by someone else is never hit.
pub struct Guard {
    pids: std::cell::RefCell<Vec<i32>>,
    since: u64,
}

impl Guard {
    pub fn new() -> Self {
        Guard {
            pids: Default::default(),
            since: ticks_now().saturating_sub(1),
        }
    }
    pub fn add(&self, pid: i32) -> i32 {
        self.pids.borrow_mut().push(pid);
        pid
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for &p in self.pids.borrow().iter() {
            if start_ticks(p).is_some_and(|t| t >= self.since) {
                kill_reap(p);
            }
        }
    }
}

/// What a program wrote to its stdout (a pipe to this test), as it comes.
#[derive(Clone, Default)]
pub struct Output2 {
    pub text: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Output2 {
    pub fn get(&self) -> String {
        self.text.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Spawn `cmd` (fds 0-2 only, stdout a pipe read by a thread of the test).
pub fn spawn_reading(mut cmd: Command) -> (Child, Output2) {
    use std::io::BufRead;
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    let mut child = spawn(cmd);
    let out = Output2::default();
    let text = out.text.clone();
    let pipe = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Ok(mut s) = text.lock() {
                s.push_str(&l);
                s.push('\n');
            }
        }
    });
    (child, out)
}

/// `restart --dir STORE [EXTRA…] PID SN` with its stdout (which a restored
/// job whose stdout led outside its tree inherits) into `out`.
pub fn restart_into(store: &Path, pid: i32, sn: u32, extra: &[&str], out: &Path) -> Output {
    let f = std::fs::File::create(out).expect("create output file");
    Command::new(bin("restart"))
        .arg("--dir")
        .arg(store)
        .args(extra)
        .arg(pid.to_string())
        .arg(sn.to_string())
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(Stdio::piped())
        .output()
        .expect("run restart")
}

/// The last counter of "N ok" lines (0 if none).
pub fn last_of(text: &str) -> u64 {
    counter_lines(text).last().copied().unwrap_or(0)
}

/// The PIDs of the tasks SN `sn` of application `pid` holds (from
/// `checkpoint inspect --json`).
pub fn image_pids(store: &Path, pid: i32, sn: u32) -> Vec<i32> {
    let o = run(Command::new(bin("checkpoint"))
        .args(["inspect", "--json"])
        .arg(store.join(pid.to_string()))
        .arg(sn.to_string()));
    ok(&o, "inspect --json");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    v["nodes"][0]["node"]["tasks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["pid"].as_i64())
                .map(|p| p as i32)
                .collect()
        })
        .unwrap_or_default()
}

/// Physical frame of each of `pages` pages from `addr` in `pid` (root sees
/// them; 0 for a page not in memory).
pub fn frames(pid: i32, addr: u64, pages: usize) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let mut b = vec![0u8; pages * 8];
    f.read_exact_at(&mut b, addr / 4096 * 8).unwrap();
    b.chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap()) & ((1 << 55) - 1))
        .collect()
}

/// Send `pid` SIGUSR1 and read what it writes, once done, to
/// `dir`/`name`.<pid> (test programs write it whole, through a rename).
pub fn ask_usr1(dir: &Path, pid: i32, name: &str) -> String {
    let path = dir.join(format!("{name}.{pid}"));
    let _ = std::fs::remove_file(&path);
    // SAFETY: signalling a test process.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    wait_until("the program answered", || path.exists());
    std::fs::read_to_string(&path)
        .expect("answer")
        .trim()
        .to_string()
}

/// Ask `pid` (cowtree) to check its pages; what it found.
pub fn cow_check(dir: &Path, pid: i32) -> String {
    ask_usr1(dir, pid, "check")
}

/// The children of `pid` (of its main thread).
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect()
}

/// Build test program `name` in `dir`, start it with `args` (stdout into
/// `dir`/out.txt, stdin and stderr on /dev/null) and wait until it printed
/// `lines` "N ok" lines. Returns its PID and the output file.
pub fn start_counter(
    guard: &Guard,
    dir: &Path,
    name: &str,
    args: &[&Path],
    lines: u64,
) -> (i32, PathBuf) {
    let exe = build_c(dir, name);
    let out = dir.join("out.txt");
    let mut cmd = Command::new(&exe);
    cmd.args(args)
        .stdout(std::fs::File::create(&out).expect("output file"))
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let pid = guard.add(spawn(cmd).id() as i32);
    wait_until("first lines", || last_count(&out) >= lines);
    (pid, out)
}
