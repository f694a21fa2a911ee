//! `krg run` and the session every run-like command drives: ask the local
//! krgd to start the jobs, then carry their stdio, forward signals, and
//! leave with the jobs' exit status (or 128 + the signal that ended them).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use krg_proto::admin::{AdminRequest, AdminResponse, ErrorKind};
use krg_proto::frame::{read_frame, write_frame};
use krg_proto::proc::{Down, Placement, ProcReply, ProcRequest, RunRequest, Up, MAX_CHUNK};
use krg_proto::{NodeId, ProtoError};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::output::{self, End, Event, Labels, Sink};
use crate::{signals, spec, stdin, term, RunArgs};

/// How long a mark's answer waits for the stdin reader to stop: a reader
/// that does not look for input before it reads (not a stand-in's) may
/// be blocked in a read, and is left there.
const PAUSE_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A run krgd accepted: the node of each job, and the session stream.
pub struct Opened {
    /// Node of each job.
    pub jobs: Vec<NodeId>,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
}

/// Connect to krgd and start `req`.
pub async fn open(socket: &Path, req: RunRequest) -> Result<Opened> {
    open_session(socket, ProcRequest::Run(req)).await
}

/// Connect to krgd and send `req`, which krgd answers with a session.
pub async fn open_session(socket: &Path, req: ProcRequest) -> Result<Opened> {
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|err| ProtoError::AdminSocket {
            path: socket.to_path_buf(),
            err,
        })?;
    write_frame(&mut stream, &AdminRequest::Proc(req)).await?;
    let answer: AdminResponse = read_frame(&mut stream)
        .await
        .context("krgd did not answer")?;
    let jobs = match answer {
        AdminResponse::Proc(ProcReply::Session { jobs }) => jobs,
        AdminResponse::Error(e) => return Err(anyhow!(e.message)),
        other => return Err(anyhow!("unexpected answer from krgd: {other:?}")),
    };
    let (rd, wr) = stream.into_split();
    Ok(Opened { jobs, rd, wr })
}

/// How a session is driven.
pub struct Plan {
    /// Executable image to send first (`--push`).
    pub image: Option<Vec<u8>>,
    /// Input for the jobs' stdin.
    pub input: Option<Box<dyn Read + Send>>,
    /// Waits for that input before each read (a stand-in's, which stops
    /// reading while its part is held: see [`stdin::Credit::pause`]).
    pub input_ready: Option<stdin::Ready>,
    /// Where output goes.
    pub sink: Box<dyn Sink>,
    /// The jobs run on terminals: raw mode here, window sizes forwarded.
    pub tty: bool,
    /// Forward these signals of this process to the jobs.
    pub signals: Option<signals::Listening>,
}

/// The shell status of a job's end.
pub fn code_of(end: &End) -> u8 {
    match end {
        End::Exited(s) => s.shell_code().clamp(0, 255) as u8,
        End::Refused(e) => match e.kind {
            ErrorKind::NotFound => 127,
            ErrorKind::PermissionDenied => 126,
            _ => 255,
        },
        End::Lost(_) => 255,
        End::Detached { .. } => 0,
    }
}

fn end_of(d: Down) -> Option<End> {
    Some(match d {
        Down::Exited { status, .. } => End::Exited(status),
        Down::Refused { error, .. } => End::Refused(error),
        Down::Lost { reason, .. } => End::Lost(reason),
        Down::Detached { pid, output, .. } => End::Detached { pid, output },
        _ => return None,
    })
}

