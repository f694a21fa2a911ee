//! The stand-in (bproc's ghost) that a process started without `krg run`
//! leaves on the node it moves from, so that its parent and its shell see
//! no difference.
//!
//! While the dumped process is stopped, the origin turns it into its own
//! stand-in: injected system calls close its files above fd 2 and execute
//! `krg` in its place ([`checkpoint::standin`]), with the process's own
//! command line (what `ps` shows) and a token in `KRG_STANDIN`. The
//! stand-in keeps what its parent and its shell know: its PID, its parent,
//! its process group and session, its fds 0-2. It connects to this krgd
//! ([`serve`]: only the process krgd made may claim the token) and drives
//! the moved process's session as `krg run` drives a job's: what the
//! process prints comes out of the stand-in's stdout and stderr, its stdin
//! (a pipe) goes there, the signals it is sent go there, and it ends as
//! the process ends (the same exit code, or killed by the same signal), so
//! the parent's `wait()` gets the real status. SIGSTOP, which no handler
//! may take, stops the stand-in alone: krgd sees it stopped
//! ([`stop_watch`]) and stops the process too; the SIGCONT that resumes
//! the stand-in it passes on itself.
//!
//! On the target the process is taken over as a `krg run` job is
//! ([`super::adopt`]): in a PID namespace of its own where every PID of
//! the tree keeps its number, so its `getpid()` is what it was although
//! the stand-in holds that PID in the one kernel of a local cluster.
//!
//! A process that cannot have a stand-in (a seccomp filter would hold it;
//! `krg` is not installed next to krgd) moves as before: its parent sees
//! it killed (see docs/migration.md).

use std::sync::Arc;
use std::time::Duration;

use krg_proto::admin::{AdminError, AdminResponse, ErrorKind};
use krg_proto::frame::write_frame;
use krg_proto::migrate::{AdoptJob, PhaseTime};
use krg_proto::proc::{ProcReply, Up, SESSION_VERSION};
use krg_proto::NodeId;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::super::local_stream;
use super::super::remote::RunsOn;
use super::super::session::{self, Session};
use super::super::state::ProcState;
use super::adopt::{self, JobImage};
use super::registry::{start_ticks, PendingStandIn, Sinks, StandInStream};
use super::restore::{self, Lazy};
use super::{runjob, stdio, Clock};
use crate::caller::Caller;

pub use checkpoint::standin::TOKEN_VAR;
/// How long the stand-in may take to start and connect.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connected stand-in waits for its process to run somewhere.
const SESSION_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the target may take to take the process over.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(150);
/// The longest command line given to the stand-in.
const MAX_CMDLINE: usize = 64 << 10;
/// How often krgd looks whether a stand-in was stopped.
const STOP_POLL: Duration = Duration::from_millis(100);

/// A stand-in that runs and is connected, waiting for its process's session.
pub struct Made {
    pid: i32,
    uid: u32,
    gid: u32,
    /// Every PID and TID of the moved tree, mapped to itself.
    map: Vec<(i32, i32)>,
    session: oneshot::Sender<Result<StandInStream, AdminError>>,
}

/// Every PID and TID of the stopped tree `tasks`, each keeping its number
/// (read before the root becomes a stand-in: its threads go then).
pub fn same_numbers(tasks: &[i32]) -> Vec<(i32, i32)> {
    let mut map = Vec::new();
    for &p in tasks {
        let tids = checkpoint::procfs::threads(p).unwrap_or_default();
        for t in std::iter::once(p).chain(tids) {
            if !map.contains(&(t, t)) {
                map.push((t, t));
            }
        }
    }
    map
}

/// Why a process whose `/proc/PID/status` is `status` cannot have a
/// stand-in running `program`, if it cannot.
fn unsuitable(status: &str, program: &std::path::Path) -> Option<String> {
    if let Some(why) =
        restore::not_root_only(program, "install krg next to krgd, or the krg package")
    {
        return Some(why);
    }
    let seccomp = checkpoint::procfs::status_field(status, "Seccomp").unwrap_or("0");
    (seccomp.trim() != "0")
        .then(|| "it runs under a seccomp filter, which would hold its stand-in too".into())
}

/// The command line of `pid`, as `ps` shows it.
fn cmdline(pid: i32) -> Vec<Vec<u8>> {
    let mut raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.truncate(MAX_CMDLINE);
    let args: Vec<Vec<u8>> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if args.is_empty() {
        let comm = std::fs::read(format!("/proc/{pid}/comm")).unwrap_or_default();
        return vec![comm.trim_ascii_end().to_vec()];
    }
    args
}

