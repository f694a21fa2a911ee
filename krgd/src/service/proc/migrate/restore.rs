//! Running `restart` on an image directory: the target's side of a
//! migration, and the origin's when it takes a process back. `restart`
//! (installed next to krgd) forks the restored root itself and exits; the
//! root then comes to krgd, a child subreaper, which reaps it. On a
//! target, restart holds the restored process until the cluster placed
//! it there (a [`Decision`], through `restart --gate-fd`; see
//! [`fence`](super::fence)).

use std::future::Future;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use checkpoint::restore::gate::{GO, READY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Whether a restored process may run: `Ok` lets it go; `Err` says why
/// not (restart then kills it and fails with that reason).
pub type Decision = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// How long a restore may take (it waits up to `PID_WAIT` for the PIDs).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long restart waits for a PID still held (a zombie PID 1 has not
/// reaped yet: up to ~2 s here).
const PID_WAIT: &str = "10";

/// The `restart` krgd runs: next to krgd's own executable (a build tree,
/// `/usr/local/sbin`), else the package's `/usr/bin/restart`.
pub fn restart_binary() -> PathBuf {
    installed("restart")
}

/// A tool of krg: next to krgd, else where the package puts it
/// (`/usr/bin`).
pub fn installed(name: &str) -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)));
    let packaged = PathBuf::from("/usr/bin").join(name);
    beside
        .into_iter()
        .chain([packaged.clone()])
        .find(|p| p.is_file())
        .unwrap_or(packaged)
}

/// Why `bin` may not be run for someone else (root's or a user's
/// process), if it may not: it must be there, owned and writable by root
/// only. `what`: how to get it.
pub fn not_root_only(bin: &Path, what: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(bin) else {
        return Some(format!("{} is missing ({what})", bin.display()));
    };
    (m.uid() != 0 || m.mode() & 0o022 != 0).then(|| {
        format!(
            "{} must be owned by root and writable by root only",
            bin.display()
        )
    })
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((r, w))
}

/// Why this node cannot restore, if it cannot.
pub fn unavailable() -> Option<String> {
    // krgd runs it as root on images users own: only root may change it
    not_root_only(
        &restart_binary(),
        "install restart next to krgd, or the krg package",
    )
}

/// Where a migrated `krg run` job is restored: into the PID namespace of
/// `init` (a new one krgd started), the image's PIDs given their numbers
/// there by `map`, its stdio that led to its session on `stdio`.
pub struct IntoJob {
    /// The namespace's init (krgd's namespace).
    pub init: i32,
    /// (PID in the image, PID in the job's namespace).
    pub map: Vec<(i32, i32)>,
    /// The job's ends of its new stdin, stdout and stderr (pipes, or a
    /// terminal's slave).
    pub stdio: [OwnedFd; 3],
    /// On a terminal: the foreground process group to give it (a PID of
    /// the image; see `restart --ctty-fg`).
    pub ctty_fg: Option<i32>,
}

/// A process's stdout and stderr for restart (its fds 1 and 2 that led
/// outside the tree get them; `None`: /dev/null, as its stdin).
pub type Outputs = [Option<OwnedFd>; 2];

/// Restore SN `sn` of application `app` under `root`; its fds 1 and 2
/// that led outside the tree get `out`, its fd 0 /dev/null. Returns
/// restart's phases (its `--timings`); the error is restart's own line.
pub async fn restore(
    root: &Path,
    app: i32,
    sn: u32,
    out: Outputs,
) -> Result<Vec<checkpoint::timings::Phase>, String> {
    run_restart(root, app, sn, Target::Plain(out), Lazy::No, None)
        .await
        .map(|r| r.0)
}

/// Where restart puts the tree: as a plain process (its outputs), or
/// into a job's namespace.
enum Target {
    Plain(Outputs),
    Job(IntoJob),
}

