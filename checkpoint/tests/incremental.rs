//! Checkpoints taken while the job runs, and incremental SNs: a program
//! that rewrites, drops, moves and remaps its memory all the time is saved
//! three times in a row (SN 2 and 3 keep what did not change in the SN
//! before) and comes back, from every SN of the chain, with every page as
//! it was at that instant (it checks all of them every step).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
#![allow(clippy::zombie_processes)] // children are reaped by kill_reap

mod common;

use std::process::{Command, Stdio};

use common::*;

fn mm_size(store: &std::path::Path, pid: i32, sn: u32) -> u64 {
    std::fs::metadata(
        store
            .join(pid.to_string())
            .join(format!("task_mm_{pid}_v{sn}.bin")),
    )
    .unwrap()
    .len()
}

#[test]
fn churning_memory_comes_back_from_every_sn_of_a_chain() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c(tmp.path(), "churn");
    let store = tmp.path().join("store");
    let mut cmd = Command::new(&exe);
    cmd.arg("24").stderr(Stdio::null());
    let (child, out) = spawn_reading(cmd);
    let pid = guard.add(child.id() as i32);
    wait_until("churn checks its memory", || last_of(&out.get()) >= 3);
    let mut at = Vec::new();
    for sn in 1..=3u32 {
        let n = last_of(&out.get());
        wait_until("churn runs on", || last_of(&out.get()) >= n + 3);
        let before = last_of(&out.get());
        let o = checkpoint_out(&store, pid, &[]);
        ok(&o, "checkpoint");
        let said = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(said.contains(&format!("as SN {sn}")), "{said}");
        assert!(said.contains("frozen"), "{said}");
        if sn > 1 {
            assert!(
                said.contains(&format!("incremental on SN {}", sn - 1)),
                "{said}"
            );
        }
        at.push((before, last_of(&out.get())));
    }
    // SN 2 and 3 hold the pages changed since the SN before, and keep the
    // others (100 of the 6144 pages are rewritten every step)
    let full = mm_size(&store, pid, 1);
    assert!(full > 20 << 20, "SN 1 holds (nearly) every page: {full}");
    for sn in [2u32, 3] {
        let inc = mm_size(&store, pid, sn);
        assert!(inc < full, "SN {sn} is {inc} bytes against {full}");
        let desc = std::fs::read_to_string(
            store
                .join(pid.to_string())
                .join(format!("description_v{sn}.txt")),
        )
        .unwrap();
        let kept: u64 = desc
            .split(" unchanged page(s) kept in SN")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(
            kept > 600,
            "SN {sn} keeps only {kept} pages in SN {}: {desc}",
            sn - 1
        );
    }
    let final_count = last_of(&out.get());
    kill_reap(pid);
    let dir = store.join(pid.to_string());
    let chains = run(Command::new(bin("checkpoint")).arg("inspect").arg(&dir));
    ok(&chains, "inspect DIR");
    let text = String::from_utf8_lossy(&chains.stdout).into_owned();
    assert!(text.contains("chain 3 <- 2 <- 1"), "{text}");
    // a reader that leaves at once (`| head`) is no error, and no panic
    let mut early = Command::new(bin("checkpoint"))
        .arg("inspect")
        .arg(&dir)
        .arg("3")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(early.stdout.take());
    let gone = early.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(gone.status.success() && !err.contains("panicked"), "{err}");
    // `counter_lines` fails on a BAD line or a jump: each restored job
    // must go on from where its SN was taken, every page right.
    let check = |sn: u32, tag: &str| {
        let log = tmp.path().join(format!("restored{sn}{tag}.txt"));
        let o = restart_into(&store, pid, sn, &[], &log);
        ok(&o, "restart");
        let text = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_until("the restored job checks its memory", || {
            let t = text();
            assert!(!t.contains("BAD"), "restored from SN {sn}{tag}: {t}");
            t.lines().count() >= 4
        });
        let first = counter_lines(&text())[0];
        let (before, after) = at[sn as usize - 1];
        assert!(
            first >= before && first <= after + 2 && first <= final_count + 2,
            "SN {sn}: resumed at {first}, checkpoint taken between {before} and {after}"
        );
        kill_reap(pid);
    };
    for sn in [3u32, 2, 1] {
        check(sn, "");
    }
    // Removing SN 2 moves the pages SN 3 kept there into SN 3.
    let rm = |sn: u32| {
        run(Command::new(bin("checkpoint"))
            .arg("rm")
            .arg("--dir")
            .arg(&store)
            .arg(pid.to_string())
            .arg(sn.to_string()))
    };
    let o = rm(2);
    ok(&o, "rm 2");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("SN 3 took over"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let text = String::from_utf8_lossy(
        &run(Command::new(bin("checkpoint")).arg("inspect").arg(&dir)).stdout,
    )
    .into_owned();
    assert!(
        text.contains("chain 3 <- 1") && !text.contains("SN 2 "),
        "{text}"
    );
    check(3, "-after-rm2");
    let gone = restart_into(&store, pid, 2, &[], &tmp.path().join("none.txt"));
    assert!(
        !gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("no checkpoint 2")
    );
    // and removing SN 1 leaves SN 3 whole
    ok(&rm(1), "rm 1");
    let text = String::from_utf8_lossy(
        &run(Command::new(bin("checkpoint")).arg("inspect").arg(&dir)).stdout,
    )
    .into_owned();
    assert!(text.contains("full") && !text.contains("SN 1 "), "{text}");
    check(3, "-alone");
}