/// A stand-in on its way: the process's files are closed, its `execve`
/// (which frees its memory) runs on a thread of its own, while the
/// process is handed over.
pub struct Begun {
    token: u64,
    made: Made,
    exec: oneshot::Receiver<Result<(), String>>,
    claimed: oneshot::Receiver<()>,
}

/// Start turning `pid` (the root of the stopped tree `rep` saved, owned
/// by `uid`) into its stand-in: returns once its files above fd 2 are
/// closed. Err: why not, the process untouched (it may move without a
/// stand-in).
pub(super) async fn begin(
    st: &Arc<ProcState>,
    pid: i32,
    rep: &super::send::Dumped,
    uid: u32,
) -> Result<Begun, String> {
    let tasks = &rep.tasks;
    let program = restore::installed("krg");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    if let Some(why) = unsuitable(&status, &program) {
        return Err(why);
    }
    let map = same_numbers(tasks);
    let gid = checkpoint::procfs::status_ids(&status, "Gid")
        .ok()
        .and_then(|ids| ids.first().copied())
        .ok_or("cannot read its group")?;
    let argv = cmdline(pid);
    let token: u64 = rand::random();
    let (claimed_tx, claimed) = oneshot::channel();
    let (session, session_rx) = oneshot::channel();
    crate::sync::lock(&st.migration.standins.pending).insert(
        token,
        PendingStandIn {
            pid,
            claimed: claimed_tx,
            session: session_rx,
        },
    );
    let env = vec![
        format!("{TOKEN_VAR}={token:x}"),
        format!("KRG_SOCKET={}", st.ctx.config.socket.display()),
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        format!(
            "{}={}",
            checkpoint::standin::SAVED_VAR,
            saved_signals(rep, pid)
        ),
    ];
    let (closed_tx, closed) = oneshot::channel();
    let (exec_tx, exec) = oneshot::channel();
    // ptrace wants one thread for the whole injection.
    let spawned = std::thread::Builder::new()
        .name("krg-standin".into())
        .spawn(move || {
            let s = checkpoint::standin::StandIn {
                program: &program.to_string_lossy(),
                argv: &argv,
                env: &env,
            };
            let r = checkpoint::standin::become_stand_in(pid, &s, || {
                let _ = closed_tx.send(());
            });
            if r.is_ok() {
                // SAFETY: plain kill(2) of the stand-in, stopped until now.
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }
            let _ = exec_tx.send(r.map_err(|e| e.to_string()));
        });
    let forget = || crate::sync::lock(&st.migration.standins.pending).remove(&token);
    if let Err(e) = spawned {
        forget();
        return Err(e.to_string());
    }
    if closed.await.is_err() {
        // failed before touching the process's files
        forget();
        let why = exec.await.ok().and_then(Result::err);
        return Err(why.unwrap_or_else(|| "the stand-in's thread ended".into()));
    }
    Ok(Begun {
        token,
        made: Made {
            pid,
            uid,
            gid,
            map,
            session,
        },
        exec,
        claimed,
    })
}

impl Begun {
    /// The process, by now closed to its files: its handover may start.
    pub fn pid(&self) -> i32 {
        self.made.pid
    }

    /// Wait until the stand-in runs and connected. Err: why it does not
    /// (the process must then be killed here, and run on without one).
    pub async fn ready(self, st: &ProcState) -> Result<Made, String> {
        let forget = || crate::sync::lock(&st.migration.standins.pending).remove(&self.token);
        match self.exec.await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                forget();
                return Err(why);
            }
            Err(_) => {
                forget();
                return Err("the stand-in's thread ended".into());
            }
        }
        // It held them as the process; a stand-in neither moves nor is saved.
        st.caps.forget(self.made.pid);
        match tokio::time::timeout(CLAIM_TIMEOUT, self.claimed).await {
            Ok(Ok(())) => Ok(self.made),
            _ => {
                forget();
                Err(format!(
                    "its stand-in did not connect within {CLAIM_TIMEOUT:?}"
                ))
            }
        }
    }
}

