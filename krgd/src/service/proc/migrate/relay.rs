//! The origin's side of a `krg run` job that moved: its session here still
//! holds the job's stdio pipes, now fed by this relay, which carries them
//! to and from the node that runs the job (a session stream, as for
//! `krg run -n`), together with the job's signals and its end.
//!
//! The relay holds the job's own ends of the pipes (opened from the
//! stopped program's `/proc/PID/fd/0-2` before it was killed here), so
//! the session sees no difference: output written there comes out of the
//! pipes it reads, input it writes is read here and sent on (never more
//! than the stdin window ahead of the target's acknowledgements), a
//! closed stdout becomes `CloseStdout` there (the job gets SIGPIPE), and
//! the job's end comes back as its exit status. A detached job's output
//! goes into its files here, through krgd's descriptors of them.

use std::os::fd::{FromRawFd, OwnedFd};

use krg_proto::proc::{Down, ExitStatus, Up, WinSize, MAX_CHUNK, STDIN_WINDOW};
use krg_proto::NodeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use super::super::detach::Output;
use super::super::pty::{Pty, TtyEnd};
use super::super::session::Session;
use super::super::table::MovedEnd;

/// Where the relay writes the job's output: a pipe the session reads, a
/// detached job's output file, or the terminal the job left.
pub type Sink = Box<dyn AsyncWrite + Send + Unpin>;

/// Where the relay reads the job's input: a pipe the session writes, or
/// the terminal the job left.
pub type Source = Box<dyn AsyncRead + Send + Unpin>;

/// The job's ends of its stdio pipes, taken from its program — or a
/// detached job's output files.
#[derive(Default)]
pub struct Held {
    /// What the session writes the job's input into.
    pub stdin: Option<Source>,
    /// What the session reads the job's output from.
    pub stdout: Option<Sink>,
    /// Likewise for its errors.
    pub stderr: Option<Sink>,
    /// The output goes to files: nobody reads them as it comes, so a
    /// failed write loses that output only (the job is not told to stop).
    pub files: bool,
    /// The terminal's input, for a last read that does not wait (a
    /// terminal has no end of input to wait for when the relay hands over).
    pub drain: Option<OwnedFd>,
}

/// Open `/proc/PID/fd/N` of a pipe, without blocking and close-on-exec.
fn reopen(pid: i32, fd: i32, flags: i32) -> Option<OwnedFd> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    if !link.to_string_lossy().starts_with("pipe:") {
        return None;
    }
    let path = std::ffi::CString::new(format!("/proc/{pid}/fd/{fd}")).ok()?;
    // SAFETY: open with a NUL-terminated path; the descriptor is ours.
    let raw = unsafe { libc::open(path.as_ptr(), flags | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    // SAFETY: a new descriptor nobody else owns.
    (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) })
}

impl Held {
    /// The pipes among the stopped program `pid`'s fds 0-2 (a write end
    /// whose reader is gone is left out: its output has nowhere to go).
    pub fn take(pid: i32) -> Held {
        let out = |fd| {
            reopen(pid, fd, libc::O_WRONLY)
                .and_then(|f| pipe::Sender::from_owned_fd(f).ok())
                .map(|s| Box::new(s) as Sink)
        };
        Held {
            stdin: reopen(pid, 0, libc::O_RDONLY)
                .and_then(|f| pipe::Receiver::from_owned_fd(f).ok())
                .map(|r| Box::new(r) as Source),
            stdout: out(1),
            stderr: out(2),
            files: false,
            drain: None,
        }
    }

    /// The terminal a job on a terminal leaves (krgd's own descriptor of
    /// its slave, made raw: the terminal on the target does the echo, the
    /// line editing and the signals), for input and output both.
    pub fn terminal(pty: &Pty) -> std::io::Result<Held> {
        let slave = pty.slave()?;
        super::super::pty::make_raw(&slave)?;
        let out = || -> std::io::Result<Sink> { Ok(Box::new(TtyEnd::new(slave.try_clone()?)?)) };
        Ok(Held {
            stdout: Some(out()?),
            stderr: Some(out()?),
            drain: Some(slave.try_clone()?),
            stdin: Some(Box::new(TtyEnd::new(slave)?)),
            files: false,
        })
    }

    /// A detached job's output files, through krgd's own descriptors of
    /// them (made when the job started, never reopened by path: the
    /// directory is the user's). They share the job's file offsets, so
    /// what comes from the target follows what the job wrote here.
    pub fn files(out: &Output) -> std::io::Result<Held> {
        let file = |f: &std::fs::File| -> std::io::Result<Sink> {
            Ok(Box::new(tokio::fs::File::from_std(f.try_clone()?)))
        };
        Ok(Held {
            stdin: None,
            stdout: Some(file(&out.stdout)?),
            stderr: Some(file(&out.stderr)?),
            files: true,
            drain: None,
        })
    }
}

