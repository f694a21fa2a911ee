//! What a part wrote before its save but was still on its way to its
//! stand-in when the part was held (in its pipe on node 2, in krgd's
//! queues, on the wire) is in the checkpoint: after `restart`, the
//! output has no gap where the application was saved. Likewise for the
//! input the stand-in had read but the part had not: kept with the
//! part's SN, given back when it runs on and when it is restarted.
//!
//! The part writes numbered lines as fast as its pipe takes them, and the
//! tree's reader copies them slowly into a file, so the whole path is
//! full when `checkpoint` holds the part: megabytes on their way. Without
//! the output mark, the restarted part went on after lines the restarted
//! reader never got.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use krg_tests::migrating::{capset, err, migrate, moved_host_pid, ps, Job};
use krg_tests::{serial, wait_for, TestCluster};

use super::{checkpoint_kill, checkpointable, children, cmdline, pipeline_to, tool, Saved, SETTLE};

/// Numbered lines, as fast as stdout takes them.
const FLOOD: &str = r#"
import sys
out = sys.stdout.buffer
n = 0
while True:
    lines = []
    for _ in range(500):
        n += 1
        lines.append(b"%d\n" % n)
    out.write(b"".join(lines))
    out.flush()
"#;

/// Copies stdin into the file argv[1], 8 KiB every 2 ms (at most 4 MB/s).
const SLOW_COPY: &str = r#"
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
while True:
    b = os.read(0, 8192)
    if not b:
        break
    while b:
        b = b[os.write(fd, b):]
    time.sleep(0.002)
"#;

fn size(file: &Path) -> u64 {
    std::fs::metadata(file).map_or(0, |m| m.len())
}

/// Whether `pid` is gone (or a zombie).
fn ended(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ")
        .is_none_or(|(_, rest)| rest.starts_with('Z'))
}

/// The first place where the complete lines of `text` are not 1, 2, 3…:
/// the line number and the lines around it.
fn first_gap(text: &str) -> Option<(usize, Vec<&str>)> {
    let complete = text.rsplit_once('\n').map_or("", |(whole, _)| whole);
    let lines: Vec<&str> = complete.lines().collect();
    let at = lines
        .iter()
        .enumerate()
        .position(|(i, l)| l.parse::<usize>().ok() != Some(i + 1))?;
    let around = lines[at.saturating_sub(2)..(at + 3).min(lines.len())].to_vec();
    Some((at + 1, around))
}