impl Made {
    /// The target failed after the handover: restore the process here,
    /// in a namespace of its own as on a target, for the stand-in.
    pub async fn take_back(
        self,
        st: &Arc<ProcState>,
        saved: runjob::Saved<'_>,
    ) -> Result<(), String> {
        let img = JobImage {
            root: saved.root,
            app: saved.app,
            sn: saved.sn,
            pid: self.pid,
            map: self.map.clone(),
            uid: self.uid,
            gid: self.gid,
            origin: st.node(),
            terminal: None,
            checkpointable: saved.checkpointable.to_vec(),
            detached: false,
            output_here: false,
            fence: None,
        };
        match adopt::start(st, img, &mut Clock::new(), Lazy::No).await {
            Ok(job) => {
                let sess = session::spawn_started(st.clone(), job, None);
                self.run(st, RunsOn::new(st.node()), Ok(sess));
                Ok(())
            }
            Err(e) => {
                let why = e.message.clone();
                self.run(st, RunsOn::new(st.node()), Err(e));
                Err(why)
            }
        }
    }

    /// The process runs on a node that no longer answers (placed there
    /// before it was cut off): the stand-in is told `why` and ends.
    pub fn lost(self, why: String) {
        let _ = self
            .session
            .send(Err(AdminError::new(ErrorKind::Unavailable, why)));
    }

    fn run(self, st: &ProcState, on: RunsOn, sess: Result<Session, AdminError>) {
        if let (Ok(_), Some(start)) = (&sess, start_ticks(self.pid)) {
            crate::sync::lock(&st.migration.standins.active).insert(self.pid, (start, on));
        }
        let _ = self.session.send(sess.map(|s| (s.input, s.events)));
    }
}

/// Hand the process (transfer `xfer`, its stand-in begun) to `to` as a
/// job whose PIDs keep their numbers, while its stand-in comes up here;
/// the stand-in then drives its session. A stand-in that fails leaves the
/// process running there without one, its output still going to `sinks`
/// (as after `migrate --no-stand-in`). On the target's failure the
/// stand-in (if it is up) comes back for [`Made::take_back`].
pub async fn hand_over(
    st: &Arc<ProcState>,
    begun: Begun,
    to: NodeId,
    xfer: u64,
    checkpointable: &[i32],
    sinks: &Sinks,
) -> Result<Vec<PhaseTime>, (String, Option<Made>)> {
    let pid = begun.pid();
    let adopt = AdoptJob {
        version: SESSION_VERSION,
        xfer,
        pid,
        map: begun.made.map.clone(),
        terminal: None,
        checkpointable: checkpointable.to_vec(),
        detached: false,
    };
    let (adopted, ready) = tokio::join!(
        super::super::remote::open_adopted(st, to, adopt, ADOPT_TIMEOUT),
        begun.ready(st)
    );
    let kill = || {
        // SAFETY: plain kill(2) of what is left of the stopped process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    };
    match (adopted, ready) {
        (Ok((sess, phases, runs_on)), Ok(m)) => {
            m.run(st, runs_on, Ok(sess));
            Ok(phases)
        }
        (Ok((sess, phases, _)), Err(why)) => {
            tracing::warn!(
                pid,
                why,
                "no stand-in after all: the process runs on without one"
            );
            kill();
            stdio::drain(sess, sinks.clone());
            Ok(phases)
        }
        (Err(e), Ok(m)) => Err((e.message, Some(m))),
        (Err(e), Err(_)) => {
            kill();
            Err((e.message, None))
        }
    }
}

fn refuse(kind: ErrorKind, msg: impl Into<String>) -> AdminResponse {
    AdminResponse::Error(AdminError::new(kind, msg))
}

/// A stand-in connected with `token`: once its process runs, carry the
/// process's session on its connection.
pub async fn serve(st: &Arc<ProcState>, mut stream: UnixStream, caller: &Caller, token: u64) {
    let pending = {
        let mut p = crate::sync::lock(&st.migration.standins.pending);
        match p.get(&token) {
            // The token is only the stand-in's: a process that read it
            // (its owner may read its environment) is not the stand-in.
            Some(s) if caller.pid == Some(s.pid) => p.remove(&token),
            _ => None,
        }
    };
    let Some(pending) = pending else {
        let no = refuse(ErrorKind::PermissionDenied, "not a stand-in of this node");
        let _ = write_frame(&mut stream, &no).await;
        return;
    };
    let pid = pending.pid;
    // this stand-in's start time: its PID may be another stand-in's by
    // the time this session ends (a restart makes it again at once)
    let born = start_ticks(pid);
    let _ = pending.claimed.send(());
    let answer = match tokio::time::timeout(SESSION_TIMEOUT, pending.session).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(AdminError::new(
            ErrorKind::Internal,
            "the migration gave up",
        )),
        Err(_) => Err(AdminError::new(
            ErrorKind::Unavailable,
            format!("the process did not run anywhere within {SESSION_TIMEOUT:?}"),
        )),
    };
    let (input, events) = match answer {
        Ok(s) => s,
        Err(e) => {
            let _ = write_frame(&mut stream, &AdminResponse::Error(e)).await;
            return;
        }
    };
    let on = crate::sync::lock(&st.migration.standins.active)
        .get(&pid)
        .map_or(st.node(), |(_, n)| n.get());
    let reply = AdminResponse::Proc(ProcReply::Session { jobs: vec![on] });
    if write_frame(&mut stream, &reply).await.is_ok() {
        let watch = tokio::spawn(stop_watch(pid, input.clone()));
        local_stream::carry(stream, input, events).await;
        watch.abort();
    }
    forget_active(st, pid, born);
    tracing::info!(pid, "a stand-in's process ended (or the stand-in did)");
}

