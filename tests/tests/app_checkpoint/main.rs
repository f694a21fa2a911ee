//! An application whose processes run on several nodes, checkpointed and
//! restarted as one (LinuxSSI's application checkpoint): a shell on node
//! 1 whose child moved to node 2 behind its stand-in. `checkpoint` of the
//! shell has node 2 save the child where it runs, then saves the tree
//! with the stand-in in it; `restart` brings the child back on node 2
//! and the shell, its other child and the stand-in on node 1, the
//! child's output flowing through the stand-in into the same pipe again.
//! Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::Result;
use krg_tests::migrating::{capset, err, migrate, moved_host_pid, ppid, ps, socket, Job, PRINTER};
use krg_tests::{bin, serial, wait_for, without_stray_fds, TestCluster};

mod in_flight;
mod lost_node;

const SETTLE: Duration = Duration::from_secs(20);

fn tool(c: &TestCluster, name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .env("KRG_SOCKET", socket(c, 1))
        .args(args)
        .output()
        .unwrap()
}

/// `checkpoint --dir DIR --kill SH` through node 1, which must succeed.
fn checkpoint_kill(c: &TestCluster, dir: &str, sh: i32) -> Output {
    let o = tool(c, "checkpoint", &["--dir", dir, "--kill", &sh.to_string()]);
    assert!(o.status.success(), "{}", err(&o));
    o
}