/// [`restore`] into a job's namespace (see [`IntoJob`]), lazily or not
/// (see [`restore_lazily`]), run once `gate` says so if given: restart's
/// phases and, when lazy, the PID of its page server (a process of the
/// job's namespace then, reaped by the job's init).
pub async fn restore_into(
    root: &Path,
    app: i32,
    sn: u32,
    job: IntoJob,
    lazy: Lazy,
    gate: Option<Decision>,
) -> Result<(Vec<checkpoint::timings::Phase>, Option<i32>), String> {
    let (phases, text) = run_restart(root, app, sn, Target::Job(job), lazy, gate).await?;
    Ok((phases, page_server(&text)))
}

/// [`restore`] that lets the processes run before their private memory is
/// in (`restart --lazy --check-as-loaded`): a page server, a child of
/// restart that comes to krgd (a subreaper) when restart exits, brings
/// each page in on first touch and the rest behind; it is reaped here.
/// The image came from a member's krgd over the sealed connection: its
/// page data is checked as it loads, and a bad block kills the process.
/// With `fetch` (post-copy), page data is asked for on that socket before
/// it is read (`restart --fetch-fd`). The processes run once `gate` says
/// so.
pub async fn restore_lazily(
    root: &Path,
    app: i32,
    sn: u32,
    fetch: Option<OwnedFd>,
    out: Outputs,
    gate: Decision,
) -> Result<(Vec<checkpoint::timings::Phase>, Option<i32>), String> {
    let target = Target::Plain(out);
    let (phases, text) = run_restart(root, app, sn, target, Lazy::Yes(fetch), Some(gate)).await?;
    Ok((phases, page_server(&text)))
}

