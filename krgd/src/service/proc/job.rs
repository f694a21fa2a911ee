//! Starting one job (stdio, terminal or output files, the init in its PID
//! namespace, the spec) and waiting for its end.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::proc::{Credentials, ExitStatus, JobSpec, Program};
use krg_proto::NodeId;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use super::detach;
use super::fdio::{self, dev_null, pipe_pair};
use super::initspec::{InitEvent, InitProgram, InitSpec, Stage, EVENT_LEN};
use super::procfs;
use super::pty::{self, Pty};
use super::state::ProcState;
use super::table::JobEntry;

/// How long an init may take to report that the program started.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Capacity of a job's stdin pipe: a whole stdin frame (`MAX_CHUNK`, 256
/// KiB) and more goes in at once, where the default 64 KiB took four
/// turns of krgd and of the program for each (`krg push`).
const STDIN_PIPE: usize = 1 << 20;
/// Linux's limit on one argument or environment string.
const MAX_ARG_STRLEN: usize = 128 * 1024;
/// Total of arguments and environment a job may have (Linux's default
/// limit with an 8 MiB stack).
const MAX_ARGS_TOTAL: usize = 2 * 1024 * 1024;

/// The krgd end of a job's stdin.
pub enum Stdin {
    /// A pipe.
    Pipe(pipe::Sender),
    /// `krg push`'s socket (see [`super::pushfile`]).
    PushSocket(std::os::unix::net::UnixStream),
}

/// The krgd end of a job's stdio.
pub enum Io {
    /// Pipes (no terminal).
    Pipes {
        /// stdin, unless the job's stdin is /dev/null.
        stdin: Option<Stdin>,
        /// stdout.
        stdout: pipe::Receiver,
        /// stderr.
        stderr: pipe::Receiver,
    },
    /// A terminal: input and output on its master.
    Pty(Arc<Pty>),
    /// Output goes to files in a directory of their own (krgd keeps a
    /// descriptor of each, for a relay if the job moves).
    Detached(Arc<detach::Output>),
}

/// A job that runs.
pub struct StartedJob {
    /// Its entry in the table.
    pub entry: Arc<JobEntry>,
    /// Its stdio.
    pub io: Io,
    /// Its end.
    pub exit: ExitWatch,
}

/// Waits for a job's init to end and tells how the program ended.
pub struct ExitWatch {
    pidfd: AsyncFd<OwnedFd>,
    status: pipe::Receiver,
}

impl ExitWatch {
    /// Watch the init of `pidfd`, which reports on `status`.
    pub fn new(pidfd: OwnedFd, status: pipe::Receiver) -> io::Result<ExitWatch> {
        Ok(ExitWatch {
            pidfd: fdio::register(pidfd)?,
            status,
        })
    }