/// The session of the stand-in `pid` that started at `born` ended: it is
/// no longer where its process runs. Only its own entry goes — the one a
/// restart made since with the same PID stays (removing it made the new
/// stand-in unknown: `checkpoint` of it answered "not a stand-in").
fn forget_active(st: &ProcState, pid: i32, born: Option<u64>) {
    let mut active = crate::sync::lock(&st.migration.standins.active);
    if active
        .get(&pid)
        .is_some_and(|&(start, _)| Some(start) == born)
    {
        active.remove(&pid);
    }
}

/// The signals pending in `pid` that its image holds, for the stand-in to
/// drop (`1,10,34`): the moved copy gets them from its image. An image
/// that cannot be read drops none (a signal may then come twice).
fn saved_signals(rep: &super::send::Dumped, pid: i32) -> String {
    match checkpoint::standin::saved_signals(&rep.dir, rep.sn, pid) {
        Ok(sigs) => sigs
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        Err(e) => {
            tracing::warn!(pid, error = %e, "cannot read the pending signals of the image");
            String::new()
        }
    }
}

/// Whether process `pid` is stopped (state T: a signal stopped it; a
/// tracer's stop is `t`), or None once it is dead (a zombie) or gone.
fn stopped(pid: i32) -> Option<bool> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.get(stat.rfind(')')? + 2..)?.chars().next()?;
    (!matches!(state, 'Z' | 'X' | 'x')).then_some(state == 'T')
}

/// A pidfd of the stand-in `pid` born at `born` (its start time), to
/// learn of its end; None if it is another process's PID already, or the
/// pidfd cannot be had (the looks every [`STOP_POLL`] still find its end).
fn end_of(pid: i32, born: Option<u64>) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    let fd = super::super::spawn::pidfd_open(pid).ok()?;
    // opened after `born` was read: the same process only if it still has
    // that start time (a PID taken again would have another)
    if born.is_none() || start_ticks(pid) != born {
        return None;
    }
    super::super::fdio::register(fd).ok()
}

/// Once the process of `pidfd` has ended (a zombie is ended); never
/// without a pidfd.
async fn ended(pidfd: Option<&tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>) {
    match pidfd {
        Some(fd) => {
            // (readable only once it ended; an error is no end)
            if fd.readable().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// While the stand-in `pid` carries its process's session on `input`:
/// each time it is seen stopped (SIGSTOP, or a terminal's SIGTTIN), the
/// process is sent SIGSTOP where it runs, so that what the shell sees
/// stopped is stopped. The SIGCONT that resumes the stand-in resumes the
/// process (the stand-in passes it on).
///
/// It holds the session's input: once the stand-in is dead (killed: a
/// zombie until reaped), gone, or its PID is another process's (a
/// restart made its stand-in again with that PID), it lets go, and the
/// session ends — the moved process with it, even a silent one, whose
/// session nothing else would find broken. Its end is seen at once
/// through a pidfd (a `kill -9` of the stand-in ends the process on its
/// target without waiting for the next look), its stops at the next look.
async fn stop_watch(pid: i32, input: mpsc::Sender<Up>) {
    let mut tick = tokio::time::interval(STOP_POLL);
    let mut was = false;
    let born = start_ticks(pid);
    let end = end_of(pid, born);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = ended(end.as_ref()) => return,
        }
        if start_ticks(pid) != born {
            return;
        }
        let Some(now) = stopped(pid) else { return };
        if now && !was && input.send(Up::Signal(libc::SIGSTOP)).await.is_err() {
            return;
        }
        was = now;
    }
}