fn checkpointable(c: &TestCluster, pid: i32) {
    let o = tool(
        c,
        "krgcapset",
        &["-k", &pid.to_string(), "-d", "+CHECKPOINTABLE"],
    );
    assert!(o.status.success(), "{}", err(&o));
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn cmdline(pid: i32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

/// The last "N PID" line the printer wrote into `file`.
fn last_count(file: &Path) -> Option<(u64, i32)> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut it = text.lines().last()?.split(' ');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Removes what node 2 saved in the default directory, /var/chkpt.
struct Saved(PathBuf);

impl Drop for Saved {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `sh -c SCRIPT ARGS…` through node 1 (stdio /dev/null), running
/// `FIRST … | cat`: the shell, its first child and `cat`, all
/// CHECKPOINTABLE, the first CAN_MIGRATE too.
fn pipeline(
    c: &TestCluster,
    script: &str,
    args: &[&str],
    first: &str,
) -> Result<(std::process::Child, i32, i32, i32)> {
    pipeline_to(c, script, args, first, "cat")
}

/// [`pipeline`] whose second process's command line starts with `last`.
fn pipeline_to(
    c: &TestCluster,
    script: &str,
    args: &[&str],
    first: &str,
    last: &str,
) -> Result<(std::process::Child, i32, i32, i32)> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let shell = without_stray_fds(&mut cmd).spawn()?;
    let sh = shell.id() as i32;
    let found = wait_for(Duration::from_secs(5), "the pipeline", || {
        let kids = children(sh);
        let one = *kids.iter().find(|&&p| cmdline(p).starts_with(first))?;
        let cat = *kids.iter().find(|&&p| cmdline(p).starts_with(last))?;
        Some((one, cat))
    });
    let Ok((one, cat)) = found else {
        // SAFETY: kill(2) of the shell this test started.
        unsafe { libc::kill(sh, libc::SIGKILL) };
        anyhow::bail!("the pipeline did not start");
    };
    for p in [sh, one, cat] {
        checkpointable(c, p);
    }
    capset(c, 1, one);
    Ok((shell, sh, one, cat))
}

/// `python3 PRINTER | cat > out` started through node 1 (a shell and its
/// two children, all CHECKPOINTABLE), python moved to node `to` and
/// counting from there; ended, with what `to` saves of it, when dropped.
struct Printing {
    shell: std::process::Child,
    sh: i32,
    py: i32,
    cat: i32,
    /// Python's PID on node `to`.
    moved: i32,
    /// Where cat writes the counts.
    out: PathBuf,
    _guards: ([Job; 3], Saved),
}

fn printing_on(c: &TestCluster, to: u32) -> Result<Printing> {
    let out = c.dir.path().join("out");
    let script = "/usr/bin/python3 -u -c \"$0\" 2>/dev/null | cat > \"$1\"";
    let out_arg = out.display().to_string();
    let (shell, sh, py, cat) = pipeline(c, script, &[PRINTER, &out_arg], "/usr/bin/python3")?;
    let jobs = [Job(sh), Job(py), Job(cat)];
    wait_for(Duration::from_secs(5), "the count", || {
        last_count(&out).filter(|n| n.0 > 3)
    })?;
    let o = migrate(c, 1, &[&py.to_string(), &to.to_string()]);
    assert!(o.status.success(), "{}", err(&o));
    let moved = moved_host_pid(py);
    let saved = Saved(PathBuf::from("/var/chkpt").join(moved.to_string()));
    let at = last_count(&out).unwrap().0;
    wait_for(
        Duration::from_secs(10),
        "the count from the other node",
        || last_count(&out).filter(|n| n.0 > at + 3),
    )?;
    Ok(Printing {
        shell,
        sh,
        py,
        cat,
        moved,
        out,
        _guards: (jobs, saved),
    })
}

#[test]
fn an_application_over_two_nodes_is_checkpointed_and_restarted_as_one() -> Result<()> {
    let _g = serial();
    let c = TestCluster::loopback(2)?.formed(2, SETTLE)?;
    let chk = c.dir.path().join("chkpt");
    let Printing {
        mut shell,
        sh,
        py,
        cat,
        moved,
        out,
        _guards,
    } = printing_on(&c, 2)?;

    // checkpoint of the shell: node 2 saves the child first, then the tree
    let dir = chk.display().to_string();
    let o = checkpoint_kill(&c, &dir, sh);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains(&format!(
            "process {py} runs on node 2: saved there as SN 1 in /var/chkpt/{moved}"
        )),
        "{said}"
    );
    assert!(said.contains(&format!("saved process {sh}")), "{said}");
    let shown = tool(
        &c,
        "checkpoint",
        &[
            "inspect",
            &chk.join(sh.to_string()).display().to_string(),
            "1",
        ],
    );
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains(&format!(
            "task {py} parent {sh}: the stand-in of a process on node 2 (PID {moved} there"
        )),
        "{text}"
    );
    // --kill ended all of it, the moved child on node 2 too
    shell.wait()?;
    wait_for(Duration::from_secs(10), "the application to end", || {
        let gone = |p: i32| {
            !Path::new(&format!("/proc/{p}")).exists() || {
                let s = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z'))
            }
        };
        [sh, cat, py, moved].into_iter().all(gone).then_some(())
    })?;
    let saved_at = last_count(&out).unwrap().0;

    // options that cannot keep the stand-ins' PIDs are refused before
    // anything starts, here or there
    let o = tool(
        &c,
        "restart",
        &["--dir", &dir, "--new-pids", &sh.to_string(), "1"],
    );
    assert!(!o.status.success());
    assert!(
        err(&o).contains("--new-pids and --pidns-of do not apply"),
        "{}",
        err(&o)
    );
    assert!(!ps(&c, 1).iter().any(|&(_, p)| p == py as i64));
    // restart on node 1: the child runs again on node 2, behind its stand-in
    let o = tool(&c, "restart", &["--dir", &dir, &sh.to_string(), "1"]);
    assert!(o.status.success(), "{}", err(&o));
    let said = err(&o);
    assert!(
        said.contains(&format!("behind their stand-ins: {py} on node 2")),
        "{said}"
    );
    let (n, seen) = wait_for(
        Duration::from_secs(15),
        "the count after the restart",
        || last_count(&out).filter(|&(n, _)| n > saved_at + 5),
    )?;
    assert_eq!(seen, py, "getpid() after the restart");
    let text = std::fs::read_to_string(&out)?;
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect();
    let after = counts.iter().rposition(|&k| k <= saved_at).unwrap();
    assert_eq!(
        counts[after + 1],
        saved_at + 1,
        "it went on from where it was saved ({saved_at}): {:?}",
        &counts[after..(after + 3).min(counts.len())]
    );
    // held stopped from its save to the tree's, python printed nothing
    // that cat wrote before the tree froze: no count came out twice
    let twice: Vec<&[u64]> = counts.windows(2).filter(|w| w[1] <= w[0]).collect();
    assert!(twice.is_empty(), "counts out of order or twice: {twice:?}");
    assert!(n > saved_at);
    let again = moved_host_pid(py);
    let _again = Job(again);
    assert_eq!(ppid(py), sh, "the stand-in is the shell's child again");
    assert!(ps(&c, 1).contains(&(2, py as i64)), "{:?}", ps(&c, 1));
    // the stand-in killed, the process on node 2 ends too
    // SAFETY: kill(2) of the stand-in this test restarted.
    unsafe { libc::kill(py, libc::SIGKILL) };
    wait_for(
        Duration::from_secs(10),
        "the process on node 2 to end",
        || (!Path::new(&format!("/proc/{again}")).exists()).then_some(()),
    )?;
    for p in [sh, cat] {
        // SAFETY: kill(2) of processes this test restarted.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let app = App { sh, py, cat };
    all_on_one_node(&c, &chk, &app, &out, saved_at)?;
    another_users_part_is_refused(&c, &chk, &app, moved)
}

/// The application's PIDs: the shell, its child that moved, the other.
struct App {
    sh: i32,
    py: i32,
    cat: i32,
}

/// Wait until the processes of `app` (restarted before) are gone.
fn gone(app: &App) -> Result<()> {
    wait_for(Duration::from_secs(10), "the PIDs to be free", || {
        [app.sh, app.py, app.cat]
            .iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
            .then_some(())
    })
}

/// `restart --node 1`: the whole application on node 1, its moved part's
/// output still going through its stand-in into the pipe — run here from
/// its copy in the application's directory, and, without that copy, run
/// again on node 2, where it was saved, then moved here.
fn all_on_one_node(
    c: &TestCluster,
    chk: &Path,
    app: &App,
    out: &Path,
    saved_at: u64,
) -> Result<()> {
    let parts = chk.join(app.sh.to_string()).join("parts");
    let away = chk.join("parts.away");
    for (copy, said) in [
        (
            true,
            "here, from their copies in the application's directory",
        ),
        (false, "then coming here from their nodes"),
    ] {
        if !copy {
            std::fs::rename(&parts, &away)?;
        }
        gone(app)?;
        std::fs::write(out, "")?;
        let dir = chk.display().to_string();
        let o = tool(
            c,
            "restart",
            &["--dir", &dir, "--node", "1", &app.sh.to_string(), "1"],
        );
        assert!(o.status.success(), "{}", err(&o));
        assert!(err(&o).contains(said), "{}", err(&o));
        let _sh = Job(app.sh);
        let _others: Vec<Job> = children(app.sh).into_iter().map(Job).collect();
        wait_for(Duration::from_secs(20), "the part on node 1", || {
            ps(c, 1).contains(&(1, app.py as i64)).then_some(())
        })?;
        let (n, seen) = wait_for(Duration::from_secs(10), "the count on node 1", || {
            last_count(out).filter(|&(n, _)| n > saved_at + 10)
        })?;
        assert_eq!(seen, app.py, "getpid() on node 1");
        assert!(n > saved_at);
        let here = moved_host_pid(app.py);
        // SAFETY: kill(2) of the processes this test restarted.
        unsafe {
            libc::kill(app.py, libc::SIGKILL);
            libc::kill(app.sh, libc::SIGKILL);
        }
        wait_for(Duration::from_secs(10), "the process to end", || {
            (!Path::new(&format!("/proc/{here}")).exists()).then_some(())
        })?;
    }
    std::fs::rename(&away, &parts)?;
    Ok(())
}

/// The image is its user's to edit: a stand-in entry pointed at another
/// user's checkpoint on node 2 does not get root's restart to run that
/// checkpoint for this user. Node 2 refuses it (not the application
/// owner's), and the stand-in ends.
fn another_users_part_is_refused(c: &TestCluster, chk: &Path, app: &App, moved: i32) -> Result<()> {
    let (sh, py) = (app.sh, app.py);
    use checkpoint::image::{self, FileKind, GlobalImage, NodeImage};
    // another user's checkpoint on node 2 (of process 999999 there): the
    // part's, given to nobody
    let theirs = PathBuf::from("/var/chkpt/999999");
    let _theirs = Saved(theirs.clone());
    let o = Command::new("cp")
        .arg("-a")
        .arg(format!("/var/chkpt/{moved}"))
        .arg(&theirs)
        .output()?;
    assert!(o.status.success(), "{}", err(&o));
    let global = theirs.join("global_v1.bin");
    let mut g = image::read_file::<GlobalImage>(&global, FileKind::Global)?.meta;
    for e in &mut g.pidns {
        if e.0 == moved {
            e.0 = 999_999;
        }
    }
    std::fs::write(&global, image::encode(FileKind::Global, &g)?)?;
    let o = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&theirs)
        .output()?;
    assert!(o.status.success(), "{}", err(&o));
    let node_file = chk.join(sh.to_string()).join("node_1_v1.bin");
    let mut n = image::read_file::<NodeImage>(&node_file, FileKind::Node)?.meta;
    n.stand_ins[0].part.host_pid = 999_999;
    std::fs::write(&node_file, image::encode(FileKind::Node, &n)?)?;
    gone(app)?;
    let dir = chk.display().to_string();
    let o = tool(c, "restart", &["--dir", &dir, &sh.to_string(), "1"]);
    assert!(o.status.success(), "{}", err(&o));
    let _sh = Job(sh);
    let _others: Vec<Job> = children(sh).into_iter().map(Job).collect();
    // the stand-in is told node 2 refused, and ends; nothing runs there
    wait_for(
        Duration::from_secs(10),
        "the refused stand-in to end",
        || {
            let s = std::fs::read_to_string(format!("/proc/{py}/stat")).unwrap_or_default();
            let over = s.is_empty() || s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z'));
            over.then_some(())
        },
    )?;
    assert!(!ps(c, 1).contains(&(2, py as i64)), "{:?}", ps(c, 1));
    let logs = c.log_tails(200);
    assert!(logs.contains("not to the application's owner"), "{logs}");
    Ok(())
}

