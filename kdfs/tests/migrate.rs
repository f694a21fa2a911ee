//! A process writing to a kDFS file moves to another node (`migrate`) and
//! goes on writing it: the file is reopened there at its offset, and its
//! content, read through the other node's mount, is whole — every line
//! once, in order, before and after the move. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin_dir, wait_until, Cluster};

/// Appends its count to the file, one line every 10 ms.
const WRITER: &str = r#"
import sys, time
f = open(sys.argv[1], "a", buffering=1)
n = 0
while True:
    n += 1
    f.write("%d\n" % n)
    time.sleep(0.01)
"#;

fn lines(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// Killed by PID (wherever it runs now) when dropped.
struct Writer(i32);

impl Drop for Writer {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the process this test started.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

#[test]
fn a_process_writing_a_kdfs_file_moves_and_the_file_stays_whole() {
    let c = Cluster::with_kdfs(2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let file = n1.mnt.join("counted.txt");
    let seen_from_2 = n2.mnt.join("counted.txt");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", WRITER])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: close_range between fork and exec touches only the child's
    // descriptor table (no stray fd may lead out of what moves).
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let writer = Writer(child.id() as i32);
    std::thread::spawn(move || child.wait());
    let cap = Command::new(bin_dir().join("krgcapset"))
        .arg("--socket")
        .arg(&n1.sock)
        .args(["-k", &writer.0.to_string(), "-d", "+CAN_MIGRATE"])
        .output()
        .unwrap();
    assert!(
        cap.status.success(),
        "{}",
        String::from_utf8_lossy(&cap.stderr)
    );
    wait_until("the writer to start", Duration::from_secs(10), || {
        lines(&seen_from_2).len() > 20
    });
    let moved = Command::new(bin_dir().join("migrate"))
        .env("KRG_SOCKET", &n1.sock)
        .args([&writer.0.to_string(), "2"])
        .output()
        .unwrap();
    assert!(
        moved.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&moved.stderr)
    );
    let at_move = lines(&seen_from_2).len();
    wait_until("the writer to go on there", Duration::from_secs(10), || {
        lines(&seen_from_2).len() > at_move + 20
    });
    drop(writer);
    let got = lines(&seen_from_2);
    let expected: Vec<u64> = (1..=got.len() as u64).collect();
    assert_eq!(got, expected, "a line lost, doubled or torn by the move");
}