/// Drive an opened session to its end; how each job ended.
pub async fn drive(opened: Opened, plan: Plan) -> Result<Vec<End>> {
    let Opened {
        jobs,
        mut rd,
        mut wr,
    } = opened;
    let (tx, mut rx) = mpsc::unbounded_channel::<Up>();
    let writer = tokio::spawn(async move {
        while let Some(up) = rx.recv().await {
            if write_frame(&mut wr, &up).await.is_err() {
                return;
            }
        }
    });
    if let Some(image) = &plan.image {
        for chunk in image.chunks(MAX_CHUNK) {
            let _ = tx.send(Up::Image(chunk.to_vec().into()));
        }
    }
    let credit = stdin::Credit::new(jobs.len());
    if let Some(input) = plan.input {
        stdin::spawn(input, plan.input_ready, credit.clone(), tx.clone());
    }
    if let Some(listening) = plan.signals {
        signals::spawn(listening, tx.clone(), plan.tty);
    }
    if plan.tty {
        term::raw();
    }
    let (out, mut closed, printer) = output::spawn(plan.sink);
    // Reading a frame is not cancel-safe: a frame half read when the select
    // below picks the other branch would be lost and the stream would no
    // longer start at a frame. So one task reads whole frames.
    let (frames_tx, mut frames) = mpsc::channel::<Result<Down, ProtoError>>(16);
    let reader = tokio::spawn(async move {
        loop {
            let frame = read_frame::<Down, _>(&mut rd).await;
            let end = frame.is_err();
            if frames_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    let mut ends: Vec<Option<End>> = vec![None; jobs.len()];
    let mut left = jobs.len();
    while left > 0 {
        let frame = tokio::select! {
            f = frames.recv() => f.unwrap_or(Err(ProtoError::Closed)),
            Some(()) = closed.recv() => {
                let _ = tx.send(Up::CloseStdout);
                continue;
            }
        };
        let d = match frame {
            Ok(d) => d,
            Err(e) => {
                let why = match e {
                    ProtoError::Closed => "krgd closed the session (did it stop?)".to_string(),
                    e => format!("lost krgd: {e}"),
                };
                for (job, end) in ends.iter_mut().enumerate() {
                    if end.is_none() {
                        let lost = End::Lost(why.clone());
                        let _ = out.send(Event::End(job as u32, lost.clone())).await;
                        *end = Some(lost);
                    }
                }
                break;
            }
        };
        let job = d.job();
        let Some(slot) = ends.get_mut(job as usize) else {
            continue;
        };
        match d {
            Down::Stdout { data, .. } => {
                let _ = out.send(Event::Out(job, data)).await;
            }
            Down::Stderr { data, .. } => {
                let _ = out.send(Event::Err(job, data)).await;
            }
            Down::StdinAck { bytes, .. } => credit.ack(job, bytes),
            Down::OutputMark { mark, .. } => answer_mark(&out, &tx, &credit, mark).await,
            Down::InputResume { .. } => credit.resume(),
            Down::Started { .. } => {}
            d => {
                if let (Some(end), None) = (end_of(d), slot.as_ref()) {
                    credit.ended(job);
                    let _ = out.send(Event::End(job, end.clone())).await;
                    *slot = Some(end);
                    left -= 1;
                }
            }
        }
    }
    credit.stop();
    drop(out);
    let _ = tokio::task::spawn_blocking(move || printer.join()).await;
    term::restore();
    writer.abort();
    reader.abort();
    Ok(ends.into_iter().flatten().collect())
}

/// Once everything that came before mark `mark` is written out, and
/// stdin is no longer read (until `Down::InputResume`), say so: a
/// stand-in's part held for its checkpoint waits for it (see
/// `krg_proto::proc`, *Output marks*).
async fn answer_mark(
    out: &mpsc::Sender<Event>,
    up: &mpsc::UnboundedSender<Up>,
    credit: &Arc<stdin::Credit>,
    mark: u64,
) {
    let (told, written) = tokio::sync::oneshot::channel();
    if out.send(Event::Written(told)).await.is_err() {
        return;
    }
    let (up, credit) = (up.clone(), credit.clone());
    tokio::spawn(async move {
        let paused = tokio::task::spawn_blocking(move || credit.pause(PAUSE_LIMIT));
        if paused.await.is_ok() && written.await.is_ok() {
            let _ = up.send(Up::OutputWritten { mark });
        }
    });
}

/// `krg run`.
pub async fn run_command(socket: &Path, a: RunArgs) -> Result<u8> {
    let many = a.nodes.many()? || a.per_node > 1;
    let default_size = krg_proto::proc::WinSize {
        rows: 24,
        cols: 80,
        xpixel: 0,
        ypixel: 0,
    };
    let tty = if a.tty || !(a.no_tty || a.detach || a.gather || many || !term::interactive()) {
        Some(term::window_size().unwrap_or(default_size))
    } else {
        None
    };
    // As ssh, one job reads the terminal; as clush, many jobs do not.
    let forward_stdin = !a.no_stdin && !a.detach && (!many || !term::stdin_is_tty());
    let mut job = spec::job(&a.command, tty, a.detach, forward_stdin)?;
    let mut image = None;
    if a.push {
        let (j, i) = spec::pushed(job)?;
        job = j;
        image = Some(i);
    }
    let req = RunRequest {
        spec: job,
        placement: a.nodes.placement(Placement::Auto)?,
        per_node: a.per_node,
    };
    let opened = open(socket, req).await?;
    let labels = Labels {
        nodes: opened.jobs.clone(),
        per_node: a.per_node,
    };
    let sink: Box<dyn Sink> = if a.gather {
        Box::new(output::Gathered::new(labels))
    } else if many {
        Box::new(output::Prefixed::new(labels))
    } else {
        Box::new(output::Plain { labels })
    };
    let input: Option<Box<dyn Read + Send>> =
        forward_stdin.then(|| Box::new(std::io::stdin()) as Box<dyn Read + Send>);
    let plan = Plan {
        image,
        input,
        input_ready: None,
        sink,
        tty: tty.is_some(),
        signals: Some(signals::job()),
    };
    let ends = drive(opened, plan).await?;
    Ok(ends.iter().map(code_of).max().unwrap_or(0))
}
