//! The output of a process that moved without being a `krg run` job. Its
//! stdout and stderr led to pipes or a terminal on the node it left (its
//! parent's, a shell's), which no other node has:
//!
//! - the origin keeps them: krgd's own descriptors of the process's open
//!   files ([`take`], `pidfd_getfd`, never reopened by path), held for
//!   the transfer until the target says the output ended;
//! - the target gives restart pipes in their place ([`Forward::new`]) and
//!   sends what comes out of them to the origin
//!   ([`MigratePeerRequest::Output`]), in order, one request at a time per
//!   stream, then [`MigratePeerRequest::OutputEnd`] once both are closed;
//! - the origin writes it into the kept files ([`write`]). A reader gone
//!   there (EPIPE) is answered with an error: the target closes that
//!   pipe, and the process's next write gets SIGPIPE, as it would have
//!   here.
//!
//! A process that moves on takes the same path again from its new node,
//! whose pipes then feed the previous hop. Its stdin stays `/dev/null`: a
//! background process's terminal is its shell's to read.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::migrate::{MigratePeerReply, MigratePeerRequest};
use krg_proto::NodeId;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use super::super::fdio::pipe_pair;
use super::super::liveness::{until_gone, CutOff};
use super::super::spawn::pidfd_open;
use super::super::state::ProcState;
use super::{call, STEP_TIMEOUT};

/// How long the origin may take to write one piece of output. A terminal
/// held by flow control (Ctrl-S), or a pipe nobody reads yet, blocks the
/// write there as it would block the process at home: the process then
/// blocks here too, once its pipe is full, instead of being given
/// SIGPIPE. (The origin failing still ends the wait at once.)
const OUTPUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

pub use super::registry::{Kept, Sinks};

/// fd `fd` of process `pid`, if it leads out of any tree a krgd could
/// move: a pipe or a terminal.
fn leads_out(pid: i32, pidfd: &OwnedFd, fd: i32) -> Option<Arc<OwnedFd>> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let text = link.to_string_lossy();
    if !(text.starts_with("pipe:") || text.starts_with("/dev/pts/") || text.starts_with("/dev/tty"))
    {
        return None;
    }
    // SAFETY: pidfd_getfd on a pidfd we own; returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    let raw = i32::try_from(raw).ok().filter(|&r| r >= 0)?;
    // SAFETY: a new descriptor nobody else owns.
    Some(Arc::new(unsafe { OwnedFd::from_raw_fd(raw) }))
}

/// The stopped process `pid`'s stdout and stderr, when they lead to a
/// pipe or a terminal (the same open files, with the process's access).
pub fn take(pid: i32) -> Sinks {
    let Ok(pidfd) = pidfd_open(pid) else {
        return Sinks::default();
    };
    Sinks {
        stdout: leads_out(pid, &pidfd, 1),
        stderr: leads_out(pid, &pidfd, 2),
    }
}

impl Sinks {
    /// Copies for restart's stdout and stderr when the process is taken
    /// back here (`None`: /dev/null).
    pub fn for_restart(&self) -> [Option<OwnedFd>; 2] {
        let dup = |f: &Option<Arc<OwnedFd>>| f.as_ref().and_then(|f| f.try_clone().ok());
        [dup(&self.stdout), dup(&self.stderr)]
    }

    fn is_empty(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none()
    }
}

/// Keep `sinks` for transfer `xfer` to `to` until its output ends, or
/// until `to` fails or leaves (nothing more can come then: a reader of
/// the pipe here sees its end).
pub fn keep(st: &Arc<ProcState>, to: NodeId, xfer: u64, sinks: Sinks) {
    if sinks.is_empty() {
        return;
    }
    st.migration.outputs.map().insert((to, xfer), sinks);
    let st = st.clone();
    tokio::spawn(async move {
        let mut view = st.ctx.watch_view();
        while st.migration.outputs.map().contains_key(&(to, xfer)) {
            tokio::select! {
                _ = until_gone(&mut view, to, CutOff::Ignored) => break,
                _ = tokio::time::sleep(WATCH_EVERY) => {}
            }
        }
        forget(&st, to, xfer);
    });
}

