//! What the migration tests share: a process killed when dropped, its
//! CAN_MIGRATE, `migrate`, `krg ps`, its output read line by line, and a
//! process whose output shows whether its memory arrived whole and
//! whether two copies of it ran.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::{bin, wait_for, TestCluster};

/// Admin socket of node `id`.
pub fn socket(c: &TestCluster, id: u32) -> PathBuf {
    c.dir.path().join(format!("krgd{id}.sock"))
}

/// A test process, killed (by PID, wherever it runs now) when dropped.
pub struct Job(pub i32);

impl Drop for Job {
    fn drop(&mut self) {
        // SAFETY: kill(2) of a process this test started.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// Give `pid` CAN_MIGRATE through node `via`.
pub fn capset(c: &TestCluster, via: u32, pid: i32) {
    let o = Command::new(bin("krgcapset"))
        .env("KRG_SOCKET", socket(c, via))
        .args(["-k", &pid.to_string(), "-d", "+CAN_MIGRATE"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `migrate ARGS` through node `via`.
pub fn migrate(c: &TestCluster, via: u32, args: &[&str]) -> Output {
    Command::new(bin("migrate"))
        .env("KRG_SOCKET", socket(c, via))
        .args(args)
        .output()
        .unwrap()
}

pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The parent PID of `pid`.
pub fn ppid(pid: i32) -> i32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    s[s.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// (node, pid) rows of krg ps.
pub fn ps(c: &TestCluster, via: u32) -> Vec<(u64, i64)> {
    let o = c.krg(via).unwrap().args(["ps", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["node"].as_u64().unwrap(), r["pid"].as_i64().unwrap()))
        .collect()
}

/// Prints a numbered line with its PID to stdout, and one to stderr, every 20 ms.
pub const PRINTER: &str = r#"
import os, sys, time
n = 0
while True:
    n += 1
    sys.stdout.write("%d %d\n" % (n, os.getpid()))
    sys.stdout.flush()
    sys.stderr.write("e %d\n" % n)
    sys.stderr.flush()
    time.sleep(0.02)
"#;

/// Lines of `from`, as they come, on a channel.
pub fn lines_of(from: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(from).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next `count` lines.
pub fn next_lines(rx: &std::sync::mpsc::Receiver<String>, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("the process's output goes on")
        })
        .collect()
}

/// The host PID of the moved copy of process `pid`: a process that moved
/// with a stand-in runs in a PID namespace of its own where it is still
/// `pid`, while the stand-in holds `pid` itself. Waits (10 s) until exactly
/// one live process is that; otherwise panics naming every process that
/// is `pid` in a namespace of its own (zombies too).
pub fn moved_host_pid(pid: i32) -> i32 {
    let find = || {
        let hits: Vec<i32> = copies_of(pid)
            .into_iter()
            .filter(|c| !c.zombie)
            .map(|c| c.host)
            .collect();
        (hits.len() == 1).then(|| hits[0])
    };
    match crate::wait_for(Duration::from_secs(10), "the moved copy", find) {
        Ok(host) => host,
        Err(e) => panic!(
            "{e}; processes that are {pid} in a PID namespace of their own: {:?}",
            copies_of(pid)
        ),
    }
}

/// A process that is `pid` in a PID namespace of its own.
#[derive(Debug)]
#[allow(dead_code)] // fields read through Debug, in a failure's message
struct MovedCopy {
    host: i32,
    zombie: bool,
    nspid: String,
    cmdline: String,
}

/// Every process (but `pid` itself) whose innermost PID is `pid`.
fn copies_of(pid: i32) -> Vec<MovedCopy> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(host) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let nspid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .unwrap_or("")
            .trim()
            .to_string();
        let ids: Vec<i32> = nspid
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        if host == pid || ids.last() != Some(&pid) || ids.len() < 2 {
            continue;
        }
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'));
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push(MovedCopy {
            host,
            zombie,
            nspid,
            cmdline,
        });
    }
    out
}

/// A new pseudo-terminal: (master, slave), neither a controlling terminal.
pub fn pty_pair() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    // SAFETY: posix_openpt/grantpt/unlockpt/ptsname_r on our new
    // descriptor; the slave is opened from the name it wrote.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(m >= 0 && libc::grantpt(m) == 0 && libc::unlockpt(m) == 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
        let s = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        assert!(s >= 0);
        (std::fs::File::from_raw_fd(m), std::fs::File::from_raw_fd(s))
    }
}

/// The last number the counter wrote.
pub fn last(out: &Path) -> u64 {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// Wait until the counter in `out` passed `from` by more than 3: its last
/// number.
pub fn grows(out: &Path, from: u64) -> u64 {
    wait_for(Duration::from_secs(10), "the counter to go on", || {
        let n = last(out);
        (n > from + 3).then_some(n)
    })
    .unwrap()
}

/// The state letter of `pid` in /proc (`R`, `S`, `T`, `t`, `Z`), if it exists.
pub fn state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.get(s.rfind(')')? + 2..)?.chars().next()
}

/// Writes pages of its memory all the time; each line: iteration, PID, and
/// how many pages differ from what it last wrote there (0 when memory
/// arrived whole).
pub const STAMPER: &str = r#"
import os, sys, time, random
n = 16384
buf = bytearray(n * 4096)
gen = [0] * n
f = open(sys.argv[1], "a", buffering=1)
rnd = random.Random(1)
k = 0
while True:
    for _ in range(3000):
        i = rnd.randrange(n)
        g = gen[i] + 1
        gen[i] = g
        buf[i * 4096:i * 4096 + 8] = g.to_bytes(8, "little")
    k += 1
    bad = sum(1 for i in range(n) if int.from_bytes(buf[i * 4096:i * 4096 + 8], "little") != gen[i])
    f.write("%d %d %d\n" % (k, os.getpid(), bad))
    time.sleep(0.002)
"#;

/// Check the STAMPER's lines: every iteration once, in order, by `pid`,
/// with no page differing from what it last wrote. Returns the lines.
pub fn stamps_intact(out: &Path, pid: i32) -> usize {
    let text = std::fs::read_to_string(out).unwrap();
    let rows: Vec<Vec<u64>> = text
        .lines()
        .map(|l| l.split(' ').map(|w| w.parse().unwrap()).collect())
        .collect();
    assert!(
        rows.windows(2).all(|w| w[1][0] == w[0][0] + 1),
        "a gap or a repeat in the iterations"
    );
    for r in &rows {
        assert_eq!(r[1], pid as u64, "another PID: {r:?}");
        assert_eq!(r[2], 0, "pages lost across the moves (iteration {})", r[0]);
    }
    rows.len()
}
