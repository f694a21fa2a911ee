//! A job on a terminal (`krg run -t`) moves and keeps a terminal.

use super::*;

/// Reads lines on its terminal; answers each with its PID and whether it
/// leads its session, holds the terminal's foreground and reads a
/// terminal (`tcgetpgrp` fails unless the terminal is its controlling
/// one); says "sigint" on SIGINT, "winch COLS ROWS" on SIGWINCH; exits 7
/// on "quit".
const ON_A_TERMINAL: &str = r#"
import os, signal, sys
def say(s):
    sys.stdout.write(s + "\n")
    sys.stdout.flush()
signal.signal(signal.SIGINT, lambda *a: say("sigint"))
signal.signal(signal.SIGWINCH, lambda *a: say("winch %d %d" % tuple(os.get_terminal_size(0))))
say("ready pid=%d" % os.getpid())
for line in sys.stdin:
    line = line.strip()
    if line == "quit":
        sys.exit(7)
    say("got: %s pid=%d leader=%s fg=%s" % (line, os.getpid(), os.getsid(0) == os.getpid(), os.tcgetpgrp(0) == os.getpgrp()))
"#;

/// A terminal for `krg run` (as a user's): its master, and the child
/// (`sh -c SH ARG`) that has its slave as controlling terminal and stdio.
struct Terminal {
    master: std::fs::File,
    child: Child,
    seen: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Terminal {
    fn start(c: &TestCluster, sh: &str, arg: &str) -> Terminal {
        use std::os::unix::process::CommandExt;
        let (master, slave) = krg_tests::migrating::pty_pair();
        resize(&master, 24, 80);
        let mut cmd = Command::new("sh");
        cmd.args(["-c", sh, arg])
            .env("KRG_SOCKET", socket(c))
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (mut from, to) = (master.try_clone().unwrap(), seen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut from, &mut buf) {
                if n == 0 {
                    return;
                }
                to.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Terminal {
            master,
            child,
            seen,
        }
    }

    /// `krg run -t -n 1` of [`ON_A_TERMINAL`] on this terminal, from a
    /// shell that holds CAN_MIGRATE.
    fn on_a_terminal(c: &TestCluster) -> Terminal {
        let sh = format!(
            "{capset} -k $$ -d +CAN_MIGRATE && exec {krg} run -t -n 1 -- python3 -u -c \"$0\"",
            capset = bin("krgcapset").display(),
            krg = bin("krg").display()
        );
        Terminal::start(c, &sh, ON_A_TERMINAL)
    }

    /// Wait until what the terminal showed holds `what`; all it showed.
    fn wait_for(&self, what: &str) -> String {
        wait_for(LINE_WAIT, what, || {
            let s = self.seen.lock().unwrap().replace('\r', "");
            s.contains(what).then_some(s)
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", self.seen.lock().unwrap()))
    }

    fn type_in(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn resize(master: &std::fs::File, rows: u16, cols: u16) {
    use std::os::fd::AsRawFd;
    let w = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &w) };
    assert_eq!(rc, 0);
}

/// A job on a terminal (`krg run -t`) moves: on the target it gets a new
/// terminal like its own, which is its controlling terminal with its
/// group in the foreground; what its user types is echoed once, Ctrl-C
/// is its SIGINT, a resize its SIGWINCH, and its exit status comes back.
/// Back home, node 2 steps out of its path: its krgd dies, and the job
/// still takes what its user types.
#[test]
fn a_job_on_a_terminal_moves_and_keeps_its_terminal() -> Result<()> {
    let _g = serial();
    let mut c = formed(2)?;
    let mut term = Terminal::on_a_terminal(&c);
    term.wait_for("ready pid=");
    let pid = python_on(&c, 1).expect("the job on node 1 in krg ps");
    term.type_in("before\n");
    term.wait_for(&format!("got: before pid={pid} leader=True fg=True"));

    moved(&c, &[], pid, 1, 2);
    term.type_in("after\n");
    let seen = term.wait_for(&format!("got: after pid={pid} leader=True fg=True"));
    // echoed once (by the job's terminal on node 2, not node 1's too)
    assert_eq!(seen.matches("after").count(), 2, "{seen:?}");
    term.type_in("\x03");
    term.wait_for("sigint");
    resize(&term.master, 50, 132);
    term.wait_for("winch 132 50");
    // and back, by post-copy: node 2's terminal is now the one left behind
    moved(&c, &["--postcopy"], pid, 2, 1);
    term.type_in("home\n");
    let seen = term.wait_for(&format!("got: home pid={pid} leader=True fg=True"));
    assert_eq!(seen.matches("home").count(), 2, "{seen:?}");
    resize(&term.master, 40, 100);
    term.wait_for("winch 100 40");
    // node 2 stepped out of its path (the splice): its krgd can die
    wait_for(LINE_WAIT, "node 2 out of the job's path", || {
        let log = c.nodes[&1].log_text();
        log.contains("it is out of the job's path").then_some(())
    })?;
    c.node(2)?.kill9();
    term.type_in("alone\n");
    term.wait_for(&format!("got: alone pid={pid} leader=True fg=True"));
    term.type_in("quit\n");
    let status = term.child.wait()?;
    assert_eq!(status.code(), Some(7), "{:?}", term.seen.lock().unwrap());
    Ok(())
}

/// The target's krgd dies while it takes a job on a terminal over: the
/// origin restores it at home, on a new terminal of its own, relayed like
/// a remote one; it still leads its session, holds the foreground, and
/// echoes once.
#[test]
fn a_job_on_a_terminal_whose_target_dies_runs_at_home_on_a_new_terminal() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::loopback(2)?;
    let crash = c.arm_crash_points();
    let c = c.formed(2, SETTLE)?;
    let mut term = Terminal::on_a_terminal(&c);
    term.wait_for("ready pid=");
    let pid = python_on(&c, 1).expect("the job on node 1 in krg ps");
    fails_at_the_handover(&c, &crash, pid);
    term.type_in("home\n");
    let seen = term.wait_for(&format!("got: home pid={pid} leader=True fg=True"));
    assert_eq!(seen.matches("home").count(), 2, "{seen:?}");
    term.type_in("\x03");
    term.wait_for("sigint");
    term.type_in("quit\n");
    assert_eq!(term.child.wait()?.code(), Some(7));
    Ok(())
}