/// What the relay reports back to the job's session.
pub struct Ends {
    /// Signals the session sends the job.
    pub signals: mpsc::UnboundedReceiver<i32>,
    /// Window sizes of its terminal (its user's resized it).
    pub resize: mpsc::UnboundedReceiver<WinSize>,
    /// Where the job's end goes (or that it is joined where it runs).
    pub exit: oneshot::Sender<MovedEnd>,
}

const KILLED: ExitStatus = ExitStatus::Signal {
    signal: libc::SIGKILL,
    core: false,
};

/// Relay between the held pipes and `sess` (the job on node `to`) until
/// the job ends there or is lost — or, with `joiner` (the node whose
/// stream carries the job's session here), until that node joined the
/// job's session on `to` and this node is out of the path (see
/// *Splicing* in `krg_proto::proc`), asked for at once.
pub fn spawn(sess: Session, held: Held, ends: Ends, to: NodeId, joiner: Option<NodeId>) {
    tokio::spawn(run(sess, held, ends, to, joiner));
}

/// How the relay's work ended.
enum Outcome {
    /// The job ended (or was lost): this status.
    Ended(ExitStatus),
    /// Its output all came; its carrier joins it on the target with this.
    Spliced(u64),
}

async fn write(to: &mut Option<Sink>, data: &[u8]) -> bool {
    let Some(w) = to.as_mut() else {
        return true;
    };
    if w.write_all(data).await.is_ok() {
        return true;
    }
    *to = None;
    false
}

/// Everything written is where it goes (a file's writes run on another
/// thread until flushed), then the ends are closed.
async fn close(sinks: [Option<Sink>; 2]) {
    for mut w in sinks.into_iter().flatten() {
        let _ = w.flush().await;
    }
}

async fn run(sess: Session, held: Held, ends: Ends, to: NodeId, joiner: Option<NodeId>) {
    let Session {
        input, mut events, ..
    } = sess;
    let Held {
        mut stdin,
        mut stdout,
        mut stderr,
        files,
        drain,
    } = held;
    let Ends {
        mut signals,
        mut resize,
        exit,
    } = ends;
    let mut buf = vec![0u8; MAX_CHUNK.min(64 * 1024)];
    let (mut sent, mut acked) = (0u64, 0u64);
    let (mut signals_open, mut resize_open) = (true, true);
    let mut splice = None;
    let outcome = loop {
        if let Some(joiner) = joiner.filter(|_| splice.is_none() && !files) {
            let token = rand::random();
            splice = Some(token);
            let _ = input.send(Up::Splice { token, joiner }).await;
        }
        let room = sent.saturating_sub(acked) < STDIN_WINDOW;
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Down::Spliced { .. }) => {
                    if let Some(token) = splice {
                        break Outcome::Spliced(token);
                    }
                }
                Some(Down::Stdout { data, .. }) => {
                    if !write(&mut stdout, &data).await && !files {
                        // the session's reader left: so does the job's
                        let _ = input.send(Up::CloseStdout).await;
                    }
                }
                Some(Down::Stderr { data, .. }) => {
                    write(&mut stderr, &data).await;
                }
                Some(Down::StdinAck { bytes, .. }) => acked = bytes,
                Some(Down::Exited { status, .. }) => break Outcome::Ended(status),
                Some(Down::Lost { reason, .. }) => {
                    let note = format!("krg: the job moved to node {to} and was lost there: {reason}\n");
                    write(&mut stderr, note.as_bytes()).await;
                    break Outcome::Ended(KILLED);
                }
                Some(Down::Refused { error, .. }) => {
                    let note = format!("krg: node {to} refused the job: {}\n", error.message);
                    write(&mut stderr, note.as_bytes()).await;
                    break Outcome::Ended(KILLED);
                }
                Some(_) => {}
                None => break Outcome::Ended(KILLED),
            },
            n = read_some(&mut stdin, &mut buf), if stdin.is_some() && room => match n {
                Some(n) => {
                    sent += n as u64;
                    if input.send(Up::Stdin(buf[..n].to_vec().into())).await.is_err() {
                        break Outcome::Ended(KILLED);
                    }
                }
                None => {
                    stdin = None;
                    let _ = input.send(Up::StdinEof).await;
                }
            },
            sig = signals.recv(), if signals_open => match sig {
                // (an end of input: the pipe says it here)
                Some(0) => {}
                Some(sig) => {
                    let _ = input.send(Up::Signal(sig)).await;
                }
                None => signals_open = false,
            },
            ws = resize.recv(), if resize_open => match ws {
                Some(ws) => {
                    let _ = input.send(Up::WinSize(ws)).await;
                }
                None => resize_open = false,
            },
        }
    };
    // Output first: the session reads the pipes to their end (or the
    // files are written), then the status.
    close([stdout, stderr]).await;
    match outcome {
        Outcome::Ended(status) => {
            let _ = exit.send(MovedEnd::Exited(status));
        }
        Outcome::Spliced(token) => {
            let _ = exit.send(MovedEnd::Rejoin { node: to, token });
            let rest = Rest {
                input,
                events,
                stdin,
                drain,
                signals: signals_open.then_some(signals),
                resize: resize_open.then_some(resize),
                window: (sent, acked),
            };
            rest.pass_on(&mut buf).await;
        }
    }
}