    /// Wait for the end of the job. The program's status as the init
    /// reported it; SIGKILL if the init itself was killed.
    pub async fn wait(mut self) -> ExitStatus {
        loop {
            match super::spawn::try_reap(self.pidfd.get_ref()) {
                Ok(Some(_)) => break,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot wait for a job's init");
                    break;
                }
            }
            match self.pidfd.readable().await {
                Ok(mut guard) => guard.clear_ready(),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let mut buf = [0u8; EVENT_LEN];
        match self.status.read_exact(&mut buf).await {
            Ok(_) => match InitEvent::decode(&buf) {
                Some(InitEvent::Exited { status }) => ExitStatus::from_wait_status(status),
                _ => ExitStatus::Signal {
                    signal: libc::SIGKILL,
                    core: false,
                },
            },
            Err(_) => ExitStatus::Signal {
                signal: libc::SIGKILL,
                core: false,
            },
        }
    }
}

fn refuse(kind: ErrorKind, node: NodeId, what: impl std::fmt::Display) -> AdminError {
    AdminError::new(kind, format!("node {node}: {what}"))
}

fn io_err(node: NodeId, what: &str, e: io::Error) -> AdminError {
    refuse(ErrorKind::Internal, node, format!("{what}: {e}"))
}

/// Bad input is refused before anything is started.
pub fn validate(spec: &JobSpec, node: NodeId) -> Result<(), AdminError> {
    let bad = |why: String| Err(refuse(ErrorKind::InvalidArgument, node, why));
    if spec.argv.is_empty() && matches!(spec.program, Program::Command | Program::Image { .. }) {
        return bad("nothing to run (empty argument list)".into());
    }
    if spec.argv.first().is_some_and(|a| a.is_empty()) {
        return bad("the command name is empty".into());
    }
    if !spec.cwd.starts_with(b"/") {
        return bad(format!(
            "working directory '{}' is not absolute",
            String::from_utf8_lossy(&spec.cwd)
        ));
    }
    let mut total = 0usize;
    for (what, list) in [("argument", &spec.argv), ("environment entry", &spec.env)] {
        for (i, s) in list.iter().enumerate() {
            if s.contains(&0) {
                return bad(format!("{what} {i} contains a NUL byte"));
            }
            if s.len() >= MAX_ARG_STRLEN {
                return bad(format!(
                    "{what} {i} is {} bytes long; Linux takes at most {} per string",
                    s.len(),
                    MAX_ARG_STRLEN - 1
                ));
            }
            total += s.len() + 1 + std::mem::size_of::<usize>();
        }
    }
    if total > MAX_ARGS_TOTAL {
        return bad(format!(
            "argument list too long ({total} bytes with the environment; at most {MAX_ARGS_TOTAL})"
        ));
    }
    if spec.cwd.contains(&0) {
        return bad("the working directory contains a NUL byte".into());
    }
    Ok(())
}

/// Why a job did not start, as a user reads it.
fn explain(stage: Stage, errno: i32, spec: &JobSpec, node: NodeId) -> AdminError {
    let e = io::Error::from_raw_os_error(errno);
    let prog = match &spec.program {
        Program::Image { name, .. } => name.clone(),
        _ => spec
            .argv
            .first()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default(),
    };
    let cwd = String::from_utf8_lossy(&spec.cwd);
    let (kind, what) = match (stage, errno) {
        (Stage::Exec, libc::ENOENT) => (ErrorKind::NotFound, format!("{prog}: command not found")),
        (Stage::Exec, libc::EACCES) => (
            ErrorKind::PermissionDenied,
            format!("{prog}: permission denied (not an executable file this user may run)"),
        ),
        (Stage::Exec, libc::ENOEXEC) => (
            ErrorKind::PermissionDenied,
            format!("{prog}: exec format error (not a program for this machine)"),
        ),
        (Stage::Exec, libc::E2BIG) => (
            ErrorKind::InvalidArgument,
            format!("{prog}: argument list too long"),
        ),
        (Stage::Exec, _) => (ErrorKind::InvalidArgument, format!("{prog}: {e}")),
        // Not NotFound/PermissionDenied: krg exits 127/126 for those, which
        // a shell reserves for the command itself.
        (Stage::Cwd, libc::ENOENT | libc::ENOTDIR) => (
            ErrorKind::InvalidArgument,
            format!("working directory {cwd} does not exist there"),
        ),
        (Stage::Cwd, _) => (
            ErrorKind::InvalidArgument,
            format!("working directory {cwd}: {e}"),
        ),
        (Stage::Open, _) => {
            let path = match &spec.program {
                Program::WriteFile { path, .. } | Program::ReadFile { path } => {
                    String::from_utf8_lossy(path).into_owned()
                }
                _ => String::new(),
            };
            let kind = match errno {
                libc::ENOENT => ErrorKind::NotFound,
                libc::EACCES | libc::EPERM => ErrorKind::PermissionDenied,
                _ => ErrorKind::InvalidArgument,
            };
            (kind, format!("{path}: {e}"))
        }
        (Stage::Credentials, _) => (
            ErrorKind::PermissionDenied,
            format!("cannot take the user's credentials: {e}"),
        ),
        (Stage::Proc, _) => (
            ErrorKind::Internal,
            format!("cannot give the job a mount namespace and /proc of its own: {e}"),
        ),
        (stage, _) => (
            ErrorKind::Internal,
            format!("the job's init failed ({stage:?}): {e}"),
        ),
    };
    refuse(kind, node, what)
}

/// A detached job's descriptors 0-2 (/dev/null, and its output files in
/// a new directory of its own) and krgd's hold on the files. `pid`: the
/// program's PID in its namespace, `id` its job number.
pub fn detached_stdio(
    st: &ProcState,
    creds: &Credentials,
    pid: i32,
    id: u64,
) -> io::Result<([OwnedFd; 3], Io)> {
    let name = detach::dir_name(pid, id);
    let out = detach::create(&st.detach_dir, &name, creds)?;
    let (stdout, stderr) = (out.stdout.try_clone()?, out.stderr.try_clone()?);
    Ok((
        [dev_null()?, stdout.into(), stderr.into()],
        Io::Detached(Arc::new(out)),
    ))
}

/// The init's descriptors 0-2 and krgd's ends of them.
fn make_stdio(
    st: &ProcState,
    spec: &JobSpec,
    creds: &Credentials,
    pid: i32,
    id: u64,
) -> io::Result<([OwnedFd; 3], Io)> {
    if spec.detach {
        return detached_stdio(st, creds, pid, id);
    }
    if let Some(ws) = spec.tty {
        let (master, slave) = pty::open(ws, creds.uid)?;
        let (a, b) = (slave.try_clone()?, slave.try_clone()?);
        return Ok(([slave, a, b], Io::Pty(Arc::new(master))));
    }
    let (stdin_child, stdin) = if spec.stdin && matches!(spec.program, Program::WriteFile { .. }) {
        // krg push: the job hands its destination to krgd (see pushfile).
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        (theirs.into(), Some(Stdin::PushSocket(ours)))
    } else if spec.stdin {
        let (r, w) = pipe_pair()?;
        fdio::widen_pipe(&w, STDIN_PIPE);
        (r, Some(Stdin::Pipe(pipe::Sender::from_owned_fd(w)?)))
    } else {
        (dev_null()?, None)
    };
    let (out_r, out_w) = pipe_pair()?;
    let (err_r, err_w) = pipe_pair()?;
    let io = Io::Pipes {
        stdin,
        stdout: pipe::Receiver::from_owned_fd(out_r)?,
        stderr: pipe::Receiver::from_owned_fd(err_r)?,
    };
    Ok(([stdin_child, out_w, err_w], io))
}

fn init_program(spec: &JobSpec) -> InitProgram {
    match &spec.program {
        Program::Command => InitProgram::Search,
        Program::Image { .. } => InitProgram::ImageFd,
        Program::WriteFile { path, name, mode } => InitProgram::WriteFile {
            path: path.clone(),
            name: name.clone(),
            mode: *mode,
        },
        Program::ReadFile { path } => InitProgram::ReadFile { path: path.clone() },
    }
}

/// Start one copy of `spec` for `creds` (checked by the caller). `image`
/// is the memfd of a shipped executable.
pub async fn start(
    st: &ProcState,
    spec: &JobSpec,
    creds: &Credentials,
    image: Option<&OwnedFd>,
    origin: NodeId,
) -> Result<StartedJob, AdminError> {
    let node = st.node();
    validate(spec, node)?;
    let reservation = st.table.reserve()?;
    let pid = reservation.pid();
    let (stdio, io) = make_stdio(st, spec, creds, pid, reservation.id)
        .map_err(|e| io_err(node, "cannot set up the job's input and output", e))?;
    let init_spec = InitSpec {
        pid,
        uid: creds.uid,
        gid: creds.gid,
        groups: creds.groups.clone(),
        cwd: spec.cwd.clone(),
        argv: spec.argv.clone(),
        env: spec.env.clone(),
        program: init_program(spec),
        tty: spec.tty.is_some() && !spec.detach,
    };
    st.ctx.metrics.jobs_started.inc();
    let (init, status) = match start_init(st, stdio, image, &init_spec).await? {
        Ok(x) => x,
        Err((stage, errno)) => return Err(explain(stage, errno, spec, node)),
    };
    let output = match &io {
        Io::Detached(out) => Some(out.clone()),
        _ => None,
    };
    let tty = match &io {
        Io::Pty(pty) => Some(pty.clone()),
        _ => None,
    };
    let facts = EntryFacts {
        pid,
        uid: creds.uid,
        gid: creds.gid,
        detached: spec.detach,
        output,
        tty,
        origin,
    };
    let (entry, exit) = enter(st, reservation, init, status, facts)?;
    Ok(StartedJob { entry, io, exit })
}

/// What the table records of a job, beside its init.
pub struct EntryFacts {
    /// Its program's PID in its namespace.
    pub pid: i32,
    /// Owner.
    pub uid: u32,
    /// Owner's primary group.
    pub gid: u32,
    /// Runs on after its session ends.
    pub detached: bool,
    /// Where a detached job's output goes.
    pub output: Option<Arc<detach::Output>>,
    /// The terminal it runs on.
    pub tty: Option<Arc<Pty>>,
    /// Node whose user started it.
    pub origin: NodeId,
}

/// Enter a job whose init reported `Started` into the table; the watch
/// of its end.
pub fn enter(
    st: &ProcState,
    reservation: super::table::Reservation<'_>,
    init: super::spawn::InitProcess,
    status: pipe::Receiver,
    f: EntryFacts,
) -> Result<(Arc<JobEntry>, ExitWatch), AdminError> {
    let node = st.node();
    let pidfd = init.pidfd.try_clone().map_err(|e| io_err(node, "dup", e))?;
    let ns_ino = procfs::pid_ns_inode(init.pid).unwrap_or(0);
    let entry = reservation.enter(JobEntry {
        id: 0,
        slot: 0,
        pid: f.pid,
        init_pid: init.pid,
        init_pidfd: init.pidfd,
        ns_ino,
        uid: f.uid,
        gid: f.gid,
        detached: f.detached,
        output: f.output,
        tty: f.tty,
        origin: f.origin,
        started: Instant::now(),
        moved: std::sync::Mutex::new(None),
        carrier: std::sync::Mutex::new(None),
        held_stdio: std::sync::Mutex::new(None),
    });
    let exit = ExitWatch::new(pidfd, status).map_err(|e| io_err(node, "watching the job", e))?;
    Ok((entry, exit))
}

/// Start a job's init with `stdio` as its 0-2 (and `image` for a shipped
/// executable), hand it `spec` and wait for its first report: the init
/// and its status pipe once it says `Started`; the failed step and errno
/// when it could not start the program (the init is gone then).
pub async fn start_init(
    st: &ProcState,
    stdio: [OwnedFd; 3],
    image: Option<&OwnedFd>,
    spec: &InitSpec,
) -> Result<Result<(super::spawn::InitProcess, pipe::Receiver), (Stage, i32)>, AdminError> {
    let node = st.node();
    let (spec_r, spec_w) = pipe_pair().map_err(|e| io_err(node, "pipe", e))?;
    let (status_r, status_w) = pipe_pair().map_err(|e| io_err(node, "pipe", e))?;
    let [i0, i1, i2] = stdio;
    let mut fds = vec![i0, i1, i2, spec_r, status_w];
    if let Some(img) = image {
        fds.push(img.try_clone().map_err(|e| io_err(node, "dup", e))?);
    }
    let init = st.spawner.spawn(st.init.clone(), fds).await.map_err(|e| {
        io_err(
            node,
            &format!("cannot start {}", st.init.to_string_lossy()),
            e,
        )
    })?;
    let bytes = postcard::to_stdvec(spec)
        .map_err(|e| io_err(node, "encoding the job", io::Error::other(e)))?;
    let mut status =
        pipe::Receiver::from_owned_fd(status_r).map_err(|e| io_err(node, "pipe", e))?;
    let kill = |init: &super::spawn::InitProcess| {
        let _ = super::spawn::pidfd_signal(&init.pidfd, libc::SIGKILL);
    };
    let first = tokio::time::timeout(START_TIMEOUT, async {
        let mut w = pipe::Sender::from_owned_fd(spec_w)?;
        // The init reads the spec to its end: a failed write means it died.
        let _ = w.write_all(&bytes).await;
        drop(w);
        let mut buf = [0u8; EVENT_LEN];
        status.read_exact(&mut buf).await?;
        Ok::<_, io::Error>(InitEvent::decode(&buf))
    })
    .await;
    match first {
        Ok(Ok(Some(InitEvent::Started))) => Ok(Ok((init, status))),
        Ok(Ok(Some(InitEvent::Failed { stage, errno }))) => {
            kill(&init);
            reap_later(init);
            Ok(Err((stage, errno)))
        }
        other => {
            kill(&init);
            reap_later(init);
            let why = match other {
                Err(_) => "did not report within 10 s".to_string(),
                Ok(Err(e)) => format!("ended before reporting ({e})"),
                Ok(Ok(_)) => "reported garbage".to_string(),
            };
            Err(refuse(
                ErrorKind::Internal,
                node,
                format!("the job's init {why}"),
            ))
        }
    }
}

/// Reap an init that was killed after a failed start, off the caller's path.
pub fn reap_later(init: super::spawn::InitProcess) {
    tokio::spawn(async move {
        for _ in 0..100 {
            if let Ok(Some(_)) | Err(_) = super::spawn::try_reap(&init.pidfd) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(pid = init.pid, "a failed job's init did not exit");
    });
}

/// A sealed, executable memfd holding `image`.
pub fn image_memfd(name: &str, image: &[u8]) -> io::Result<OwnedFd> {
    let cname = std::ffi::CString::new(format!("krg-image:{}", name.replace('\0', "")))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: memfd_create with a NUL-terminated name; the descriptor is ours.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(fd);
    io::Write::write_all(&mut f, image)?;
    let fd: OwnedFd = f.into();
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: adding seals to our memfd.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: Vec<Vec<u8>>) -> JobSpec {
        JobSpec {
            program: Program::Command,
            argv,
            env: vec![b"A=b".to_vec()],
            cwd: b"/".to_vec(),
            tty: None,
            detach: false,
            stdin: false,
        }
    }

    #[test]
    fn bad_arguments_are_refused_before_anything_starts() {
        assert!(validate(&spec(vec![b"true".to_vec()]), 1).is_ok());
        for (argv, why) in [
            (vec![], "nothing to run"),
            (vec![vec![]], "command name is empty"),
            (vec![b"a\0b".to_vec()], "NUL byte"),
            (
                vec![vec![b'x'; MAX_ARG_STRLEN]],
                "at most 131071 per string",
            ),
            (vec![vec![b'x'; 100_000]; 30], "argument list too long"),
        ] {
            let e = validate(&spec(argv), 4).unwrap_err();
            assert!(
                e.message.starts_with("node 4: ") && e.message.contains(why),
                "{e}"
            );
        }
        let mut relative = spec(vec![b"true".to_vec()]);
        relative.cwd = b"tmp".to_vec();
        assert!(validate(&relative, 1)
            .unwrap_err()
            .message
            .contains("not absolute"));
    }

    #[test]
    fn start_failures_read_as_a_shell_would_say_them() {
        let s = spec(vec![b"sim".to_vec()]);
        let e = explain(Stage::Exec, libc::ENOENT, &s, 2);
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::NotFound, "node 2: sim: command not found")
        );
        assert_eq!(
            explain(Stage::Exec, libc::EACCES, &s, 2).kind,
            ErrorKind::PermissionDenied
        );
        assert!(explain(Stage::Cwd, libc::ENOENT, &s, 2)
            .message
            .contains("working directory / does not exist"));
    }
}
