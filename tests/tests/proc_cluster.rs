//! `krg run`, `krg ps` and `krg kill` across a 4-node cluster in network
//! namespaces (real addresses: a job shows where it runs by its address),
//! and the faults: the target's krgd killed mid-run, the client killed,
//! the origin's krgd killed (detached jobs survive it). Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use krg_tests::{serial, wait_for, KillOnDrop, TestCluster};

const SETTLE: Duration = Duration::from_secs(20);
const ADDR: &str = "ip -o -4 addr show dev eth0 | awk '{print $4}'";

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn krg_out(c: &TestCluster, via: u32, args: &[&str]) -> Output {
    c.krg(via)
        .unwrap()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn formed(n: u32) -> Result<TestCluster> {
    TestCluster::namespaces(n)?.formed(n, SETTLE)
}

/// Jobs running `sleep <marker>` (krg clients, whose arguments hold the
/// same words, are not counted).
fn running(marker: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .starts_with(&format!("sleep {marker}"))
                })
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn runs_anywhere_sees_and_signals_everything() -> Result<()> {
    let _g = serial();
    let c = formed(4)?;

    // One node, named: the job runs in node 3's network namespace.
    let o = krg_out(&c, 1, &["run", "-n", "3", "--", "sh", "-c", ADDR]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(text(&o).0, "10.77.0.3/24\n");

    // Every node; lines prefixed with the node; -b gathers identical output.
    let o = krg_out(&c, 2, &["run", "-n", "1-4", "--", "sh", "-c", ADDR]);
    let mut lines: Vec<String> = text(&o).0.lines().map(str::to_string).collect();
    lines.sort();
    assert_eq!(
        lines,
        (1..=4)
            .map(|n| format!("node{n}: 10.77.0.{n}/24"))
            .collect::<Vec<_>>()
    );
    let o = krg_out(&c, 3, &["run", "-a", "-b", "--", "echo", "same"]);
    assert_eq!(
        text(&o).0,
        "---------------\nnode[1-4] (4)\n---------------\nsame\n",
        "{:?}",
        text(&o)
    );
    let o = krg_out(
        &c,
        1,
        &["run", "-n", "2:4", "--per-node", "3", "--", "true"],
    );
    assert!(o.status.success(), "{:?}", text(&o));

    // Exit status of a remote job; the largest of several.
    assert_eq!(
        krg_out(&c, 1, &["run", "-n", "4", "--", "sh", "-c", "exit 5"])
            .status
            .code(),
        Some(5)
    );
    let o = krg_out(
        &c,
        1,
        &[
            "run",
            "-n",
            "1-3",
            "--",
            "sh",
            "-c",
            "exit $(ip -o -4 addr show dev eth0 | cut -d. -f4 | cut -d/ -f1)",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{:?}", text(&o));
    assert!(text(&o).1.contains("krg: node2: exit 2"), "{:?}", text(&o));

    // stdin through the origin to a remote job.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut child = c
        .krg(1)?
        .args(["run", "-n", "2", "--", "md5sum"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let d2 = data.clone();
    std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &d2));
    let mut sum = String::new();
    child.stdout.take().unwrap().read_to_string(&mut sum)?;
    assert!(child.wait()?.success());
    let local = Command::new("sh")
        .arg("-c")
        .arg("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut li = local.stdin.unwrap();
    std::io::Write::write_all(&mut li, &data)?;
    drop(li);
    let mut want = String::new();
    local.stdout.unwrap().read_to_string(&mut want)?;
    assert_eq!(sum, want);

    // A signal to the client reaches the remote job.
    let mut job = KillOnDrop(
        c.krg(1)?
            .args([
                "run",
                "-n",
                "4",
                "--",
                "sh",
                "-c",
                "trap 'echo INT; exit 7' INT; echo up; while :; do sleep 0.05; done",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut up = [0u8; 3];
    job.0.stdout.as_mut().unwrap().read_exact(&mut up)?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(job.0.id() as i32, libc::SIGINT) };
    assert_eq!(job.0.wait()?.code(), Some(7));

    // The caller's credentials on another node.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(krg_tests::bin("krg"))
        .args(["run", "-n", "3", "--", "id", "-u"])
        .env("KRG_SOCKET", &c.nodes[&1].socket)
        .current_dir("/");
    let o = cmd.output()?;
    assert_eq!(text(&o).0, "65534\n", "{:?}", text(&o));

    // The global table, from any node; kill from any node.
    let _a = KillOnDrop(
        c.krg(1)?
            .args(["run", "-n", "2", "--", "sleep", "401"])
            .stdin(Stdio::null())
            .spawn()?,
    );
    let mut b = KillOnDrop(
        c.krg(1)?
            .args(["run", "-n", "4", "--", "sleep", "402"])
            .stdin(Stdio::null())
            .spawn()?,
    );
    let start = Instant::now();
    let rows = wait_for(Duration::from_secs(10), "both jobs in krg ps", || {
        let o = krg_out(&c, 3, &["ps", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        let rows: Vec<(u64, i64, String)> = v["processes"]
            .as_array()?
            .iter()
            .map(|p| {
                (
                    p["node"].as_u64().unwrap(),
                    p["pid"].as_i64().unwrap(),
                    p["command"].as_str().unwrap().to_string(),
                )
            })
            .filter(|r| r.2.starts_with("sleep 40"))
            .collect();
        (rows.len() == 2).then_some(rows)
    })?;
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(
        (rows[0].0, rows[0].2.as_str(), rows[1].0, rows[1].2.as_str()),
        (2, "sleep 401", 4, "sleep 402")
    );
    let o = krg_out(&c, 3, &["ps", "-n", "4"]);
    assert!(
        text(&o).0.contains("sleep 402") && !text(&o).0.contains("sleep 401"),
        "{:?}",
        text(&o)
    );
    let o = krg_out(&c, 2, &["kill", &format!("4:{}", rows[1].1)]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(b.0.wait()?.code(), Some(143));

    // Placement without -n: the policy, else the least loaded node.
    let o = krg_out(&c, 1, &["run", "--", "sh", "-c", ADDR]);
    assert!(
        o.status.success() && text(&o).0.starts_with("10.77.0."),
        "{:?}",
        text(&o)
    );
    Ok(())
}

#[test]
fn faults_kill_what_nobody_watches_and_say_so() -> Result<()> {
    let _g = serial();
    let mut c = formed(5)?;
    // Node 1 is the origin. A node cut off must not lead (the leader's
    // detector marks failures); the other roles may.
    let leader = c.leader(1).unwrap_or(1);
    let mut others: Vec<u32> = (2..=5).filter(|n| *n != leader).collect();
    others.extend((2..=5).filter(|n| *n == leader));
    let [cut, killed, stopped, kept] = [others[0], others[1], others[2], others[3]];
    let run = |c: &TestCluster, node: u32, marker: &str| -> Result<KillOnDrop> {
        Ok(KillOnDrop(
            c.krg(1)?
                .args(["run", "-n", &node.to_string(), "--", "sleep", marker])
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?,
        ))
    };
    let stderr_of = |job: &mut KillOnDrop| {
        let mut err = String::new();
        job.0
            .stderr
            .as_mut()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        err
    };

    // The target is cut off the network: the client reports it within the
    // failure detection time; the cut-off node kills the job once its
    // connection times out.
    let mut job = run(&c, cut, "410.5")?;
    wait_for(Duration::from_secs(5), "the job", || {
        (running("410.5") == 1).then_some(())
    })?;
    let t = Instant::now();
    c.lab.as_ref().unwrap().isolate(cut)?;
    let status = job.0.wait()?;
    let err = stderr_of(&mut job);
    assert_eq!(status.code(), Some(255), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "reported after {:?}",
        t.elapsed()
    );
    assert_eq!(
        err,
        format!("krg: node {cut} failed (silent for longer than the failure timeout)\n")
    );
    wait_for(
        Duration::from_secs(15),
        "the cut-off job to be killed",
        || (running("410.5") == 0).then_some(()),
    )?;

    // The target's krgd dies mid-run: one line, exit 255; the job died
    // with its krgd.
    let mut job = run(&c, killed, "411.5")?;
    wait_for(Duration::from_secs(5), "the job", || {
        (running("411.5") == 1).then_some(())
    })?;
    let t = Instant::now();
    c.node(killed)?.kill9();
    let status = job.0.wait()?;
    let err = stderr_of(&mut job);
    assert_eq!(status.code(), Some(255), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "reported after {:?}",
        t.elapsed()
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with(&format!("krg: node {killed}: ")), "{err}");
    wait_for(
        Duration::from_secs(5),
        "the job to die with its krgd",
        || (running("411.5") == 0).then_some(()),
    )?;

    // The client is killed: its remote job is killed too.
    let mut client = run(&c, stopped, "412.5")?;
    wait_for(Duration::from_secs(5), "the job", || {
        (running("412.5") == 1).then_some(())
    })?;
    client.0.kill()?;
    client.0.wait()?;
    wait_for(
        Duration::from_secs(5),
        "the job to follow its client",
        || (running("412.5") == 0).then_some(()),
    )?;

    // The target's krgd stops (SIGTERM): the user is told, the job gets
    // SIGTERM, krg exits with its status.
    let mut job = run(&c, stopped, "414.5")?;
    wait_for(Duration::from_secs(5), "the job", || {
        (running("414.5") == 1).then_some(())
    })?;
    c.node(stopped)?.stop();
    let status = job.0.wait()?;
    let err = stderr_of(&mut job);
    assert_eq!(status.code(), Some(143), "{err}");
    assert_eq!(
        err,
        format!("krg: node {stopped}: krgd is stopping; the job gets SIGTERM\n")
    );

    // The origin's krgd dies: its remote job goes; a detached one stays,
    // its output in a file on its node.
    let mut plain = run(&c, kept, "413.5")?;
    let o = krg_out(
        &c,
        1,
        &[
            "run",
            "--detach",
            "-n",
            &kept.to_string(),
            "--",
            "sh",
            "-c",
            "echo started; sleep 3; echo done; exit 4",
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let line = text(&o).1;
    let dir = line
        .split("output in ")
        .nth(1)
        .and_then(|r| r.split("/ on node").next())
        .unwrap()
        .to_string();
    wait_for(Duration::from_secs(5), "the plain job", || {
        (running("413.5") == 1).then_some(())
    })?;
    c.node(1)?.kill9();
    plain.0.wait()?;
    wait_for(Duration::from_secs(5), "the origin's job to go", || {
        (running("413.5") == 0).then_some(())
    })?;
    let detached = krg_out(&c, kept, &["ps"]);
    assert!(
        text(&detached).0.contains("echo started"),
        "{:?}",
        text(&detached)
    );
    wait_for(Duration::from_secs(10), "the detached job's status", || {
        std::fs::read_to_string(format!("{dir}/status")).ok()
    })?;
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/stdout"))?,
        "started\ndone\n"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/status"))?,
        "exit 4\n"
    );
    Ok(())
}

/// Give node `id`'s krgd (and so its jobs) a private tmpfs at `dir`: the
/// nodes share this host's disk, and push/get must be seen per node.
fn private_scratch(c: &TestCluster, id: u32, dir: &std::path::Path) -> Result<()> {
    let pid = c.nodes[&id].pid().unwrap();
    let st = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-m",
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "mode=1777",
            "krg-scratch",
        ])
        .arg(dir)
        .status()?;
    anyhow::ensure!(st.success(), "mounting a scratch tmpfs for node {id}");
    Ok(())
}

#[test]
fn push_get_and_shipped_executables() -> Result<()> {
    let _g = serial();
    let c = formed(3)?;
    let scratch = c.dir.path().join("scratch");
    std::fs::create_dir(&scratch)?;
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o1777))?;
    for id in 1..=3 {
        private_scratch(&c, id, &scratch)?;
    }
    let s = scratch.display().to_string();

    // push: one file to every node, mode kept; the copy is the user's.
    let src = c.dir.path().join("input.dat");
    let data: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data)?;
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640))?;
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(krg_tests::bin("krg"))
        .args(["push", "-a"])
        .arg(&src)
        .arg(format!("{s}/"))
        .env("KRG_SOCKET", &c.nodes[&1].socket)
        .current_dir("/");
    // nobody cannot read the 0640 root file: refused here, before anything.
    let o = cmd.output()?;
    assert!(
        !o.status.success() && text(&o).1.contains("Permission denied"),
        "{:?}",
        text(&o)
    );
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644))?;
    let o = cmd.output()?;
    assert!(o.status.success(), "{:?}", text(&o));
    let o = krg_out(
        &c,
        2,
        &[
            "run",
            "-a",
            "-b",
            "--",
            "sh",
            "-c",
            &format!("md5sum < {s}/input.dat; stat -c '%a %U' {s}/input.dat"),
        ],
    );
    let want = Command::new("md5sum").arg(&src).output()?;
    let sum = String::from_utf8_lossy(&want.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        text(&o).0,
        format!("---------------\nnode[1-3] (3)\n---------------\n{sum}  -\n644 nobody\n"),
        "{:?}",
        text(&o)
    );
    // A destination the user may not write is refused on each node.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(krg_tests::bin("krg"))
        .args(["push", "-n", "2:3"])
        .arg(&src)
        .arg("/etc/krg-test-forbidden")
        .env("KRG_SOCKET", &c.nodes[&1].socket)
        .current_dir("/");
    let o = cmd.output()?;
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(
        text(&o)
            .1
            .contains("node 2: /etc/krg-test-forbidden: Permission denied"),
        "{:?}",
        text(&o)
    );
    assert!(!std::path::Path::new("/etc/krg-test-forbidden").exists());
    // krgd writes the file the job opened: a full file system is still
    // the job's error, with its exit status.
    let pid2 = c.nodes[&2].pid().unwrap().to_string();
    let small = format!("{s}/small");
    let st = Command::new("nsenter")
        .args(["-t", &pid2, "-m", "sh", "-c"])
        .arg(format!(
            "mkdir {small} && mount -t tmpfs -o size=1m,mode=1777 krg-small {small}"
        ))
        .status()?;
    assert!(st.success());
    let mut full = Command::new("setpriv");
    full.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(krg_tests::bin("krg"))
        .args(["push", "-n", "2"])
        .arg(&src)
        .arg(format!("{small}/"))
        .env("KRG_SOCKET", &c.nodes[&1].socket)
        .current_dir("/");
    let o = full.output()?;
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(
        text(&o).1.contains(&format!(
            "node2: krg push: {small}/: No space left on device"
        )),
        "{:?}",
        text(&o)
    );
    // A destination that is not a regular file is copied by the job.
    let o = c
        .krg(1)?
        .args(["push", "-n", "3"])
        .arg(&src)
        .arg("/dev/null")
        .output()?;
    assert!(o.status.success(), "{:?}", text(&o));

    // get: one local file per node, each node's own content.
    let o = krg_out(
        &c,
        1,
        &[
            "run",
            "-a",
            "--",
            "sh",
            "-c",
            &format!("ip -o -4 addr show dev eth0 | awk '{{print $4}}' > {s}/app.log"),
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let out_dir = tempfile::tempdir()?;
    let o = c
        .krg(3)?
        .args(["get", "-n", "1-3"])
        .arg(format!("{s}/app.log"))
        .arg(out_dir.path())
        .output()?;
    assert!(o.status.success(), "{:?}", text(&o));
    for n in 1..=3 {
        assert_eq!(
            std::fs::read_to_string(out_dir.path().join(format!("app.log.node{n}")))?,
            format!("10.77.0.{n}/24\n")
        );
    }
    let o = c
        .krg(3)?
        .args(["get", "-n", "2"])
        .arg(format!("{s}/nothing-here"))
        .arg(out_dir.path())
        .output()?;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o)
            .1
            .contains("nothing-here: No such file or directory"),
        "{:?}",
        text(&o)
    );
    assert!(!out_dir.path().join("nothing-here.node2").exists());

    // --push: an executable and a script only this client can see run on
    // node 2 (the client sits in a mount namespace of its own).
    let private = tempfile::tempdir()?;
    let p = private.path().display().to_string();
    let script = format!(
        "mount -t tmpfs krg-private {p} && cp /bin/echo {p}/myecho && printf '#!/bin/sh\\necho script $1; ip -o -4 addr show dev eth0 | cut -d\" \" -f7\\n' > {p}/myscript && chmod +x {p}/myscript && {k} run --push -n 2 -- {p}/myecho shipped && {k} run --push -n 2 -- {p}/myscript arg",
        k = krg_tests::bin("krg").display()
    );
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("KRG_SOCKET", &c.nodes[&1].socket)
        .current_dir("/")
        .output()?;
    assert_eq!(
        text(&o).0,
        "shipped\nscript arg\n10.77.0.2/24\n",
        "{:?}",
        text(&o)
    );
    // Without --push the node has no such file.
    let o = krg_out(&c, 1, &["run", "-n", "2", "--", &format!("{p}/myecho")]);
    assert_eq!(o.status.code(), Some(127), "{:?}", text(&o));
    Ok(())
}
