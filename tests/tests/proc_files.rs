//! The /krg tree driven with plain `cat`, `echo`, `cp` and `ls` (through
//! `sh -c`): node files, XCPU sessions (clone, ctl, argv, env, cwd, exec,
//! stdin, stdout, stderr, status, wait, pid) on this node and another,
//! their errnos for bad input, who may use a session, the global process
//! table with its signal files, and no session left behind. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::Result;
use krg_tests::{serial, wait_for, KillOnDrop, TestCluster};

/// Detaches a FUSE mount when dropped: a krgd killed by a failed test
/// leaves its tree mounted.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

fn sh(script: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn sh_as(uid: u32, script: &str) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--",
            "sh",
            "-c",
            script,
        ])
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A 2-node loopback cluster; node 1 serves the tree at the returned path.
fn cluster_with_tree() -> Result<(TestCluster, PathBuf, Unmount)> {
    let mut c = TestCluster::loopback(2)?;
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let mnt = c.dir.path().join("krg");
    std::fs::create_dir(&mnt)?;
    let guard = Unmount(mnt.clone());
    let key = c.key.clone();
    c.start_with(1, &key, &["--krg-mount", &mnt.display().to_string()])?;
    c.start(2)?;
    c.wait_present(1, &[1, 2], Duration::from_secs(15))?;
    c.krgadm_ok(1, &["cluster", "start"])?;
    c.wait_agreement(&[1, 2], Duration::from_secs(15))?;
    wait_for(Duration::from_secs(5), "the tree", || {
        mnt.join("nodes/2").is_dir().then_some(())
    })?;
    Ok((c, mnt, guard))
}

