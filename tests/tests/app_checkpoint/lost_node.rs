//! A part outlives its node: `checkpoint` copies what the part's node
//! saved into the application's directory (`parts/<NODE>/<PID>/`), and
//! `restart`, with that node down and its store gone, runs the part on
//! the node restart runs on, from its copy, behind its stand-in — its
//! output going on from where it was saved.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use krg_tests::migrating::{err, moved_host_pid, ps, Job};
use krg_tests::{serial, wait_for, TestCluster};

use super::{checkpoint_kill, children, last_count, printing_on, tool, Printing, SETTLE};

#[test]
fn a_part_whose_node_is_gone_runs_again_from_its_copy() -> Result<()> {
    let _g = serial();
    // three nodes: with node 3 down, nodes 1 and 2 are still a majority
    let mut c = TestCluster::loopback(3)?.formed(3, SETTLE)?;
    let chk = c.dir.path().join("chkpt");
    let Printing {
        mut shell,
        sh,
        py,
        cat,
        moved,
        out,
        _guards,
    } = printing_on(&c, 3)?;
    let store_there = PathBuf::from("/var/chkpt").join(moved.to_string());

    let dir = chk.display().to_string();
    let o = checkpoint_kill(&c, &dir, sh);
    let said = String::from_utf8_lossy(&o.stdout);
    let copy = chk
        .join(sh.to_string())
        .join("parts/3")
        .join(moved.to_string());
    assert!(
        said.contains(&format!(
            "process {py} on node 3: SN 1 copied into {} (",
            copy.display()
        )),
        "{said}"
    );
    assert!(copy.join("global_v1.bin").exists());
    let app_dir = chk.join(sh.to_string()).display().to_string();
    let shown = tool(&c, "checkpoint", &["inspect", &app_dir]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains(&format!(
            "part saved by node 3 (PID {moved} there), copied in parts/3/{moved}: SN(s) 1"
        )),
        "{text}"
    );
    let shown = tool(&c, "checkpoint", &["inspect", &app_dir, "1"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains(&format!(
            "saved as SN 1 in its /var/chkpt/{moved}, copied in parts/3/{moved})"
        )),
        "{text}"
    );
    shell.wait()?;
    wait_for(Duration::from_secs(10), "the application to end", || {
        [sh, cat, py, moved].iter().all(|p| over(*p)).then_some(())
    })?;
    let saved_at = last_count(&out).unwrap().0;

    // node 3 loses its store: the part runs here, from its copy
    std::fs::remove_dir_all(&store_there)?;
    let app = App {
        sh,
        py,
        out: &out,
        saved_at,
    };
    restart_from_copy(&c, &dir, &app)?;
    // node 3 goes
    c.node(3)?.kill9();
    wait_for(
        Duration::from_secs(10),
        "node 1 to see node 3 failed",
        || (c.node_states(1).ok()?.get(&3)? == "failed").then_some(()),
    )?;
    restart_from_copy(&c, &dir, &app)?;

    // checkpoint rm: the copy's SN goes; node 3's cannot (it is down)
    let o = tool(
        &c,
        "checkpoint",
        &["rm", "--dir", &dir, &sh.to_string(), "1"],
    );
    assert!(!o.status.success(), "node 3 is down: {}", err(&o));
    assert!(
        err(&o).contains("not what other nodes saved of it"),
        "{}",
        err(&o)
    );
    assert!(
        !copy.join("global_v1.bin").exists(),
        "the copy's SN is removed"
    );
    Ok(())
}

/// The application restarted, and how far it had counted when saved.
struct App<'a> {
    sh: i32,
    py: i32,
    out: &'a Path,
    saved_at: u64,
}

/// `restart` of SN 1 through node 1 runs the part moved to node 3 on
/// node 1 from its copy; it counts on from where it was saved, then ends
/// (killed with the shell).
fn restart_from_copy(c: &TestCluster, dir: &str, app: &App) -> Result<()> {
    let (sh, py) = (app.sh, app.py);
    wait_for(Duration::from_secs(10), "the PIDs to be free", || {
        [sh, py].iter().all(|p| over(*p)).then_some(())
    })?;
    std::fs::write(app.out, "")?;
    let o = tool(c, "restart", &["--dir", dir, &sh.to_string(), "1"]);
    assert!(o.status.success(), "{}", err(&o));
    let said = err(&o);
    assert!(
        said.contains(&format!(
            "here, from their copies in the application's directory, behind their stand-ins: {py} on node 3"
        )),
        "{said}"
    );
    let _sh = Job(sh);
    let _others: Vec<Job> = children(sh).into_iter().map(Job).collect();
    let (_, seen) = wait_for(Duration::from_secs(15), "the count from the copy", || {
        last_count(app.out).filter(|&(n, _)| n > app.saved_at + 5)
    })?;
    assert_eq!(seen, py, "getpid() of the part run from its copy");
    // (cat writes where it was when saved: the file emptied before the
    // restart starts with that many zeros)
    let text = std::fs::read_to_string(app.out)?;
    let first: u64 = text
        .trim_start_matches('\0')
        .lines()
        .next()
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap();
    assert_eq!(
        first,
        app.saved_at + 1,
        "it went on from where it was saved"
    );
    assert!(ps(c, 1).contains(&(1, py as i64)), "{:?}", ps(c, 1));
    let here = moved_host_pid(py);
    let _here = Job(here);
    // SAFETY: kill(2) of processes this test restarted.
    unsafe {
        libc::kill(py, libc::SIGKILL);
        libc::kill(sh, libc::SIGKILL);
    }
    wait_for(Duration::from_secs(10), "the part to end", || {
        over(here).then_some(())
    })?;
    Ok(())
}

/// Gone, or a zombie.
fn over(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty()
        || stat
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'))
}
