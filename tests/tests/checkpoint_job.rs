//! `checkpoint` and `restart` of a process in a PID namespace of its own:
//! a `krg run` job, or a process that moved with a stand-in (it runs in
//! such a namespace where it moved). It is saved with its PIDs there and
//! comes back through krgd as a detached job, getpid() unchanged. Needs
//! root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::Result;
use krg_tests::migrating::{
    capset, err, lines_of, migrate, moved_host_pid, next_lines, ps, socket, Job, PRINTER,
};
use krg_tests::{bin, serial, wait_for, without_stray_fds, TestCluster};

const SETTLE: Duration = Duration::from_secs(20);

/// `checkpoint`/`restart ARGS` through node `via`, checkpoints under `dir`.
fn tool(c: &TestCluster, via: u32, name: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(bin(name))
        .env("KRG_SOCKET", socket(c, via))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

/// `checkpoint TARGET` through node `via`, into the default directory
/// (where another node saves what it runs): its output and stdout.
fn checkpoint_through(c: &TestCluster, via: u32, target: &str) -> (Output, String) {
    let o = Command::new(bin("checkpoint"))
        .env("KRG_SOCKET", socket(c, via))
        .env_remove("KRG_CHKPT_DIR")
        .arg(target)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    (o, said)
}

/// The default checkpoint directory, /var/chkpt, where krgd saves a
/// process for another node: what a test saved there is removed when
/// this is dropped, and the directory too if the test made it.
struct DefaultDir(PathBuf, bool, std::cell::RefCell<Vec<PathBuf>>);

impl DefaultDir {
    fn new() -> Self {
        let root = PathBuf::from("/var/chkpt");
        let had = root.exists();
        DefaultDir(root, had, Default::default())
    }

    /// Application `app`'s directory there, removed with this.
    fn app(&self, app: i32) -> PathBuf {
        let dir = self.0.join(app.to_string());
        self.2.borrow_mut().push(dir.clone());
        dir
    }
}

impl Drop for DefaultDir {
    fn drop(&mut self) {
        for d in self.2.borrow().iter() {
            let _ = std::fs::remove_dir_all(d);
        }
        if !self.1 {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
}

/// SN 1 of application `app` under `chk` records `app` as PID `inner`
/// of its namespace (`checkpoint inspect`).
fn assert_maps(chk: &Path, app: i32, inner: i32) {
    let o = Command::new(bin("checkpoint"))
        .arg("inspect")
        .arg(chk.join(app.to_string()))
        .arg("1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("PIDs there: {app}={inner}")),
        "{text}"
    );
}

/// Rewrite SN 1's PID namespace map in application directory `app`, as
/// its owner could (a valid file: the header's CRC made anew).
fn edit_map(app: &Path, change: impl FnOnce(&mut Vec<(i32, i32)>)) {
    use checkpoint::image::{self, FileKind, GlobalImage};
    let path = app.join("global_v1.bin");
    let mut g = image::read_file::<GlobalImage>(&path, FileKind::Global)
        .unwrap()
        .meta;
    change(&mut g.pidns);
    std::fs::write(&path, image::encode(FileKind::Global, &g).unwrap()).unwrap();
}

/// The last "N PID" line of a printer's output file, as numbers.
fn last_count(file: &Path) -> Option<(u64, i32)> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut it = text.lines().last()?.split(' ');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The host PID of the job program `sh -c 'while :; do echo x …'` (in a
/// PID namespace of its own).
fn job_program() -> Result<i32> {
    wait_for(Duration::from_secs(5), "the job's program", || {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
            let inner = nspid.split_whitespace().count() == 2;
            (cmd.starts_with(b"sh\0-c\0while :; do echo x") && inner).then_some(pid)
        })
    })
}

/// A process moved to node 2 with its stand-in is checkpointed there (in
/// the job's namespace it runs in now; `checkpoint` of its stand-in on
/// node 1 has node 2 do it), killed, and restarted on node 2
/// from that image: it goes on counting where it was, with the PID it
/// had seen all along, as a detached job of node 2 (`krg ps` shows it;
/// its output goes to the files `restart` names).
#[test]
fn a_moved_process_is_checkpointed_where_it_runs_and_restarted_as_a_job() -> Result<()> {
    let _g = serial();
    let c = TestCluster::loopback(2)?.formed(2, SETTLE)?;
    let chk = c.dir.path().join("chkpt");
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", PRINTER])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = without_stray_fds(&mut cmd).spawn()?;
    let pid = child.id() as i32;
    let out = lines_of(child.stdout.take().unwrap());
    std::thread::spawn(move || child.wait());
    let _stand_in = Job(pid);
    capset(&c, 1, pid);
    let o = Command::new(bin("krgcapset"))
        .env("KRG_SOCKET", socket(&c, 1))
        .args(["-k", &pid.to_string(), "-d", "+CHECKPOINTABLE"])
        .output()?;
    assert!(o.status.success(), "{}", err(&o));
    next_lines(&out, 3);
    let o = migrate(&c, 1, &[&pid.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    let moved = moved_host_pid(pid);
    let moved_job = Job(moved);
    next_lines(&out, 5);
    // `checkpoint PID` of its stand-in on node 1 saves it on node 2, where
    // it runs, in that node's /var/chkpt (not a directory the caller names)
    let o = tool(&c, 1, "checkpoint", &chk, &[&pid.to_string()]);
    assert!(!o.status.success());
    assert!(err(&o).contains("--dir does not apply"), "{}", err(&o));
    let default = DefaultDir::new();
    let (o, said) = checkpoint_through(&c, 1, &pid.to_string());
    let saved_there = default.app(moved);
    assert!(o.status.success(), "{}", err(&o));
    assert_maps(&default.0, moved, pid);
    assert!(
        said.contains(&format!(
            "runs on node 2: saved there as SN 1 in {}",
            saved_there.display()
        )) && said.contains(&format!("restart 2:{moved} 1")),
        "{said}"
    );
    let o = tool(&c, 2, "checkpoint", &chk, &[&moved.to_string()]);
    assert!(o.status.success(), "checkpoint on node 2: {}", err(&o));
    // the last line out when it was saved (the checkpoint saw that count
    // or the next one)
    let mut last = next_lines(&out, 1).pop().unwrap();
    while let Ok(l) = out.try_recv() {
        last = l;
    }
    let saved_at: u64 = last.split(' ').next().unwrap().parse()?;
    // the image says where its PIDs lived
    assert_maps(&chk, moved, pid);
    drop(moved_job);
    // options that do not apply to a job are refused, nothing started
    let o = tool(
        &c,
        2,
        "restart",
        &chk,
        &["--new-pids", &moved.to_string(), "1"],
    );
    assert!(!o.status.success());
    assert!(err(&o).contains("--new-pids does not apply"), "{}", err(&o));
    // restarted from node 1, on node 2 where it was saved (NODE:PID)
    let o = tool(&c, 1, "restart", &chk, &[&format!("2:{moved}"), "1"]);
    assert!(o.status.success(), "restart on node 2: {}", err(&o));
    let line = err(&o);
    assert!(
        line.contains(&format!(
            "as a detached krg job on node 2 (PID {pid} in its namespace"
        )),
        "{line}"
    );
    let output = Path::new(line.trim().rsplit(": ").next().unwrap()).to_path_buf();
    let host: i32 = line
        .split(&format!("PID {pid} in its namespace, "))
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let _restarted = Job(host);
    // it counts on from where it was saved, with its own PID
    let (n, seen) = wait_for(Duration::from_secs(10), "the restarted count", || {
        last_count(&output.join("stdout")).filter(|&(n, _)| n > saved_at + 5)
    })?;
    assert_eq!(seen, pid, "getpid() after the restart");
    let first = std::fs::read_to_string(output.join("stdout"))?;
    let first: u64 = first
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()?;
    assert!(
        first <= saved_at + 2 && first > 3,
        "it went on from {saved_at}, not from the start: {first}..{n}"
    );
    // a job of node 2, as krg ps shows it
    assert!(ps(&c, 1).contains(&(2, pid as i64)), "{:?}", ps(&c, 1));
    // and CHECKPOINTABLE again: saved anew under its new PID on the node
    let o = tool(&c, 2, "checkpoint", &chk, &[&host.to_string()]);
    assert!(
        o.status.success(),
        "checkpoint of the restarted job: {}",
        err(&o)
    );
    assert_maps(&chk, host, pid);
    // an image whose map its owner edited (PID 1, the new init's) is
    // refused before anything starts
    edit_map(&chk.join(moved.to_string()), |map| map[0].1 = 1);
    let jobs = ps(&c, 1).len();
    let o = tool(&c, 1, "restart", &chk, &[&format!("2:{moved}"), "1"]);
    assert!(!o.status.success());
    assert!(err(&o).contains("PID namespace map"), "{}", err(&o));
    assert_eq!(ps(&c, 1).len(), jobs, "nothing started");
    Ok(())
}

/// `krg run -n NODE -- sh -c JOB` started through node 1 by a shell
/// that holds CHECKPOINTABLE (so the job does): the shell (it executed
/// `krg run`) and the job's output lines, two of them read already.
fn checkpointable_job(
    c: &TestCluster,
    node: u32,
    job: &str,
) -> Result<(std::process::Child, std::sync::mpsc::Receiver<String>)> {
    let go = c.dir.path().join("go");
    let sh = format!(
        "while [ ! -e {go} ]; do sleep 0.02; done; exec {krg} run -n {node} -- sh -c '{job}'",
        go = go.display(),
        krg = bin("krg").display()
    );
    let mut shell = Command::new("sh")
        .args(["-c", &sh])
        .env("KRG_SOCKET", socket(c, 1))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = lines_of(shell.stdout.take().unwrap());
    let o = Command::new(bin("krgcapset"))
        .env("KRG_SOCKET", socket(c, 1))
        .args(["-k", &shell.id().to_string(), "-d", "+CHECKPOINTABLE"])
        .output()?;
    assert!(o.status.success(), "{}", err(&o));
    std::fs::write(&go, b"")?;
    next_lines(&out, 2);
    Ok((shell, out))
}

/// A `krg run` job started from a CHECKPOINTABLE shell is CHECKPOINTABLE
/// too, as a child of that shell would be, on another node as well: its
/// program is checkpointed where it runs.
#[test]
fn a_krg_run_job_inherits_checkpointable_from_its_shell() -> Result<()> {
    let _g = serial();
    let c = TestCluster::loopback(2)?.formed(2, SETTLE)?;
    let (mut shell, _out) = checkpointable_job(&c, 2, "while :; do echo x; sleep 0.1; done")?;
    let program = job_program()?;
    let _program = Job(program);
    let o = tool(
        &c,
        2,
        "checkpoint",
        &c.dir.path().join("chkpt"),
        &[&program.to_string()],
    );
    assert!(
        o.status.success(),
        "checkpoint of the job on node 2: {}",
        err(&o)
    );
    // and from node 1, named as krg ps shows it (NODE:PID): node 2 saves it
    let inner = std::fs::read_to_string(format!("/proc/{program}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().last().map(str::to_string))
        .unwrap();
    let default = DefaultDir::new();
    let (o, said) = checkpoint_through(&c, 1, &format!("2:{inner}"));
    default.app(program);
    let _ = shell.kill();
    let _ = shell.wait();
    assert!(o.status.success(), "checkpoint 2:{inner}: {}", err(&o));
    assert!(
        said.contains(&format!(
            "process 2:{inner} runs on node 2: saved there as SN 1 in /var/chkpt/{program}"
        )),
        "{said}"
    );
    // a node:pid that names nothing is one clear line
    let (o, _) = checkpoint_through(&c, 1, "2:999999");
    assert!(!o.status.success());
    assert!(err(&o).contains("no process 2:999999"), "{}", err(&o));
    Ok(())
}

/// The init of a PID namespace is refused with the reason: restart gives
/// the namespace an init of its own.
#[test]
fn the_init_of_a_pid_namespace_is_refused() -> Result<()> {
    let _g = serial();
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "sleep", "60"])
        .spawn()?;
    let unshare = child.id() as i32;
    let init = wait_for(Duration::from_secs(5), "unshare's child", || {
        std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
    })?;
    let dir = tempfile::tempdir()?;
    let o = Command::new(bin("checkpoint"))
        .args(["--no-capability-check", "--dir"])
        .arg(dir.path())
        .arg(init.to_string())
        .output()?;
    let _ = child.kill();
    let _ = child.wait();
    assert!(!o.status.success());
    assert!(
        err(&o).contains("the init of a PID namespace"),
        "{}",
        err(&o)
    );
    Ok(())
}

/// A root job that mounted something in its own mount namespace holds
/// paths that would name other files where it is restored: its checkpoint
/// is refused, naming the mount, and the job runs on. (Without the check
/// a file it had opened on its tmpfs came back as the node's file of that
/// name, or as nothing.)
#[test]
fn a_job_with_a_mount_of_its_own_is_refused() -> Result<()> {
    let _g = serial();
    let c = TestCluster::loopback(1)?.formed(1, SETTLE)?;
    let over = c.dir.path().join("over");
    std::fs::create_dir(&over)?;
    let job = format!(
        "mount -t tmpfs krg-test {over} && exec 3>{over}/f && while :; do echo x; sleep 0.1; done",
        over = over.display()
    );
    let (shell, out) = checkpointable_job(&c, 1, &job)?;
    let _shell = Job(shell.id() as i32);
    let program = wait_for(Duration::from_secs(5), "the job's program", || {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            cmd.starts_with(b"sh\0-c\0mount -t tmpfs krg-test")
                .then_some(pid)
        })
    })?;
    let o = tool(
        &c,
        1,
        "checkpoint",
        &c.dir.path().join("chkpt"),
        &[&program.to_string()],
    );
    assert!(!o.status.success());
    let want = format!("{} (tmpfs) is mounted only there", over.display());
    assert!(
        err(&o).contains("mounts differ from the node's") && err(&o).contains(&want),
        "{}",
        err(&o)
    );
    // the node never saw the job's mount, and the job runs on
    assert!(std::fs::read_dir(&over)?.next().is_none());
    next_lines(&out, 2);
    Ok(())
}

/// Holds `argv[1]` MiB of random bytes and writes their MD5 into
/// `argv[2]` at its start and at each SIGUSR1.
const HASHER: &str = r#"
import hashlib, os, signal, sys, time
b = bytearray(os.urandom(1 << 20)) * int(sys.argv[1])
def h(*_):
    with open(sys.argv[2], "a") as f:
        f.write(hashlib.md5(b).hexdigest() + "\n")
signal.signal(signal.SIGUSR1, h)
h()
while True:
    time.sleep(1)
"#;

/// A process that has just moved is restored lazily: a page server
/// brings its memory in while it runs. `checkpoint` of it at once waits
/// for that; before, the pages not in yet were saved as never touched (23
/// of 256 MiB were saved) and the restarted process died of SIGSEGV.
#[test]
fn a_process_checkpointed_right_after_it_moved_is_saved_whole() -> Result<()> {
    let _g = serial();
    let c = TestCluster::loopback(2)?.formed(2, SETTLE)?;
    let hashes = c.dir.path().join("hashes");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", HASHER, "128", &hashes.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = without_stray_fds(&mut cmd).spawn()?;
    let pid = child.id() as i32;
    std::thread::spawn(move || child.wait());
    let _stand_in = Job(pid);
    let first = wait_for(Duration::from_secs(30), "its first hash", || {
        std::fs::read_to_string(&hashes)
            .ok()
            .filter(|h| h.ends_with('\n'))
    })?;
    capset(&c, 1, pid);
    let o = Command::new(bin("krgcapset"))
        .env("KRG_SOCKET", socket(&c, 1))
        .args(["-k", &pid.to_string(), "-d", "+CHECKPOINTABLE"])
        .output()?;
    assert!(o.status.success(), "{}", err(&o));
    let o = migrate(&c, 1, &[&pid.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    let moved = moved_host_pid(pid);
    let _moved = Job(moved);
    let default = DefaultDir::new();
    let o = Command::new(bin("checkpoint"))
        .env("KRG_SOCKET", socket(&c, 1))
        .env_remove("KRG_CHKPT_DIR")
        .args(["--kill", &pid.to_string()])
        .output()?;
    let _saved_there = default.app(moved);
    assert!(o.status.success(), "{}", err(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    let mib: f64 = said
        .split("task(s), ")
        .nth(1)
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(mib >= 128.0, "all of its memory: {said}");
    wait_for(Duration::from_secs(10), "the moved process to end", || {
        (!Path::new(&format!("/proc/{moved}")).exists()).then_some(())
    })?;
    let o = Command::new(bin("restart"))
        .env("KRG_SOCKET", socket(&c, 1))
        .args([&format!("2:{moved}"), "1"])
        .output()?;
    assert!(o.status.success(), "{}", err(&o));
    let again = moved_host_pid(pid);
    let _again = Job(again);
    // SAFETY: kill(2) of the process this test restarted.
    unsafe { libc::kill(again, libc::SIGUSR1) };
    let both = wait_for(
        Duration::from_secs(10),
        "its hash after the restart",
        || {
            std::fs::read_to_string(&hashes)
                .ok()
                .filter(|h| h.lines().count() >= 2)
        },
    )?;
    assert_eq!(
        both.lines().nth(1),
        first.lines().next(),
        "its memory after the restart"
    );
    Ok(())
}