#[test]
fn xcpu_sessions_node_files_and_the_process_table_as_files() -> Result<()> {
    let _g = serial();
    let (mut c, m, _unmount) = cluster_with_tree()?;
    let m = m.display().to_string();

    // Node files, read with cat.
    let o = sh(&format!("cd {m}/nodes && for n in *; do echo $n $(cat $n/state) $(cat $n/address) $(cat $n/arch); done; cat */load | wc -l"));
    let (out, _) = text(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for (i, n) in [1, 2].iter().enumerate() {
        let want = format!("{n} online {} x86_64", c.nodes[n].listen);
        assert_eq!(lines[i], want);
    }
    assert_eq!(lines[2], "2");
    assert!(sh(&format!("cat {m}/nodes/1/mem_free"))
        .stdout
        .iter()
        .all(|b| b.is_ascii_digit() || *b == b'\n'));

    // An XCPU session on node 2, driven as XCPU scripts do: the clone
    // descriptor is the session's ctl, kept open until the end.
    let script = format!(
        r#"x={m}/nodes/2/xcpu
exec 3<>$x/clone
n=$(cat <&3)
d=$x/$n
echo "sh -c 'echo out; read line; echo got \$line; echo err >&2; pwd; echo \$K; exit 3'" > $d/argv
printf 'K=v1\nPATH=/usr/bin:/bin\n' > $d/env
echo /tmp > $d/cwd
cat $d/status
echo exec >&3
cat $d/status
test "$(cat $d/pid)" -ge 4096 && echo pid-ok
echo hello > $d/stdin
echo close > $d/ctl
cat $d/stdout
cat $d/stderr
echo "wait=$(cat $d/wait)"
cat $d/status
exec 3>&-
"#
    );
    let o = sh(&script);
    assert_eq!(
        text(&o).0,
        "new\nrunning\npid-ok\nout\ngot hello\n/tmp\nv1\nerr\nwait=3\nexit 3\n",
        "{:?}",
        text(&o)
    );

    // An executable image written into exec runs, though the node has no
    // such file; n=$(cat clone) and writes by path also work.
    let o = sh(&format!(
        r#"x={m}/nodes/2/xcpu; n=$(cat $x/clone); d=$x/$n
cp /bin/echo $d/exec && echo 'myecho from-image' > $d/argv && echo exec > $d/ctl && cat $d/stdout && cat $d/wait"#
    ));
    assert_eq!(text(&o).0, "from-image\n0\n", "{:?}", text(&o));

    // Bad input: an errno each, nothing started, the reason in status.
    let o = sh(&format!(
        r#"x={m}/nodes/1/xcpu; exec 3<>$x/clone; n=$(cat <&3); d=$x/$n
echo garbage >&3 2>/dev/null || echo "ctl garbage: $?"
echo exec >&3 2>/dev/null || echo "exec of nothing refused"
echo 'no-such-cmd-krg a' > $d/argv
echo exec >&3 2>/dev/null || echo "not found refused"
cat $d/status
echo relative > $d/cwd 2>/dev/null || echo "relative cwd refused"
echo "'open" > $d/argv 2>/dev/null || echo "bad quote refused"
head -c 3000000 /dev/zero | tr '\0' a > $d/argv 2>/dev/null || echo "huge argv refused"
echo 'sleep 30' > $d/argv; echo exec >&3; echo exec >&3 2>/dev/null || echo "second exec refused"
echo 'true' > $d/argv 2>/dev/null || echo "argv after exec refused"
echo 'kill NOPE' >&3 2>/dev/null || echo "bad signal refused"
echo 'kill TERM' >&3; cat $d/wait
exec 3>&-"#
    ));
    assert_eq!(
        text(&o).0,
        "ctl garbage: 1\nexec of nothing refused\nnot found refused\nnew (last exec failed: node 1: no-such-cmd-krg: command not found)\nrelative cwd refused\nbad quote refused\nhuge argv refused\nsecond exec refused\nargv after exec refused\nbad signal refused\n143\n",
        "{:?}",
        text(&o)
    );
    let o = sh(&format!(
        r#"x={m}/nodes/1/xcpu; exec 3<>$x/clone; n=$(cat <&3); d=$x/$n
printf 'abc' > $d/exec; (echo again > $d/exec) 2>&1 | grep -c 'not permitted'; exec 3>&-"#
    ));
    assert_eq!(text(&o).0, "1\n", "{:?}", text(&o));

    // A session is its opener's: the job runs as them, others may not look.
    let o = sh_as(
        65534,
        &format!(
            r#"x={m}/nodes/2/xcpu; exec 3<>$x/clone; n=$(cat <&3); echo 'id -u' > $x/$n/argv; echo exec >&3; cat $x/$n/stdout; stat -c '%U %a' $x/$n; exec 3>&-"#
        ),
    );
    assert!(
        text(&o).0.starts_with("65534\nnobody 700\n"),
        "{:?}",
        text(&o)
    );
    let o = sh_as(
        65534,
        &format!("cat {m}/nodes/1/xcpu/clone >/dev/null && echo clone-ok"),
    );
    assert_eq!(text(&o).0, "clone-ok\n");
    let mut held = KillOnDrop(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                "sh",
                "-c",
            ])
            .arg(format!(
                "exec 3<>{m}/nodes/1/xcpu/clone; cat <&3; exec sleep 30"
            ))
            .current_dir("/")
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut n = String::new();
    let mut buf = [0u8; 16];
    let got = std::io::Read::read(held.0.stdout.as_mut().unwrap(), &mut buf)?;
    n.push_str(std::str::from_utf8(&buf[..got])?);
    let o = sh_as(
        1001,
        &format!(
            "(echo 'id' > {m}/nodes/1/xcpu/{n}/argv) 2>&1; cat {m}/nodes/1/xcpu/{n}/status 2>&1"
        ),
    );
    assert_eq!(
        text(&o).0.matches("Permission denied").count(),
        2,
        "{:?}",
        text(&o)
    );
    held.0.kill()?;
    let _ = held.0.wait();

    // The global process table as files.
    let mut job = KillOnDrop(
        c.krg(1)?
            .args(["run", "-n", "2", "--", "sleep", "500"])
            .stdin(Stdio::null())
            .spawn()?,
    );
    let name = wait_for(Duration::from_secs(5), "the job in proc/", || {
        let o = sh(&format!("cd {m}/proc && grep -l 'sleep 500' */cmdline"));
        text(&o)
            .0
            .lines()
            .next()
            .map(|l| l.trim_end_matches("/cmdline").to_string())
    })?;
    assert!(name.starts_with("2:"), "{name}");
    let o = sh(&format!("cat {m}/proc/{name}/status"));
    assert!(
        text(&o).0.contains("State:\tS\nNode:\t2\n"),
        "{:?}",
        text(&o)
    );
    let o = sh_as(65534, &format!("(echo TERM > {m}/proc/{name}/signal) 2>&1"));
    assert!(text(&o).0.contains("Permission denied"), "{:?}", text(&o));
    let o = sh(&format!("(echo NOPE > {m}/proc/{name}/signal) 2>&1; echo TERM > {m}/proc/{name}/signal && echo sent"));
    assert_eq!(text(&o).0.lines().last(), Some("sent"), "{:?}", text(&o));
    assert_eq!(job.0.wait()?.code(), Some(143));
    let o = sh(&format!("cat {m}/proc/{name}/cmdline 2>&1"));
    assert!(!o.status.success());

    // Nothing left behind: every session vanished, every job ended.
    // (Sessions that never ran linger 10 s after their last close.)
    wait_for(Duration::from_secs(20), "every session to vanish", || {
        let o = sh(&format!("ls {m}/nodes/1/xcpu {m}/nodes/2/xcpu"));
        (text(&o)
            .0
            .lines()
            .filter(|l| l.parse::<u64>().is_ok())
            .count()
            == 0)
            .then_some(())
    })?;
    assert_eq!(text(&sh(&format!("ls {m}/proc"))).0, "");
    // krgd unmounts the tree when it stops.
    c.node(1)?.stop();
    assert!(!std::fs::read_to_string("/proc/mounts")?.contains(&format!(" {m} ")));
    Ok(())
}

