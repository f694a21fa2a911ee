//! The end of a job run on another node reaches a user who reads slowly.
//! The node that ran it has written everything (its last output, its exit
//! status) when the job ends, but much of it may still sit in its socket
//! while the user's pipe is full. Closing that connection with some of
//! the user's stdin unread there resets it, and a reset throws away what
//! was not sent yet: the user saw the output cut short and "connection to
//! its krgd lost" instead of the exit status (12 rounds in 30 before the
//! fix). Needs root (CI runs as root).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use krg_tests::{bin, serial, TestCluster};

const ROUNDS: usize = 8;

#[test]
fn a_slow_reader_gets_the_whole_output_and_the_exit_status() -> Result<()> {
    let _g = serial();
    let c = TestCluster::loopback(2)?.formed(2, Duration::from_secs(20))?;
    let krg = c.krg(1)?;
    let socket = krg
        .get_envs()
        .find(|(k, _)| *k == "KRG_SOCKET")
        .and_then(|(_, v)| v)
        .unwrap()
        .to_owned();
    // The job's stdin comes in frames of a few bytes and it never reads
    // it: once its pipe and krgd's queues are full, the rest waits unread
    // in the socket. The user's pipe is read only after a second, so the
    // job's output waits in the sockets too.
    let pipeline = format!(
        "while :; do echo x; done | {} run -n 2 -- sh -c 'seq 1 400000; exit 3' \
         | (sleep 1; tail -c 20); echo status=${{PIPESTATUS[1]}}",
        bin("krg").display()
    );
    let mut cut = Vec::new();
    for round in 0..ROUNDS {
        let o = Command::new("bash")
            .arg("-c")
            .arg(&pipeline)
            .env("KRG_SOCKET", &socket)
            .output()?;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if !out.ends_with("\n400000\nstatus=3\n") {
            cut.push(format!(
                "round {round}: ends {out:?}, stderr {:?}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
    }
    assert!(
        cut.is_empty(),
        "the job's end was lost:\n{}",
        cut.join("\n")
    );
    Ok(())
}