#[test]
fn a_parts_output_on_its_way_when_it_is_held_is_in_the_checkpoint() -> Result<()> {
    let _g = serial();
    let c = TestCluster::loopback(2)?.formed(2, SETTLE)?;
    let chk = c.dir.path().join("chkpt");
    let out = c.dir.path().join("out");
    let script = "/usr/bin/python3 -c \"$0\" | /usr/bin/python3 -c \"$1\" \"$2\"";
    let out_arg = out.display().to_string();
    let flood = format!("/usr/bin/python3 -c {FLOOD}");
    let copy = format!("/usr/bin/python3 -c {SLOW_COPY}");
    let args = [FLOOD, SLOW_COPY, out_arg.as_str()];
    let (mut shell, sh, py, reader) = pipeline_to(&c, script, &args, &flood, &copy)?;
    let _jobs = [Job(sh), Job(py), Job(reader)];
    wait_for(Duration::from_secs(5), "the first lines", || {
        (size(&out) > 10_000).then_some(())
    })?;
    let o = migrate(&c, 1, &[&py.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    let moved = moved_host_pid(py);
    let _saved_there = Saved(PathBuf::from("/var/chkpt").join(moved.to_string()));
    let at = size(&out);
    wait_for(Duration::from_secs(10), "lines from node 2", || {
        (size(&out) > at + 1_000_000).then_some(())
    })?;

    let dir = chk.display().to_string();
    let o = checkpoint_kill(&c, &dir, sh);
    assert!(!err(&o).contains("warning"), "{}", err(&o));
    shell.wait()?;
    ended_all(&[sh, py, reader, moved])?;
    restart_counts_on(&c, &dir, (sh, py), &[], "1", &out)?;
    Ok(())
}

/// Wait until every process of `pids` is gone (or a zombie).
fn ended_all(pids: &[i32]) -> Result<()> {
    wait_for(Duration::from_secs(10), "the application to end", || {
        pids.iter().all(|&p| ended(p)).then_some(())
    })
}

/// `restart` of SN `sn` of the shell `sh` whose process `part` (as the
/// shell sees it) ran on node 2 (`args` before the PID: `--node 1`…): the
/// file `out` counts on from where it was saved, with no gap and no line
/// twice. What was restarted is killed on return, but the shell; the
/// size of `out` when the restart began.
fn restart_counts_on(
    c: &TestCluster,
    dir: &str,
    (sh, part): (i32, i32),
    args: &[&str],
    sn: &str,
    out: &Path,
) -> Result<u64> {
    let saved_size = size(out);
    let sh_arg = sh.to_string();
    let all: Vec<&str> = ["--dir", dir]
        .iter()
        .chain(args)
        .chain(&[sh_arg.as_str(), sn])
        .copied()
        .collect();
    let o = tool(c, "restart", &all);
    assert!(o.status.success(), "{}", err(&o));
    let _restarted: Vec<Job> = children(sh).into_iter().map(Job).collect();
    let _again = Job(moved_host_pid(part));
    if args.contains(&"--node") {
        wait_for(Duration::from_secs(20), "the part on node 1", || {
            ps(c, 1).contains(&(1, part as i64)).then_some(())
        })?;
    }
    let from = size(out).max(saved_size);
    wait_for(Duration::from_secs(15), "lines after the restart", || {
        (size(out) > from + 200_000).then_some(())
    })?;
    let text = std::fs::read_to_string(out)?;
    let gap = first_gap(&text);
    assert!(
        gap.is_none(),
        "the count has a gap or a line twice (SN {sn} saved at {saved_size} bytes): {gap:?}"
    );
    Ok(saved_size)
}

#[test]
fn a_gap_in_the_count_is_found() {
    assert_eq!(first_gap("1\n2\n3\n4"), None, "a partial last line is left");
    let (at, around) = first_gap("1\n2\n3\n5\n6\n").unwrap();
    assert_eq!((at, around), (4, vec!["2", "3", "5", "6"]));
    assert!(first_gap("1\n2\n2\n3\n").is_some(), "a line twice");
}

/// `sh -c SCRIPT ARGS…` through node 1 running `python3 -c FLOOD | cat |
/// python3 -c SLOW_COPY OUT`: the shell and its three children (the
/// flood, cat and the copier), all CHECKPOINTABLE, cat CAN_MIGRATE.
fn flood_through_cat(c: &TestCluster, out: &str) -> Result<(std::process::Child, [i32; 4])> {
    let script = "/usr/bin/python3 -c \"$0\" | cat | /usr/bin/python3 -c \"$1\" \"$2\"";
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .args([FLOOD, SLOW_COPY, out])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let shell = krg_tests::without_stray_fds(&mut cmd).spawn()?;
    let sh = shell.id() as i32;
    let _guard = Job(sh);
    let (flood, cat, copy) = (
        format!("/usr/bin/python3 -c {FLOOD}"),
        "cat".to_string(),
        format!("/usr/bin/python3 -c {SLOW_COPY}"),
    );
    let found = wait_for(Duration::from_secs(5), "the pipeline", || {
        let kids = children(sh);
        let find = |what: &str| kids.iter().copied().find(|&p| cmdline(p).starts_with(what));
        Some([find(&flood)?, find(&cat)?, find(&copy)?])
    })?;
    let pids = [sh, found[0], found[1], found[2]];
    for p in pids {
        checkpointable(c, p);
    }
    capset(c, 1, found[1]);
    std::mem::forget(_guard);
    Ok((shell, pids))
}

#[test]
fn a_parts_unread_input_is_kept_with_it_and_given_back() -> Result<()> {
    let _g = serial();
    let c = TestCluster::loopback(2)?.formed(2, SETTLE)?;
    let chk = c.dir.path().join("chkpt");
    let out = c.dir.path().join("out");
    let (mut shell, [sh, flood, cat, copy]) = flood_through_cat(&c, &out.display().to_string())?;
    let _jobs = [Job(sh), Job(flood), Job(cat), Job(copy)];
    wait_for(Duration::from_secs(5), "the first lines", || {
        (size(&out) > 10_000).then_some(())
    })?;
    let o = migrate(&c, 1, &[&cat.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    let moved = moved_host_pid(cat);
    let _saved_there = Saved(PathBuf::from("/var/chkpt").join(moved.to_string()));
    let at = size(&out);
    wait_for(Duration::from_secs(10), "lines through node 2", || {
        (size(&out) > at + 1_000_000).then_some(())
    })?;
    let kept = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout).contains(&format!("process {cat} on node 2: "))
            && String::from_utf8_lossy(&o.stdout)
                .contains("bytes of input it had not read yet are kept with its SN")
    };

    // SN 1, the application runs on: cat gets back what it had not read
    let dir = chk.display().to_string();
    let o = tool(&c, "checkpoint", &["--dir", &dir, &sh.to_string()]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(!err(&o).contains("warning"), "{}", err(&o));
    assert!(kept(&o), "{}", String::from_utf8_lossy(&o.stdout));
    let at = size(&out);
    wait_for(
        Duration::from_secs(10),
        "lines after the first checkpoint",
        || (size(&out) > at + 1_000_000).then_some(()),
    )?;

    // SN 2 ends it; its restart starts cat's input with what it had not read
    let o = checkpoint_kill(&c, &dir, sh);
    assert!(kept(&o), "{}", String::from_utf8_lossy(&o.stdout));
    shell.wait()?;
    ended_all(&[sh, flood, cat, copy, moved])?;
    let saved_size = restart_counts_on(&c, &dir, (sh, cat), &[], "2", &out)?;

    // `restart --node 1` of SN 2: cat runs again here, from its copy in
    // the application's directory, with the unread input kept there too
    // SAFETY: kill(2) of the shell this test restarted.
    unsafe { libc::kill(sh, libc::SIGKILL) };
    ended_all(&[sh, flood, cat, copy])?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&out)?
        .set_len(saved_size)?;
    restart_counts_on(&c, &dir, (sh, cat), &["--node", "1"], "2", &out)?;
    Ok(())
}