#[test]
fn a_second_krgd_on_the_host_runs_without_the_tree() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::loopback(2)?;
    let mnt = c.dir.path().join("krg");
    std::fs::create_dir(&mnt)?;
    let _unmount = Unmount(mnt.clone());
    let key = c.key.clone();
    let flag = mnt.display().to_string();
    c.start_with(1, &key, &["--krg-mount", &flag])?;
    wait_for(Duration::from_secs(5), "the tree", || {
        mnt.join("nodes").is_dir().then_some(())
    })?;
    c.start_with(2, &key, &["--krg-mount", &flag])?;
    wait_for(Duration::from_secs(5), "node 2's note", || {
        c.nodes[&2]
            .log_text()
            .contains("another krgd of this host serves the /krg tree")
            .then_some(())
    })?;
    assert!(c.node(2)?.is_running());
    let o = c.krg(2)?.args(["run", "--", "true"]).output()?;
    assert!(o.status.success(), "{:?}", text(&o));
    // A mount point that is not empty is refused with the reason.
    let full = c.dir.path().join("full");
    std::fs::create_dir(&full)?;
    std::fs::write(full.join("keep"), "x")?;
    c.node(2)?.kill9();
    // (krgd binds its socket before it mounts: the harness may see it start.)
    let _ = c.start_with(2, &key, &["--krg-mount", &full.display().to_string()]);
    wait_for(
        Duration::from_secs(10),
        "node 2 to refuse the mount point",
        || (!c.node(2).ok()?.is_running()).then_some(()),
    )?;
    let log = c.nodes[&2].log_text();
    assert!(
        log.contains("refusing to mount the /krg tree") && log.contains("is not empty"),
        "{log}"
    );
    assert!(Path::new(&full.join("keep")).exists());
    c.node(1)?.stop();
    Ok(())
}

/// `krg run -n NODE -- sleep 600` through that node, running.
fn sleeper(c: &TestCluster, node: u32) -> Result<KillOnDrop> {
    Ok(KillOnDrop(
        c.krg(node)?
            .args(["run", "-n", &node.to_string(), "--", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()?,
    ))
}

/// Every job has a mount namespace of its own, a copy of krgd's: where
/// the host's mounts are private (as here) a running job holds a copy of
/// the /krg tree, and an unmount ends only when no copy is left. krgd
/// stops its own jobs before it unmounts, so SIGTERM still stops it at
/// once; a job of another krgd of this host holding a copy makes it wait
/// a bounded time, say so, and exit. (Before, SIGTERM left krgd waiting
/// for the copies until it was killed.)
#[test]
fn krgd_stops_promptly_while_jobs_hold_copies_of_its_tree() -> Result<()> {
    let _g = serial();
    let (mut c, m, _unmount) = cluster_with_tree()?;
    let jobs_on = |c: &TestCluster, node: u32| {
        let o = c
            .krg(2)
            .unwrap()
            .args(["ps", "-n", &node.to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .matches("sleep 600")
            .count()
    };
    // A job of node 1 only: node 1 stops it, then unmounts at once.
    let _own = sleeper(&c, 1)?;
    wait_for(Duration::from_secs(5), "node 1's job", || {
        (jobs_on(&c, 1) == 1).then_some(())
    })?;
    let t = std::time::Instant::now();
    c.node(1)?.stop();
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(!std::fs::read_to_string("/proc/mounts")?.contains(&format!(" {} ", m.display())));
    assert!(!c.nodes[&1].log_text().contains("still mounted"));

    // A job of node 2 started while node 1 serves the tree holds a copy
    // node 1 cannot end: node 1 waits a little, says why, and exits.
    let key = c.key.clone();
    c.start_with(1, &key, &["--krg-mount", &m.display().to_string()])?;
    wait_for(Duration::from_secs(10), "the tree again", || {
        m.join("nodes").is_dir().then_some(())
    })?;
    let _other = sleeper(&c, 2)?;
    wait_for(Duration::from_secs(5), "node 2's job", || {
        (jobs_on(&c, 2) == 1).then_some(())
    })?;
    let t = std::time::Instant::now();
    c.node(1)?.stop();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(c.nodes[&1]
        .log_text()
        .contains("still mounted in another mount namespace"));
    Ok(())
}
