//! A session's jobs on this node: start `count` copies of a spec, carry
//! their stdio, deliver signals and window sizes, report their ends.
//!
//! Whoever holds a [`Session`] drives it: [`Up`] frames in, [`Down`]
//! events out (jobs numbered 0..count). Dropping the input ends the
//! session: every job not detached is killed (SIGKILL of its init, which
//! takes its whole PID namespace), so nothing keeps running unobserved.
//! The events channel closes after the last job's end.
//!
//! `input` applies the input frames to the jobs; `pumps` carry each
//! job's pipes or terminal to and from the frames.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::proc::{Credentials, Down, ExitStatus, JobCaps, JobSpec, Program, Up};
use krg_proto::NodeId;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::fdio::pipe_inode;
use super::heldio::{HeldStdio, StdinCtl};
use super::job::{self, ExitWatch, Io, StartedJob};
use super::pty::Pty;
use super::spawn::pidfd_signal;
use super::state::ProcState;
use super::table::{JobEntry, MovedEnd};

mod input;
mod pumps;
use input::apply;
use pumps::{pump_in, pump_out, pump_pty, push_stdin, Sink};

/// Largest executable image a session takes (`krg run --push`, XCPU exec).
pub const MAX_IMAGE: u64 = 1 << 30;
/// Events buffered towards the session's reader before jobs wait.
const EVENT_QUEUE: usize = 64;
/// Input frames buffered towards the session.
const INPUT_QUEUE: usize = 256;

/// The two ends of a running session.
pub struct Session {
    /// Number of jobs (events are numbered 0..jobs).
    pub jobs: u32,
    /// Input towards the jobs; dropping it ends the session.
    pub input: mpsc::Sender<Up>,
    /// Events from the jobs; closed after the last job ended.
    pub events: mpsc::Receiver<Down>,
}

/// What a session runs and for whom.
pub struct Params {
    /// What.
    pub spec: JobSpec,
    /// As whom (already checked against this node's rules).
    pub creds: Credentials,
    /// How many copies.
    pub count: u32,
    /// The node whose user asked.
    pub origin: NodeId,
    /// What the jobs' programs get (CAN_MIGRATE, CHECKPOINTABLE).
    pub caps: JobCaps,
}