/// How often a kept output checks that it is still kept.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The output of transfer `xfer` to `to` ended (or it failed).
pub fn forget(st: &ProcState, to: NodeId, xfer: u64) {
    st.migration.outputs.map().remove(&(to, xfer));
}

/// Origin: `data`, which the process moved to `from` by `xfer` wrote to
/// its stdout (or stderr), into the file it led to here.
pub async fn write(
    st: &ProcState,
    from: NodeId,
    xfer: u64,
    stderr: bool,
    data: Vec<u8>,
) -> Result<(), AdminError> {
    let sinks = st.migration.outputs.map().get(&(from, xfer)).cloned();
    let sink = sinks
        .and_then(|s| if stderr { s.stderr } else { s.stdout })
        .ok_or_else(|| {
            AdminError::new(
                ErrorKind::NotFound,
                format!("no output of transfer {xfer:x} from node {from} is kept here"),
            )
        })?;
    // The file is the user's (their shell's terminal, a pipe): its mode is
    // theirs too, so a blocking write runs off the runtime's threads.
    let r = tokio::task::spawn_blocking(move || {
        std::fs::File::from(sink.try_clone()?).write_all(&data)
    })
    .await;
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(AdminError::new(
            ErrorKind::Unavailable,
            format!("the process's output here cannot be written: {e}"),
        )),
        Err(e) => Err(AdminError::new(ErrorKind::Internal, e.to_string())),
    }
}

/// Origin: carry the session of a process that moved as a job but whose
/// stand-in could not be made: what it prints goes into `sinks`, nothing
/// goes to it, and it runs on until it ends (its input is kept open: the
/// target would kill it otherwise). A reader gone from its stdout is told
/// to the target, as a closed pipe (the process gets SIGPIPE there).
pub fn drain(sess: super::super::session::Session, sinks: Sinks) {
    use krg_proto::proc::{Down, Up};
    let (input, mut events) = (sess.input, sess.events);
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let (sink, data) = match ev {
                Down::Stdout { data, .. } => (sinks.stdout.clone(), data),
                Down::Stderr { data, .. } => (sinks.stderr.clone(), data),
                Down::Exited { .. } | Down::Lost { .. } | Down::Refused { .. } => break,
                _ => continue,
            };
            let Some(sink) = sink else { continue };
            let wrote = tokio::task::spawn_blocking(move || {
                std::fs::File::from(sink.try_clone()?).write_all(&data)
            })
            .await;
            if !matches!(wrote, Ok(Ok(()))) {
                let _ = input.send(Up::CloseStdout).await;
            }
        }
    });
}

/// Target: pipes for restart's stdout and stderr, and their read ends.
pub struct Forward {
    /// Restart's stdout and stderr.
    pub for_restart: [OwnedFd; 2],
    readers: [pipe::Receiver; 2],
}

impl Forward {
    pub fn new() -> std::io::Result<Forward> {
        let (out_r, out_w) = pipe_pair()?;
        let (err_r, err_w) = pipe_pair()?;
        Ok(Forward {
            for_restart: [out_w, err_w],
            readers: [
                pipe::Receiver::from_owned_fd(out_r)?,
                pipe::Receiver::from_owned_fd(err_r)?,
            ],
        })
    }

    /// Send what the restored processes write there to `origin`, until
    /// both pipes are closed; then say so.
    pub fn start(self, st: Arc<ProcState>, origin: NodeId, xfer: u64) {
        let [out, err] = self.readers;
        tokio::spawn(async move {
            tokio::join!(
                pump(&st, origin, xfer, out, false),
                pump(&st, origin, xfer, err, true)
            );
            let _ = call(
                &st,
                origin,
                MigratePeerRequest::OutputEnd { xfer },
                STEP_TIMEOUT,
            )
            .await;
        });
    }
}

async fn pump(st: &ProcState, origin: NodeId, xfer: u64, mut from: pipe::Receiver, stderr: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let req = MigratePeerRequest::Output {
            xfer,
            stderr,
            data: buf[..n].to_vec().into(),
        };
        match call(st, origin, req, OUTPUT_TIMEOUT).await {
            Ok(MigratePeerReply::Ack) => {}
            // its reader there is gone (or the origin is): dropping the
            // read end gives the process SIGPIPE at its next write
            _ => return,
        }
    }
}