/// `checkpoint --kill`, then `restart` at once, of an application whose
/// moved part is silent (`sleep 1000 | cat`): the killed stand-in's
/// session ends, and the part it stood for with it, so the restart leaves
/// exactly one copy on node 2. Before, krgd's watch of the killed
/// stand-in took it for alive while it was a zombie, then took the
/// restored stand-in (the same PID) for it, and kept the old session —
/// and the old copy — alive for good (nothing flowed on it to find it
/// broken).
/// `sh -c SCRIPT` (a `sleep 1000 | cat` pipeline) through node 1, its
/// sleep moved to node 2: ended, with what node 2 saves of it, when
/// dropped.
struct SleepMoved {
    shell: std::process::Child,
    sh: i32,
    sleep: i32,
    moved: i32,
    /// Where node 2 saves the moved sleep.
    saved_there: PathBuf,
    _guards: (Vec<Job>, Saved),
}

fn sleep_moved(c: &TestCluster, script: &str) -> Result<SleepMoved> {
    let (shell, sh, sleep, cat) = pipeline(c, script, &[], "sleep")?;
    let mut jobs = vec![Job(sh), Job(sleep), Job(cat)];
    let o = migrate(c, 1, &[&sleep.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    let moved = moved_host_pid(sleep);
    jobs.push(Job(moved));
    let saved_there = PathBuf::from("/var/chkpt").join(moved.to_string());
    Ok(SleepMoved {
        shell,
        sh,
        sleep,
        moved,
        saved_there: saved_there.clone(),
        _guards: (jobs, Saved(saved_there)),
    })
}

#[test]
fn a_silent_part_ends_with_its_stand_in_even_when_its_pid_comes_back() -> Result<()> {
    let _g = serial();
    let c = TestCluster::loopback(2)?.formed(2, SETTLE)?;
    let chk = c.dir.path().join("chkpt");
    let mut app = sleep_moved(&c, "sleep 1000 | cat")?;
    let (sh, sleep, moved) = (app.sh, app.sleep, app.moved);
    let dir = chk.display().to_string();
    checkpoint_kill(&c, &dir, sh);
    app.shell.wait()?;
    // (restart waits for the PIDs to be free)
    let o = tool(&c, "restart", &["--dir", &dir, &sh.to_string(), "1"]);
    assert!(o.status.success(), "{}", err(&o));
    let _others: Vec<Job> = children(sh).into_iter().map(Job).collect();
    let again = moved_host_pid(sleep);
    let _again = Job(again);
    assert_ne!(again, moved, "the restarted copy");
    assert!(
        !Path::new(&format!("/proc/{moved}")).exists(),
        "the copy the killed stand-in stood for still runs"
    );
    assert_eq!(ppid(sleep), sh);
    // `checkpoint rm` of the SN removes what node 2 saved of it too
    let o = tool(
        &c,
        "checkpoint",
        &["rm", "--dir", &dir, &sh.to_string(), "1"],
    );
    assert!(o.status.success(), "{}", err(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains(&format!("removed SN 1 of {moved} on node 2")),
        "{said}"
    );
    assert!(!chk.join(sh.to_string()).join("global_v1.bin").exists());
    assert!(!Path::new(&format!("/var/chkpt/{moved}/global_v1.bin")).exists());
    // a checkpoint that lets the application run on: its part on node 2
    // runs on too, once the tree is saved
    let _saved_again = Saved(PathBuf::from("/var/chkpt").join(again.to_string()));
    let o = tool(&c, "checkpoint", &["--dir", &dir, &sh.to_string()]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(!err(&o).contains("warning"), "{}", err(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains(&format!("process {sleep} on node 2 runs on, stopped ")),
        "{said}"
    );
    assert_eq!(state(again), Some('S'), "the part on node 2 is stopped");
    Ok(())
}

/// A checkpoint that fails once a part was saved (the tree holds what
/// this version refuses: a shell with a /proc file open) leaves nothing
/// behind on the part's node either.
#[test]
fn a_failed_checkpoint_leaves_no_part_behind() -> Result<()> {
    let _g = serial();
    let c = TestCluster::loopback(2)?.formed(2, SETTLE)?;
    let chk = c.dir.path().join("chkpt");
    let app = sleep_moved(&c, "exec 7</proc/self/stat; sleep 1000 7<&- | cat 7<&-")?;
    let (sh, sleep, moved) = (app.sh, app.sleep, app.moved);
    let saved_there = &app.saved_there;
    let dir = chk.display().to_string();
    let o = tool(&c, "checkpoint", &["--dir", &dir, &sh.to_string()]);
    assert!(!o.status.success());
    assert!(err(&o).contains(&format!("process {sh}")), "{}", err(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains(&format!(
            "process {sleep} runs on node 2: saved there as SN 1"
        )),
        "{said}"
    );
    assert!(
        !saved_there.join("global_v1.bin").exists(),
        "the part's SN is left on node 2"
    );
    // and the application runs on, untouched: the part, held stopped
    // since its save, was let go (not left for the node's hold limit)
    assert!(Path::new(&format!("/proc/{moved}")).exists());
    assert_eq!(state(moved), Some('S'), "the part on node 2 is stopped");
    Ok(())
}

/// The state letter of `pid` in /proc (`T`: stopped).
fn state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(") ")?.1.chars().next()
}
