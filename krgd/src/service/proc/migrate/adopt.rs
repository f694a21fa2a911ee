//! The target's side of moving a `krg run` job: a new init in a new PID
//! namespace (it starts nothing: [`InitProgram::Adopt`]), `restart` into
//! that namespace with the job's own PIDs and new stdio pipes, then the
//! job is this node's like any other (table, `krg ps`, `krg kill`,
//! balancing) and its session stream goes back to the origin, whose
//! session relays it to the job's user (see [`super::relay`]).
//!
//! The same code takes a job back on the origin when the target fails
//! after the handover.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::auth::Identity;
use krg_proto::migrate::{AdoptJob, JobTerminal};
use krg_proto::proc::{ProcPeerReply, SESSION_VERSION};
use krg_proto::seal::FrameKeys;
use krg_proto::NodeId;
use tokio::net::unix::pipe;
use tokio::net::TcpStream;

use super::super::detach;
use super::super::fdio::{dev_null, pipe_pair};
use super::super::initspec::{InitProgram, InitSpec};
use super::super::job::{self, EntryFacts, Io, StartedJob, Stdin};
use super::super::pty;
use super::super::serve;
use super::super::session::{self, Session};
use super::super::state::ProcState;
use super::restore::{self, IntoJob, Lazy};
use super::{fence, incoming, pulling, Clock};

fn internal(node: NodeId, what: impl std::fmt::Display) -> AdminError {
    AdminError::new(ErrorKind::Internal, format!("node {node}: {what}"))
}

/// A job's image to bring back to life here.
pub struct JobImage<'a> {
    /// Directory of the image (the checkpoint store's layout).
    pub root: &'a Path,
    /// Application id and SN.
    pub app: i32,
    /// SN.
    pub sn: u32,
    /// The program's PID in the job's namespace.
    pub pid: i32,
    /// (PID at dump time, PID in the job's namespace) for every task and thread.
    pub map: Vec<(i32, i32)>,
    /// Owner and primary group.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Node whose user started the job.
    pub origin: NodeId,
    /// The terminal it ran on, if it did: it gets a new one like it.
    pub terminal: Option<JobTerminal>,
    /// Its processes (PIDs of the image) that held CHECKPOINTABLE.
    pub checkpointable: Vec<i32>,
    /// Started with `--detach`: it outlives the node that started it.
    pub detached: bool,
    /// Its output goes to files of this node (a detached job's checkpoint
    /// restarted here), not to a session.
    pub output_here: bool,
    /// On a migration's target, its transfer: the job runs only once the
    /// cluster placed that transfer here ([`fence`](super::fence)).
    pub fence: Option<u64>,
}

/// The job's new stdio: restart's fds 0-2 (which become the job's), and
/// this node's ends of them.
fn new_stdio(node: NodeId, img: &JobImage<'_>) -> Result<([OwnedFd; 3], Io), AdminError> {
    if let Some(t) = &img.terminal {
        let (pty, slave) = pty::open(t.winsize, img.uid)
            .map_err(|e| internal(node, format!("a terminal for the job: {e}")))?;
        pty::set_settings(&slave, &t.settings)
            .map_err(|e| internal(node, format!("the job's terminal settings: {e}")))?;
        let dup = || {
            slave
                .try_clone()
                .map_err(|e| internal(node, format!("dup: {e}")))
        };
        let (a, b) = (dup()?, dup()?);
        return Ok(([slave, a, b], Io::Pty(Arc::new(pty))));
    }
    let pipes = || pipe_pair().map_err(|e| internal(node, format!("pipe: {e}")));
    let (in_r, in_w) = pipes()?;
    let (out_r, out_w) = pipes()?;
    let (err_r, err_w) = pipes()?;
    let io = Io::Pipes {
        stdin: Some(Stdin::Pipe(
            pipe::Sender::from_owned_fd(in_w).map_err(|e| internal(node, e))?,
        )),
        stdout: pipe::Receiver::from_owned_fd(out_r).map_err(|e| internal(node, e))?,
        stderr: pipe::Receiver::from_owned_fd(err_r).map_err(|e| internal(node, e))?,
    };
    Ok(([in_r, out_w, err_w], io))
}