/// Start a session on this node.
pub fn spawn(st: Arc<ProcState>, p: Params) -> Session {
    let (in_tx, in_rx) = mpsc::channel(INPUT_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let jobs = p.count;
    tokio::spawn(run(st, p, in_rx, ev_tx));
    Session {
        jobs,
        input: in_tx,
        events: ev_rx,
    }
}

/// The session's hold on one of its jobs.
struct Ctl {
    entry: Arc<JobEntry>,
    stdin: Option<mpsc::UnboundedSender<Bytes>>,
    queued: Arc<AtomicU64>,
    close_stdout: Option<oneshot::Sender<()>>,
    pty: Option<Arc<Pty>>,
    /// The task writing its stdin.
    stdin_pump: Option<tokio::task::JoinHandle<()>>,
    /// Set once the job moved on and its carrier was told to join it
    /// where it runs (`Down::Rejoin`).
    rejoined: Arc<std::sync::atomic::AtomicBool>,
    /// Told then when the carrier sent its last word (`Up::PathEnd`).
    path_end: Option<oneshot::Sender<()>>,
}

async fn run(
    st: Arc<ProcState>,
    p: Params,
    mut input: mpsc::Receiver<Up>,
    events: mpsc::Sender<Down>,
) {
    let node = st.node();
    let image = match receive_image(&p.spec, &mut input).await {
        Ok(i) => i,
        Err(error) => {
            for job in 0..p.count {
                let _ = events
                    .send(Down::Refused {
                        job,
                        node,
                        error: error.clone(),
                    })
                    .await;
            }
            return;
        }
    };
    let mut ctls: Vec<Option<Ctl>> = Vec::new();
    let mut running = JoinSet::new();
    // a session that another node carries: it joins a job that moves on
    // where the job runs next (see `splice`)
    let carrier = (p.origin != node).then_some(p.origin);
    for job in 0..p.count {
        match job::start(&st, &p.spec, &p.creds, image.as_ref(), p.origin).await {
            Ok(started) => {
                flag_caps(&st, &started, p.caps);
                let ctl = launch(&st, job, started, carrier, &events, &mut running, None).await;
                ctls.push(ctl);
            }
            Err(error) => {
                let _ = events.send(Down::Refused { job, node, error }).await;
                ctls.push(None);
            }
        }
    }
    drop(image);
    drive(st, ctls, running, input, events).await;
}

/// Give a job's program the capabilities its user's `krg run` held (its
/// descendants inherit them).
fn flag_caps(st: &ProcState, started: &StartedJob, caps: JobCaps) {
    if !caps.can_migrate && !caps.checkpointable {
        return;
    }
    let program: Vec<i32> = super::procfs::scan(std::slice::from_ref(&started.entry))
        .iter()
        .filter(|f| f.pid == started.entry.pid)
        .map(|f| f.host_pid)
        .collect();
    st.caps
        .grant(&program, caps.can_migrate, caps.checkpointable);
}

/// Start a session of one job that is already running (a job that
/// migrated in: see `migrate::adopt`); `carrier`: the node whose krgd
/// will carry it, if not this one.
pub fn spawn_started(st: Arc<ProcState>, started: StartedJob, carrier: Option<NodeId>) -> Session {
    spawn_started_with_input(st, started, carrier, None)
}

/// [`spawn_started`], its stdin given `first_input` before anything its
/// session sends (a restarted part's unread input, see `heldio`).
pub fn spawn_started_with_input(
    st: Arc<ProcState>,
    started: StartedJob,
    carrier: Option<NodeId>,
    first_input: Option<Bytes>,
) -> Session {
    let (in_tx, in_rx) = mpsc::channel(INPUT_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(async move {
        let mut running = JoinSet::new();
        let ev = &ev_tx;
        let ctl = launch(&st, 0, started, carrier, ev, &mut running, first_input).await;
        drive(st, vec![ctl], running, in_rx, ev_tx).await;
    });
    Session {
        jobs: 1,
        input: in_tx,
        events: ev_rx,
    }
}

/// Carry input to the jobs and their ends out until the last one ended
/// (or the input is dropped: then the jobs are killed).
async fn drive(
    st: Arc<ProcState>,
    mut ctls: Vec<Option<Ctl>>,
    mut running: JoinSet<u32>,
    mut input: mpsc::Receiver<Up>,
    events: mpsc::Sender<Down>,
) {
    let node = st.node();
    let mut stopping = st.stopping.subscribe();
    let mut told = false;
    loop {
        tokio::select! {
            _ = stopping.wait_for(|s| *s), if !told => {
                told = true;
                let note = format!("krg: node {node}: krgd is stopping; the job gets SIGTERM\n").into_bytes();
                for (job, ctl) in ctls.iter().enumerate() {
                    if let Some(ctl) = ctl {
                        let _ = events.try_send(Down::Stderr { job: job as u32, data: note.clone() });
                        signal_job(&ctl.entry, libc::SIGTERM);
                    }
                }
            }
            up = input.recv() => match up {
                Some(Up::OutputWritten { mark }) => st.held.output_marks.written(mark),
                Some(up) => {
                    if let Err(why) = apply(up, &mut ctls) {
                        tracing::warn!(node, why, "ending a session after bad input");
                        break;
                    }
                }
                None => break,
            },
            done = running.join_next() => match done {
                Some(Ok(job)) => {
                    if let Some(slot) = ctls.get_mut(job as usize) {
                        *slot = None;
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "a job task failed"),
                None => return,
            },
        }
    }
    // Abandoned (or misbehaving) session: its jobs go with it — but a
    // detached job that moved here, which runs on, its output read as
    // before (see `detach::carry_on`): its control is kept until it ends
    // (dropping it would close its stdout).
    let (kept, gone): (Vec<Ctl>, Vec<Ctl>) =
        ctls.into_iter().flatten().partition(|c| c.entry.detached);
    for ctl in &gone {
        tracing::debug!(
            node,
            pid = ctl.entry.pid,
            relayed = ctl.entry.moved_signals().is_some(),
            "a session's input ended: its job is killed"
        );
        signal_job(&ctl.entry, libc::SIGKILL);
    }
    if kept.is_empty() {
        running.detach_all();
        return;
    }
    while running.join_next().await.is_some() {}
    drop(kept);
}

/// Collect the executable image a spec announces, before anything starts.
async fn receive_image(
    spec: &JobSpec,
    input: &mut mpsc::Receiver<Up>,
) -> Result<Option<OwnedFd>, AdminError> {
    let Program::Image { name, len } = &spec.program else {
        return Ok(None);
    };
    if *len > MAX_IMAGE {
        return Err(AdminError::new(
            ErrorKind::InvalidArgument,
            format!("the executable is {len} bytes; at most {MAX_IMAGE} can be shipped"),
        ));
    }
    let mut image = Vec::with_capacity(*len as usize);
    while (image.len() as u64) < *len {
        match input.recv().await {
            Some(Up::Image(chunk)) if image.len() as u64 + chunk.len() as u64 <= *len => {
                image.extend_from_slice(&chunk)
            }
            Some(Up::Image(_)) => {
                return Err(AdminError::new(
                    ErrorKind::InvalidArgument,
                    "more image bytes than announced",
                ))
            }
            Some(_) | None => {
                return Err(AdminError::new(
                    ErrorKind::InvalidArgument,
                    "the executable image ended early",
                ))
            }
        }
    }
    job::image_memfd(name, &image).map(Some).map_err(|e| {
        AdminError::new(
            ErrorKind::Internal,
            format!("cannot hold the executable image: {e}"),
        )
    })
}

/// A signal for a whole job: SIGKILL ends its namespace; SIGSTOP goes to
/// the program itself ([`stop_program`]); the rest the init forwards to
/// the program's process group.
pub fn signal_job(entry: &JobEntry, sig: i32) {
    if !(1..=64).contains(&sig) {
        return;
    }
    if let Some(relay) = entry.moved_signals() {
        let _ = relay.send(sig);
        return;
    }
    if sig == libc::SIGSTOP {
        stop_program(entry);
        return;
    }
    let _ = pidfd_signal(&entry.init_pidfd, sig);
}

/// SIGSTOP to a job goes to its program itself: the init passes signals
/// on through its handlers, and no handler may take SIGSTOP (sent to the
/// init, root's, it would stop the init instead). A stand-in whose
/// process moved here is stopped (see `migrate::standin`): so is the
/// process.
fn stop_program(entry: &JobEntry) {
    let Some(host) = super::procfs::program_host_pid(entry) else {
        return;
    };
    let Ok(pidfd) = super::spawn::pidfd_open(host) else {
        return;
    };
    // the PID may have been reused between the look and the pidfd: the
    // process the pidfd names must still be the program, in the job
    let same = super::procfs::pid_ns_inode(host) == Some(entry.ns_ino)
        && super::procfs::ns_pid(host) == Some(entry.pid);
    if same {
        let _ = pidfd_signal(&pidfd, libc::SIGSTOP);
    }
}

/// Start the tasks of a job that runs; its control for the session.
async fn launch(
    st: &Arc<ProcState>,
    job: u32,
    started: StartedJob,
    carrier: Option<NodeId>,
    events: &mpsc::Sender<Down>,
    running: &mut JoinSet<u32>,
    mut first_input: Option<Bytes>,
) -> Option<Ctl> {
    let node = st.node();
    let StartedJob { entry, io, exit } = started;
    let pid = entry.pid;
    *crate::sync::lock(&entry.carrier) = carrier;
    if let Io::Detached(output) = io {
        let _ = events
            .send(Down::Detached {
                job,
                node,
                pid,
                output: output.dir.display().to_string(),
            })
            .await;
        tokio::spawn(detached_end(st.clone(), entry, exit));
        return None;
    }
    let _ = events.send(Down::Started { job, node, pid }).await;
    let queued = Arc::new(AtomicU64::new(0));
    let (close_tx, close_rx) = oneshot::channel();
    let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
    let (stdin_ctl, stdin_ctl_rx) = mpsc::unbounded_channel();
    let mut readers = JoinSet::new();
    let mut pty_handle = None;
    let mut has_stdin = false;
    let mut stdin_pump = None;
    // (a terminal's reader is told when the job's last output is in it)
    let mut flush = None;
    match io {
        Io::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let (out_flush, out_asked) = mpsc::unbounded_channel();
            let (err_flush, err_asked) = mpsc::unbounded_channel();
            let close = Some(close_rx);
            readers.spawn(pump_out(
                job,
                stdout,
                events.clone(),
                close,
                true,
                out_asked,
            ));
            readers.spawn(pump_out(
                job,
                stderr,
                events.clone(),
                None,
                false,
                err_asked,
            ));
            let mut held_stdin = None;
            match stdin {
                Some(job::Stdin::Pipe(w)) => {
                    has_stdin = true;
                    held_stdin = pipe_inode(&w).map(|ino| (stdin_ctl.clone(), ino));
                    if let Some(first) = first_input.take() {
                        let _ = stdin_ctl.send(StdinCtl::Refill(first));
                    }
                    stdin_pump = Some(tokio::spawn(pump_in(
                        job,
                        Sink::Pipe(w),
                        stdin_rx,
                        stdin_ctl_rx,
                        queued.clone(),
                        events.clone(),
                    )));
                }
                Some(job::Stdin::PushSocket(sock)) => {
                    has_stdin = push_stdin(job, sock, &entry, stdin_rx, &queued, events);
                }
                None => {}
            }
            let pumps = vec![out_flush, err_flush];
            let held = HeldStdio::new(job, pumps, held_stdin, events);
            *crate::sync::lock(&entry.held_stdio) = Some(Arc::new(held));
        }
        Io::Pty(pty) => {
            let (flush_tx, flush_rx) = oneshot::channel();
            flush = Some(flush_tx);
            readers.spawn(pump_pty(
                job,
                pty.clone(),
                events.clone(),
                close_rx,
                flush_rx,
            ));
            has_stdin = true;
            stdin_pump = Some(tokio::spawn(pump_in(
                job,
                Sink::Pty(pty.clone()),
                stdin_rx,
                stdin_ctl_rx,
                queued.clone(),
                events.clone(),
            )));
            pty_handle = Some(pty);
            // (its output is sent as it comes: the mark follows what the
            // pump read so far; what was typed stays with the terminal)
            let held = HeldStdio::new(job, Vec::new(), None, events);
            *crate::sync::lock(&entry.held_stdio) = Some(Arc::new(held));
        }
        Io::Detached(_) => {}
    }
    let st2 = st.clone();
    let ev = events.clone();
    let entry2 = entry.clone();
    let (path_end_tx, path_end) = oneshot::channel();
    let rejoined = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let told = rejoined.clone();
    running.spawn(async move {
        let end = job_end(exit, &entry2).await;
        if let (MovedEnd::Rejoin { .. }, Some(flush)) = (&end, flush) {
            // the relay wrote its last output: a terminal does not end
            let _ = flush.send(());
        }
        // Output first: the end of a job comes after all it wrote.
        while readers.join_next().await.is_some() {}
        st2.table.remove(entry2.id);
        match end {
            MovedEnd::Exited(status) => {
                let _ = ev.send(Down::Exited { job, status }).await;
            }
            MovedEnd::Rejoin { node, token } => {
                // its session goes on there; here it ends once what its
                // carrier sent before the rejoin went on (Up::PathEnd)
                told.store(true, Ordering::SeqCst);
                let _ = ev.send(Down::Rejoin { job, node, token }).await;
                let _ = path_end.await;
            }
        }
        job
    });
    Some(Ctl {
        entry,
        stdin: has_stdin.then_some(stdin_tx),
        queued,
        close_stdout: Some(close_tx),
        pty: pty_handle,
        stdin_pump,
        rejoined,
        path_end: Some(path_end_tx),
    })
}

const KILLED: ExitStatus = ExitStatus::Signal {
    signal: libc::SIGKILL,
    core: false,
};

/// How a job ended. For a job that moved, the local init saw its copy
/// killed: the end that counts comes from the node that runs it now.
async fn job_end(exit: ExitWatch, entry: &JobEntry) -> MovedEnd {
    let status = exit.wait().await;
    match entry.take_moved_exit() {
        Some(there) => there.await.unwrap_or(MovedEnd::Exited(KILLED)),
        None => MovedEnd::Exited(status),
    }
}

/// Wait for a detached job's end (from the node that runs it now, if it
/// moved: the relay has written its output into the files by then) and
/// record it in its `status` file.
async fn detached_end(st: Arc<ProcState>, entry: Arc<JobEntry>, exit: ExitWatch) {
    // (a detached job has no carrier: it is never joined elsewhere)
    let status = match job_end(exit, &entry).await {
        MovedEnd::Exited(status) => status,
        MovedEnd::Rejoin { .. } => KILLED,
    };
    if let Some(out) = &entry.output {
        let creds = Credentials {
            uid: entry.uid,
            gid: entry.gid,
            groups: vec![],
        };
        if let Err(e) = super::detach::write_status(&out.dir, &creds, status) {
            tracing::warn!(dir = %out.dir.display(), error = %e, "cannot record a detached job's status");
        }
    }
    st.table.remove(entry.id);
}
