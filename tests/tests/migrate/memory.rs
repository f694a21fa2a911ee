//! Every page of a moved process arrives, written all the time or pulled
//! after it runs (post-copy).

use super::*;

/// Stamps a generation into random pages of 64 MiB as fast as it can and
/// keeps the expected generation of each page elsewhere in its memory;
/// each line: iteration, PID, pages whose content differs from the record.
/// Pages written all the time, during the copy made while it runs and the
/// freeze: after the move (there and back) each page still holds what the
/// process last wrote into it. `--timings` names the phases of both nodes.
#[test]
fn a_process_writing_all_the_time_keeps_every_page() -> Result<()> {
    let _g = serial();
    let c = formed(2)?;
    let (job, out, before) = movable(&c, STAMPER, "stamps.txt");
    let pid = job.0;
    let o = migrate(&c, 1, &["--timings", &pid.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    for phase in ["dump.freeze", "dump.ship", "push", "target.restart.load"] {
        assert!(
            err(&o).contains(&format!("migrate: timings: {phase} ")),
            "no {phase} in {}",
            err(&o)
        );
    }
    let mid = grows(&out, before);
    let o = migrate(&c, 1, &[&format!("2:{pid}"), "1"]);
    assert!(o.status.success(), "{}", err(&o));
    grows(&out, mid + 3);
    assert!(stamps_intact(&out, pid) > mid as usize);
    Ok(())
}

/// Post-copy (`--postcopy`): the process runs on the target before its
/// memory is there, its pages pulled from the origin as it touches them
/// and behind it; every page still holds what the process last wrote,
/// there, back and there again, and each origin drops its copy of the
/// image once the target has it all.
#[test]
fn postcopy_brings_every_page_after_the_process_runs() -> Result<()> {
    let _g = serial();
    let (c, port) = formed_with_metrics(2)?;
    let (job, out, before) = movable(&c, STAMPER, "stamps.txt");
    let pid = job.0;
    let o = migrate(&c, 1, &["--postcopy", "--json", &pid.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(rep["to"], 2, "{rep}");
    // the 64 MiB of page data did not go before the process ran there
    let sent = rep["bytes"].as_u64().unwrap();
    assert!(sent < 8 << 20, "{sent} bytes sent before the handover");
    let mid = grows(&out, before);
    let o = migrate(&c, 1, &["--postcopy", &format!("2:{pid}"), "1"]);
    assert!(o.status.success(), "{}", err(&o));
    grows(&out, mid + 3);
    stamps_intact(&out, pid);
    for node in [1, 2] {
        c.wait_no_migration_image(node)?;
    }
    // node 1, the second move's target, counts the memory it pulled
    let m = metrics(port);
    let pulled = m["krg_migration_pulled_bytes_total"];
    assert!(pulled >= (64 << 20) as f64, "pulled {pulled} bytes");
    // and, as the target, waited for the cluster to place the process
    assert!(m["krg_migration_placement_seconds_count"] >= 1.0, "{m:?}");
    // Back on node 1, behind its stand-in, it moves again by the PID its
    // parent knows (node 1 knew it was back: it said "runs on node 2; this
    // is its stand-in" before, and nothing could move it any more).
    let o = migrate(&c, 1, &["--postcopy", &pid.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    grows(&out, last(&out));
    assert!(ps(&c, 1).contains(&(2, pid as i64)), "{:?}", ps(&c, 1));
    stamps_intact(&out, pid);
    Ok(())
}

/// The checkpoint engine's churner (`checkpoint/tests/progs/churn.c`),
/// moved there and back twice, with pre-copy and post-copy, while it
/// changes its memory in every way a copy made while it runs could get
/// wrong — pages rewritten, ranges dropped (MADV_DONTNEED), an area moved
/// into a hole with `mremap`, one unmapped and mapped again, the heap
/// grown — and checks all of it each step: every line after the moves
/// still "ok", and every step once, in order.
///
/// Until Dec 7 2026 it failed about one run in five: a page kept as a
/// zero page in a round while the process ran, and written since, was
/// not reported written at the freeze and came back as zeros after the
/// next move of a process restored lazily (`BAD page N (ver 1 …)`); the
/// frozen round now looks again at the pages it keeps as the kernel's
/// (`ProcMem::kept_changed`). 50 runs in a row passed with that.
#[test]
fn a_churning_process_keeps_its_memory_across_moves() -> Result<()> {
    moved_four_times("churn", &["32"])
}

/// Four threads, each checking its own counters (in TLS and on its
/// stack) every step, moved the same way: every thread comes back and goes
/// on after each move (`checkpoint/tests/progs/threads.c`: "N BAD worker
/// stuck" when one does not).
#[test]
fn a_multithreaded_process_keeps_every_thread_across_moves() -> Result<()> {
    moved_four_times("threads", &[])
}

/// Three POSIX timers — periodic to the process, periodic to a thread,
/// a one-shot far ahead — moved the same way: each still ticks, with its
/// id and value, and the far one's time left only shrinks
/// (`checkpoint/tests/progs/posixtimers.c`).
#[test]
fn a_process_keeps_its_posix_timers_across_moves() -> Result<()> {
    moved_four_times("posixtimers", &[])
}

/// `prog` (of `checkpoint/tests/progs`, printing "N ok" each step, or
/// "N BAD …") started with `args`, moved there and back twice — pre-copy
/// there, post-copy back, post-copy there, pre-copy back — going on after
/// each move: every line "ok", every step once, in order.
fn moved_four_times(prog: &str, args: &[&str]) -> Result<()> {
    let _g = serial();
    let c = formed(2)?;
    let exe = c.dir.path().join(prog);
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../checkpoint/tests/progs")
        .join(format!("{prog}.c"));
    let o = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()?;
    assert!(o.status.success(), "{}", err(&o));
    let out = c.dir.path().join(format!("{prog}.txt"));
    let mut cmd = Command::new(&exe);
    detached_stdio(cmd.args(args)).stdout(std::fs::File::create(&out)?);
    let mut child: Child = cmd.spawn()?;
    let job = Job(child.id() as i32);
    std::thread::spawn(move || child.wait());
    let pid = job.0;
    capset(&c, 1, pid);
    let mut count = grows(&out, 0);
    for (how, from, to) in [
        ("", 1, 2),
        ("--postcopy", 2, 1),
        ("--postcopy", 1, 2),
        ("", 2, 1),
    ] {
        let mut args = vec![format!("{from}:{pid}"), to.to_string()];
        if !how.is_empty() {
            args.insert(0, how.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = migrate(&c, 1, &args);
        assert!(o.status.success(), "{how} to {to}: {}", err(&o));
        count = grows(&out, count);
    }
    let text = std::fs::read_to_string(&out)?;
    let steps: Vec<u64> = text
        .lines()
        .map(|l| {
            assert!(l.ends_with(" ok"), "{prog} found itself wrong: {l}");
            l.split(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    assert!(
        steps.windows(2).all(|w| w[1] == w[0] + 1),
        "a step lost or repeated across the moves"
    );
    Ok(())
}