/// Restore a job here, in a namespace of its own: the running job, its
/// stdio pipes and its end to watch; restart's phases go to `clock`.
pub async fn start(
    st: &Arc<ProcState>,
    img: JobImage<'_>,
    clock: &mut Clock,
    lazy: Lazy,
) -> Result<StartedJob, AdminError> {
    let node = st.node();
    let reservation = st.table.reserve_for(img.pid)?;
    let (stdio, io) = if img.output_here {
        let creds = krg_proto::proc::Credentials::of(img.uid, img.gid);
        job::detached_stdio(st, &creds, img.pid, reservation.id)
            .map_err(|e| internal(node, format!("the job's output files: {e}")))?
    } else {
        new_stdio(node, &img)?
    };
    // the job's own numbers of its CHECKPOINTABLE processes
    let checkpointable: Vec<i32> = img
        .map
        .iter()
        .filter(|(image, _)| img.checkpointable.contains(image))
        .map(|&(_, inner)| inner)
        .collect();
    let null = || dev_null().map_err(|e| internal(node, format!("/dev/null: {e}")));
    let spec = InitSpec {
        pid: img.pid,
        uid: img.uid,
        gid: img.gid,
        groups: Vec::new(),
        cwd: b"/".to_vec(),
        argv: Vec::new(),
        env: Vec::new(),
        program: InitProgram::Adopt,
        tty: false,
    };
    let (init, status) = job::start_init(st, [null()?, null()?, null()?], None, &spec)
        .await?
        .map_err(|(stage, errno)| {
            let e = std::io::Error::from_raw_os_error(errno);
            internal(node, format!("the job's init failed ({stage:?}): {e}"))
        })?;
    let into = IntoJob {
        init: init.pid,
        map: img.map,
        stdio,
        ctty_fg: img.terminal.as_ref().map(|t| t.fg_pgid),
    };
    let gate = img
        .fence
        .map(|xfer| fence::runs_here(st.clone(), xfer, img.origin));
    let server = match restore::restore_into(img.root, img.app, img.sn, into, lazy, gate).await {
        Ok((phases, server)) => {
            clock.mark("target.restart");
            clock.extend("target.restart.", &phases);
            server
        }
        Err(e) => {
            let _ = super::super::spawn::pidfd_signal(&init.pidfd, libc::SIGKILL);
            job::reap_later(init);
            return Err(internal(node, e));
        }
    };
    let tty = match &io {
        Io::Pty(pty) => Some(pty.clone()),
        _ => None,
    };
    let output = match &io {
        Io::Detached(out) => Some(out.clone()),
        _ => None,
    };
    let facts = EntryFacts {
        pid: img.pid,
        uid: img.uid,
        gid: img.gid,
        detached: img.detached,
        output,
        tty,
        origin: img.origin,
    };
    let (entry, exit) = job::enter(st, reservation, init, status, facts)?;
    // They held CAN_MIGRATE (only such jobs move): so they do here, and
    // CHECKPOINTABLE those that did.
    let found = super::super::procfs::scan(std::slice::from_ref(&entry));
    let host: Vec<i32> = found.iter().map(|f| f.host_pid).collect();
    let host_checkpointable: Vec<i32> = found
        .iter()
        .filter(|f| checkpointable.contains(&f.pid))
        .map(|f| f.host_pid)
        .collect();
    st.caps.adopt(&host, &host_checkpointable);
    if let Some(server) = server {
        super::filling(st, server, &host);
    }
    super::arrived_job(st, entry.id);
    Ok(StartedJob { entry, io, exit })
}

/// Restore transfer `open.xfer` of `peer` as a job, then carry its session
/// stream on `stream` (the origin relays it to the job's user).
pub async fn serve(
    st: Arc<ProcState>,
    mut stream: TcpStream,
    mut keys: FrameKeys,
    peer: Identity,
    open: AdoptJob,
) {
    let started = adopt_from(&st, &peer, &open).await;
    let mut outlives = None;
    let (sess, phases): (Session, _) = match started {
        Ok((job, phases)) => {
            if job.entry.detached {
                outlives = Some(detach::Outlives {
                    name: detach::dir_name(job.entry.pid, job.entry.id),
                    creds: krg_proto::proc::Credentials::of(job.entry.uid, job.entry.gid),
                });
            }
            (
                session::spawn_started(st.clone(), job, Some(peer.node)),
                phases,
            )
        }
        Err(e) => {
            tracing::warn!(from = peer.node, error = %e.message, "could not take a job over");
            serve::answer_error(&mut stream, &mut keys.sealer, e).await;
            return;
        }
    };
    tracing::info!(
        from = peer.node,
        pid = open.pid,
        "took a job over (a krg run job, or a process that left a stand-in)"
    );
    serve::carry(
        st,
        stream,
        keys,
        peer,
        sess,
        ProcPeerReply::Adopted { phases },
        outlives,
    )
    .await;
}

/// The job started, and the phases it took.
async fn adopt_from(
    st: &Arc<ProcState>,
    peer: &Identity,
    open: &AdoptJob,
) -> Result<(StartedJob, Vec<krg_proto::migrate::PhaseTime>), AdminError> {
    let origin = serve::origin_of(st, peer).await;
    let from = incoming::member(origin)?;
    if open.version != SESSION_VERSION {
        return Err(AdminError::new(
            ErrorKind::InvalidArgument,
            format!(
                "node {} speaks session version {SESSION_VERSION}, node {from} sent {}",
                st.node(),
                open.version
            ),
        ));
    }
    let mut x = incoming::take_complete(st, from, open.xfer)?;
    kdfs::store::crash::point("krgd-adopt-job");
    // post-copy: restored lazily, the memory pulled from the origin
    let (pulling, fetch) = match pulling::begin(st, from, open.xfer, x.pulling.take()) {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&x.root);
            return Err(internal(st.node(), e));
        }
    };
    // Lazily either way: the process runs before its private memory is
    // in (a page server fills it from the received image, or pulls it
    // from the origin after a post-copy handover), so that the restore
    // does not grow with the memory size.
    let lazy = Lazy::Yes(fetch);
    let mut clock = Clock::new();
    let img = JobImage {
        root: &x.root,
        app: x.app,
        sn: x.sn,
        pid: open.pid,
        map: open.map.clone(),
        uid: x.owner,
        gid: x.gid,
        origin: from,
        terminal: open.terminal.clone(),
        checkpointable: open.checkpointable.clone(),
        detached: open.detached,
        output_here: false,
        fence: Some(open.xfer),
    };
    let r = start(st, img, &mut clock, lazy).await;
    pulling::settle(pulling.as_ref(), r.is_ok());
    let _ = std::fs::remove_dir_all(&x.root);
    r.map(|job| (job, clock.phases))
}