/// The page server's PID in restart's last line.
fn page_server(text: &str) -> Option<i32> {
    let rest = text.split("page server PID ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Wait for the page server (it ends once every page is in, or its
/// processes are gone) and reap it.
pub async fn reap_server(pid: i32) {
    let _ = super::super::spawn::reap_adopted(pid).await;
}

/// Whether restart lets the processes run before their memory is in.
pub enum Lazy {
    No,
    /// Yes, with the fetch socket of a post-copy migration if any.
    Yes(Option<OwnedFd>),
}

/// Run restart; its phases and everything it reported.
async fn run_restart(
    root: &Path,
    app: i32,
    sn: u32,
    target: Target,
    lazy: Lazy,
    gate: Option<Decision>,
) -> Result<(Vec<checkpoint::timings::Phase>, String), String> {
    let bin = restart_binary();
    let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let raw_w = w.as_raw_fd();
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg(app.to_string())
        .arg(sn.to_string())
        .arg("--dir")
        .arg(root)
        .args(["--pid-wait", PID_WAIT, "--report-fd", "3", "--timings"])
        .arg("--socket")
        // no krgd there: restart must not grant CHECKPOINTABLE (krgd gives
        // back the capabilities the process had)
        .arg(root.join("no-krgd.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let fetch = match lazy {
        Lazy::No => None,
        Lazy::Yes(fetch) => {
            cmd.args(["--lazy", "--check-as-loaded"]);
            if fetch.is_some() {
                cmd.args(["--fetch-fd", "4"]);
            }
            fetch
        }
    };
    let raw_fetch = fetch.as_ref().map(|f| f.as_raw_fd());
    let gate = match gate {
        Some(decision) => {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()
                .map_err(|e| format!("socketpair (restart's gate): {e}"))?;
            cmd.args(["--gate-fd", "5"]);
            // Not killed if this future is dropped (krgd stopping): a
            // SIGKILL would free the held tasks to run undecided, while
            // the gate closing with krgd makes restart kill them.
            cmd.kill_on_drop(false);
            Some((ours, OwnedFd::from(theirs), decision))
        }
        None => None,
    };
    let raw_gate = gate.as_ref().map(|(_, theirs, _)| theirs.as_raw_fd());
    match target {
        Target::Job(job) => {
            cmd.arg("--pidns-of").arg(job.init.to_string());
            for (host, inner) in &job.map {
                cmd.arg("--ns-pid").arg(format!("{host}:{inner}"));
            }
            if let Some(fg) = job.ctty_fg {
                cmd.arg("--ctty-fg").arg(fg.to_string());
            }
            let [i, o, e] = job.stdio;
            cmd.stdin(Stdio::from(i))
                .stdout(Stdio::from(o))
                .stderr(Stdio::from(e));
        }
        Target::Plain([o, e]) => {
            let or_null = |f: Option<OwnedFd>| f.map_or_else(Stdio::null, Stdio::from);
            cmd.stdout(or_null(o)).stderr(or_null(e));
        }
    }
    // SAFETY: between fork and exec only fcntl and dup2 (async-signal-safe) run.
    unsafe {
        cmd.pre_exec(move || {
            // out of the way of fds 3-5 first (they may be among them)
            let high = |fd: Option<i32>| match fd {
                Some(f) => libc::fcntl(f, libc::F_DUPFD_CLOEXEC, 10),
                None => 0,
            };
            let (fetch, gate) = (high(raw_fetch), high(raw_gate));
            if fetch < 0
                || gate < 0
                || libc::dup2(raw_w, 3) < 0
                || (raw_fetch.is_some() && libc::dup2(fetch, 4) < 0)
                || (raw_gate.is_some() && libc::dup2(gate, 5) < 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    drop(w);
    // restart and its page server hold it now
    drop(fetch);
    let (refused, fence) = match gate {
        Some((ours, theirs, decision)) => {
            drop(theirs);
            match keep_gate(ours, decision).await {
                Ok(waited) => (None, waited),
                Err(why) => (Some(why), None),
            }
        }
        None => (None, None),
    };
    let status = match tokio::time::timeout(RESTORE_TIMEOUT, child.wait()).await {
        Ok(s) => s.map_err(|e| format!("waiting for restart: {e}"))?,
        Err(_) => {
            let _ = child.kill().await;
            return Err("restart took longer than 2 minutes".into());
        }
    };
    let text = read_report(r);
    let line = text.lines().last().unwrap_or("").trim().to_string();
    if let Some(why) = refused {
        return Err(why);
    }
    if status.success() {
        let mut phases = text
            .lines()
            .find(|l| l.starts_with("restart: timings:"))
            .map(checkpoint::timings::parse)
            .unwrap_or_default();
        // the held tree's wait for the cluster's placement, inside restart's
        phases.extend(fence.map(|d| ("fence".to_string(), d)));
        Ok((phases, text))
    } else if line.is_empty() {
        Err(format!("restart failed ({status})"))
    } else {
        Err(line)
    }
}

/// Wait until restart says the tree is ready on `gate`, then let it go
/// or not as `decision` says: why not, if not; if let go, how long the
/// decision took once the tree was ready. A restart that fails (or hangs)
/// before it is ready is left to its exit status (or timeout).
async fn keep_gate(
    gate: std::os::unix::net::UnixStream,
    decision: Decision,
) -> Result<Option<Duration>, String> {
    let mut gate = gate
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(gate))
        .map_err(|e| format!("restart's gate: {e}"))?;
    let mut said = [0u8; 1];
    match tokio::time::timeout(RESTORE_TIMEOUT, gate.read(&mut said)).await {
        Ok(Ok(1)) if said[0] == READY => {}
        _ => return Ok(None),
    }
    let ready = std::time::Instant::now();
    // an error closes the gate, which kills the held processes
    decision.await?;
    let waited = ready.elapsed();
    gate.write_all(&[GO])
        .await
        .map_err(|e| format!("restart's gate: {e}"))?;
    Ok(Some(waited))
}

/// What restart wrote on its report pipe. restart has exited, so all of it
/// is in the pipe; it is not read to its end, which a page server (a child
/// of restart holding the pipe too) would put off until every page is in.
fn read_report(r: OwnedFd) -> String {
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut f = std::fs::File::from(r);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < 64 * 1024 {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Become the parent of restored processes once restart exits (so their
/// exit status reaches krgd, not PID 1).
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot become a child subreaper: migrated processes will be reaped by PID 1");
    }
}
