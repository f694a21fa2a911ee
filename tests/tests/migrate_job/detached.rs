//! A detached job (`krg run --detach`) moves: its output stays in its
//! files on the node that started it.

use super::*;

/// Writes "line N pid=P" to stdout and "err N" to stderr every 50 ms
/// until `stop` (argv[1]) exists, then "done" and exits 5.
const WRITER: &str = r#"
import os, sys, time
n = 0
while not os.path.exists(sys.argv[1]):
    sys.stdout.write("line %d pid=%d\n" % (n, os.getpid()))
    sys.stdout.flush()
    sys.stderr.write("err %d\n" % n)
    sys.stderr.flush()
    n += 1
    time.sleep(0.05)
print("done", flush=True)
sys.exit(5)
"#;

/// `krg run --detach -n 1 -- python3 -c SCRIPT ARG` from a shell that
/// holds CAN_MIGRATE; the directory krg names for its output.
fn start_detached(c: &TestCluster, script: &str, arg: &str) -> String {
    let sh = format!(
        "{capset} -k $$ -d +CAN_MIGRATE && exec {krg} run --detach -n 1 -- python3 -u -c \"$0\" \"$1\"",
        capset = bin("krgcapset").display(),
        krg = bin("krg").display()
    );
    let o = Command::new("sh")
        .args(["-c", &sh, script, arg])
        .env("KRG_SOCKET", socket(c))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err.split("output in ")
        .nth(1)
        .and_then(|r| r.split("/ on node").next())
        .unwrap_or_else(|| panic!("no output directory in {err:?}"))
        .to_string()
}

/// Lines of `file` (empty if it is not there yet).
fn lines_of(file: &str) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A detached job moves too: its output goes on into the files on the
/// node that started it (relayed), without a line lost or doubled, and
/// its status lands there when it ends on the target.
#[test]
fn a_detached_job_moves_and_its_output_stays_in_its_files() -> Result<()> {
    let _g = serial();
    let c = formed(2)?;
    let stop = c.dir.path().join("stop-detached");
    let dir = start_detached(&c, WRITER, &stop.display().to_string());
    let (out, err) = (format!("{dir}/stdout"), format!("{dir}/stderr"));
    wait_for(LINE_WAIT, "its first lines", || {
        (lines_of(&out).len() >= 3).then_some(())
    })?;
    let pid = python_on(&c, 1).expect("the job on node 1 in krg ps");
    // Its directory is its user's: they may put a link to a file of
    // root's where its stdout was. What the relay writes must go on into
    // the job's own file, never through the name (as root, it would
    // write the victim).
    let victim = c.dir.path().join("victim");
    std::fs::write(&victim, "keep\n")?;
    std::fs::rename(&out, format!("{dir}/stdout.own"))?;
    std::os::unix::fs::symlink(&victim, &out)?;
    moved(&c, &[], pid, 1, 2);
    // on the target its stdout is a pipe to the relay, not the file by
    // its path (which this one machine would let it reopen)
    let host = host_pid_with_arg(&stop.display().to_string()).expect("the job's process");
    let fd1 = std::fs::read_link(format!("/proc/{host}/fd/1"))?;
    assert!(fd1.to_string_lossy().starts_with("pipe:"), "{fd1:?}");
    let own = format!("{dir}/stdout.own");
    let at_move = lines_of(&own).len();
    wait_for(LINE_WAIT, "lines written on node 2", || {
        (lines_of(&own).len() >= at_move + 10).then_some(())
    })?;
    std::fs::write(&stop, b"")?;
    let status = wait_for(LINE_WAIT, "its status", || {
        std::fs::read_to_string(format!("{dir}/status")).ok()
    })?;
    assert_eq!(status, "exit 5\n");
    assert_eq!(std::fs::read_to_string(&victim)?, "keep\n");
    let got = lines_of(&own);
    let (last, body) = got.split_last().unwrap();
    assert_eq!(last, "done", "{got:?}");
    for (n, l) in body.iter().enumerate() {
        assert_eq!(l, &format!("line {n} pid={pid}"), "{got:?}");
    }
    let errs = lines_of(&err);
    assert!(errs.len() >= body.len(), "{errs:?}");
    for (n, l) in errs.iter().enumerate() {
        assert_eq!(l, &format!("err {n}"), "{errs:?}");
    }
    assert_eq!(python_on(&c, 2), None, "krg ps: {:?}", ps(&c));
    Ok(())
}

/// A moved detached job outlives the node that started it: that node's
/// krgd killed, the job runs on where it is, and what it prints from then
/// on goes into files on that node, with its status.
#[test]
fn a_moved_detached_job_outlives_the_node_that_started_it() -> Result<()> {
    let _g = serial();
    let mut c = formed(2)?;
    let stop = c.dir.path().join("stop-outlives");
    let dir = start_detached(&c, WRITER, &stop.display().to_string());
    let out = format!("{dir}/stdout");
    wait_for(LINE_WAIT, "its first lines", || {
        (lines_of(&out).len() >= 3).then_some(())
    })?;
    let pid = python_on(&c, 1).expect("the job on node 1 in krg ps");
    moved(&c, &[], pid, 1, 2);
    wait_for(LINE_WAIT, "lines written on node 2", || {
        (lines_of(&out).len() >= 10).then_some(())
    })?;
    c.node(1)?.kill9();
    // its output goes on in a directory of node 2's
    let here = c.dir.path().join("data2/detached");
    let moved_out = wait_for(LINE_WAIT, "its output on node 2", || {
        std::fs::read_dir(&here).ok()?.flatten().find_map(|e| {
            let f = e.path().join("stdout");
            (lines_of(&f.display().to_string()).len() >= 5).then_some(e.path())
        })
    })?;
    std::fs::write(&stop, b"")?;
    let status = wait_for(LINE_WAIT, "its status on node 2", || {
        std::fs::read_to_string(moved_out.join("status")).ok()
    })?;
    assert_eq!(status, "exit 5\n");
    // each file holds consecutive lines; node 2's start after node 1's
    // (lines in flight when node 1 died may be lost) and end with "done"
    let number = |l: &str| -> u64 {
        l.strip_prefix("line ")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{l:?}"))
    };
    let first = lines_of(&out);
    for (n, l) in first.iter().enumerate() {
        assert_eq!(number(l), n as u64, "{first:?}");
    }
    let second = lines_of(&moved_out.join("stdout").display().to_string());
    let (last, body) = second.split_last().unwrap();
    assert_eq!(last, "done", "{second:?}");
    let start = number(&body[0]);
    assert!(start >= first.len() as u64, "{start} {}", first.len());
    for (k, l) in body.iter().enumerate() {
        assert_eq!(number(l), start + k as u64, "{second:?}");
        assert!(l.ends_with(&format!("pid={pid}")), "{l}");
    }
    Ok(())
}