/// What a relay whose job was joined on the target still passes on.
struct Rest {
    input: mpsc::Sender<Up>,
    events: mpsc::Receiver<Down>,
    stdin: Option<Source>,
    /// A terminal's input (see [`Held::drain`]).
    drain: Option<OwnedFd>,
    signals: Option<mpsc::UnboundedReceiver<i32>>,
    resize: Option<mpsc::UnboundedReceiver<WinSize>>,
    /// Stdin bytes (sent, acknowledged by the target).
    window: (u64, u64),
}

impl Rest {
    /// What the session here still sends the job (its stdin, within the
    /// window; its signals and window sizes; its user's end of input)
    /// goes on, until the carrier's last word closed both stdin and
    /// signals (the signals close once the session here wrote all the
    /// input it had); then this path ends with `PathEnd`.
    async fn pass_on(mut self, buf: &mut [u8]) {
        let mut user_eof = false;
        while self.stdin.is_some() || self.signals.is_some() {
            if self.signals.is_none() {
                if let Some(tty) = self.drain.take() {
                    // a terminal: all the session wrote is there now
                    self.stdin = None;
                    drain_terminal(&tty, buf, &self.input).await;
                    continue;
                }
            }
            let (sent, acked) = self.window;
            let room = sent.saturating_sub(acked) < STDIN_WINDOW;
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(Down::StdinAck { bytes, .. }) => self.window.1 = bytes,
                    Some(_) => {}
                    None => {
                        tracing::debug!("a relay's target went before its path ended");
                        return;
                    }
                },
                n = read_some(&mut self.stdin, buf), if self.stdin.is_some() && room => match n {
                    Some(n) => {
                        self.window.0 += n as u64;
                        if self.input.send(Up::Stdin(buf[..n].to_vec().into())).await.is_err() {
                            return;
                        }
                    }
                    // closed here: by the carrier's last word, or by its
                    // user's end of input (which signal 0 says)
                    None => self.stdin = None,
                },
                sig = recv(&mut self.signals), if self.signals.is_some() => match sig {
                    Some(0) => user_eof = true,
                    Some(sig) => {
                        tracing::debug!(sig, "a relay passes a signal on after the rejoin");
                        let _ = self.input.send(Up::Signal(sig)).await;
                    }
                    None => self.signals = None,
                },
                ws = recv(&mut self.resize), if self.resize.is_some() => match ws {
                    Some(ws) => {
                        let _ = self.input.send(Up::WinSize(ws)).await;
                    }
                    None => self.resize = None,
                },
            }
        }
        if user_eof {
            let _ = self.input.send(Up::StdinEof).await;
        }
        tracing::debug!(
            sent = self.window.0,
            "a relay passed on all it had: its path ends"
        );
        let _ = self.input.send(Up::PathEnd { job: 0 }).await;
    }
}

/// Pass on to `input` what `tty` holds now, without waiting (a read of a
/// terminal with nothing to give first pushes what was written into it
/// through the line discipline: EAGAIN then means all of it).
async fn drain_terminal(tty: &OwnedFd, buf: &mut [u8], input: &mpsc::Sender<Up>) {
    // (non-blocking: its TtyEnd made it so)
    while let Ok(n @ 1..) = super::super::pty::read_fd(tty, buf) {
        let data = buf[..n].to_vec().into();
        if input.send(Up::Stdin(data)).await.is_err() {
            return;
        }
    }
}

async fn recv<T>(from: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    from.as_mut()?.recv().await
}

/// Read what the session wrote into the job's stdin; None at its end.
async fn read_some(from: &mut Option<Source>, buf: &mut [u8]) -> Option<usize> {
    let r = from.as_mut()?;
    match r.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}
