//! Process migration: `migrate [NODE:]PID NODE`.
//!
//! The origin ([`check`]) checks what it can while the process runs, dumps
//! it with the checkpoint engine (pages copied while it runs, then frozen)
//! into `<data_dir>/migrate/out/<xfer>/`, and leaves it **stopped**; it
//! pushes the image to the target over the sealed peer connection
//! ([`incoming`] is the target's side). Until then any failure lets the
//! stopped copy run on. Then the origin kills its copy and asks the target
//! to restore ([`restore`]) with the same PIDs; if the target cannot, the
//! origin restores its own copy of the image. All nodes of a local cluster
//! share one kernel, whose PIDs are unique: two copies can never run.
//!
//! - [`check`] — what is checked while the process runs
//! - [`send`] — the dump, and the image sent while it runs and once stopped ([`push`])
//! - [`incoming`] — the target: images received ([`entry`]), restored on `Commit`
//! - [`restore`] — running `restart` (lazily on a target)
//! - [`clock`] — the phases and their times (`--timings`)
//! - [`fence`] — the cluster decides which node runs the process after
//!   the handover: the target's copy runs only if placed there, the
//!   origin takes it back only if placed there
//! - [`pulling`], [`serving`] — post-copy (`migrate --postcopy`): the
//!   target pulls the page data after the process runs there, from the
//!   origin, which keeps its copy of the image until then
//! - [`registry`] — the data: images received and served, what migrated in
//! - [`arrivals`] — when processes arrived, page servers still filling memory
//! - [`runjob`], [`adopt`], [`relay`] — `krg run` jobs: the origin's
//!   handover, the target taking the job over into a new PID namespace,
//!   and the relay that keeps the job's session on the origin
//! - [`standin`] — a process that is no job: it leaves a stand-in in its
//!   place (bproc's ghost), and runs on the target as a job does
//! - [`stdio`] — a process without a stand-in: its stdout and stderr still
//!   go to the pipe or terminal they led to on the origin

pub mod adopt;
pub mod arrivals;
pub mod check;
mod clock;
pub mod entry;
pub mod fence;
pub mod incoming;
pub mod pulling;
pub mod push;
pub mod registry;
pub mod relay;
pub mod restore;
pub mod runjob;
mod send;
pub mod serving;
pub mod standin;
pub mod stdio;

pub use arrivals::{arrived, arrived_job, filling, wait_filled};
pub use clock::Clock;
pub use registry::{start_ticks, Adopted, Registry};
use send::{dump, push, Early};

use std::sync::Arc;
use std::time::{Duration, Instant};

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::migrate::{
    MigratePeerReply, MigratePeerRequest, MigrateReport, MigrateRequest, Offer,
};
use krg_proto::peer::PeerRequest;
use krg_proto::proc::{Credentials, ProcPeerReply, ProcPeerRequest};
use krg_proto::NodeId;

use super::creds::Origin;
use super::fanout;
use super::liveness::{until_gone, CutOff};
use super::procfs;
use super::state::ProcState;

/// How long the target may take to take one request of a transfer.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the target may take to restore.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(150);

fn err(kind: ErrorKind, msg: impl Into<String>) -> AdminError {
    AdminError::new(kind, msg)
}

/// `migrate`, asked here by `who` (from `origin`).
pub async fn migrate(
    st: &Arc<ProcState>,
    req: MigrateRequest,
    who: Credentials,
    origin: Origin,
) -> Result<MigrateReport, AdminError> {
    if who.uid == 0 && matches!(origin, Origin::Outsider(_)) {
        return Err(err(
            ErrorKind::PermissionDenied,
            "root's migrations are taken only from members of the cluster",
        ));
    }
    let at = match req.from {
        Some(from) if from != st.node() => Some(from),
        _ if matches!(origin, Origin::Local) => stand_in_elsewhere(st, req.pid)?,
        _ => None,
    };
    match at {
        Some(at) => forward(st, at, req, who).await,
        None => {
            let r = move_here(st, req, who).await;
            st.ctx.metrics.migrated(&r);
            r
        }
    }
}

/// The node where the process of stand-in `pid` runs, if `pid` is a
/// stand-in here whose process runs on another node: `migrate PID TO`
/// typed on this node moves that process, as `migrate NODE:PID TO` would
/// (one hop: a request forwarded here by another node is not passed on,
/// so stand-ins that disagree cannot send it round).
fn stand_in_elsewhere(st: &ProcState, pid: i32) -> Result<Option<NodeId>, AdminError> {
    let me = st.node();
    let Some(on) = st.migration.standins.runs_on(pid).filter(|&on| on != me) else {
        return Ok(None);
    };
    // (a job here with that PID is this node's to move)
    Ok(runjob::find(st, pid)?.is_none().then_some(on))
}

/// Remove what a krgd stopped in the middle of migrations left in
/// `spool` (images received, `in/`, and sent or served, `out/`): a
/// transfer lives in its krgd's memory, so none of them is of use to
/// another krgd. Called at start, before any migration.
pub fn sweep(spool: &std::path::Path) {
    for side in ["in", "out"] {
        let dir = spool.join(side);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let removed = entries
            .flatten()
            .filter(|e| std::fs::remove_dir_all(e.path()).is_ok())
            .count();
        if removed > 0 {
            tracing::info!(dir = %dir.display(), removed, "images an earlier krgd left: removed");
        }
    }
}

/// `migrate NODE:PID TO` for a process of another node: that node does it.
async fn forward(
    st: &ProcState,
    from: NodeId,
    req: MigrateRequest,
    who: Credentials,
) -> Result<MigrateReport, AdminError> {
    fanout::check_online(st, from)?;
    let body = MigratePeerRequest::Move {
        req: MigrateRequest {
            from: Some(from),
            ..req
        },
        creds: who,
    };
    match call(st, from, body, COMMIT_TIMEOUT + STEP_TIMEOUT * 4).await? {
        MigratePeerReply::Moved(r) => Ok(r),
        other => Err(err(
            ErrorKind::Internal,
            format!("node {from} answered {other:?}"),
        )),
    }
}

/// A request to `node`, given up as soon as the membership says `node`
/// failed or left: a partition breaks no connection and nothing answers,
/// but the failure detection says so long before `timeout`.
async fn call(
    st: &ProcState,
    node: NodeId,
    body: MigratePeerRequest,
    timeout: Duration,
) -> Result<MigratePeerReply, AdminError> {
    let req = PeerRequest::Proc(ProcPeerRequest::Migrate(body));
    let mut view = st.ctx.watch_view();
    let answer = tokio::select! {
        r = st.ctx.peers.call(node, req, timeout) => r,
        why = until_gone(&mut view, node, CutOff::Ends) => {
            return Err(err(ErrorKind::Unavailable, why));
        }
    };
    super::reply::answer(node, answer, |r| match r {
        ProcPeerReply::Migrate(r) => Ok(r),
        other => Err(other),
    })
}

/// Requests of other krgds about migrations.
pub async fn handle_peer(
    st: &Arc<ProcState>,
    origin: Origin,
    req: MigratePeerRequest,
) -> Result<MigratePeerReply, AdminError> {
    match req {
        MigratePeerRequest::Move { req, creds } => {
            if matches!(origin, Origin::Outsider(_)) {
                return Err(err(
                    ErrorKind::PermissionDenied,
                    "only a member may ask for a migration",
                ));
            }
            migrate(st, req, creds, origin)
                .await
                .map(MigratePeerReply::Moved)
        }
        MigratePeerRequest::Offer(o) => {
            let st2 = st.clone();
            blocking(move || incoming::offer(&st2, origin, o)).await??;
            Ok(MigratePeerReply::Ack)
        }
        MigratePeerRequest::Data(d) => {
            let st2 = st.clone();
            blocking(move || incoming::data(&st2, origin, d)).await??;
            Ok(MigratePeerReply::Ack)
        }
        MigratePeerRequest::Files { xfer, pids, files } => {
            let st2 = st.clone();
            blocking(move || incoming::files(&st2, origin, xfer, pids, files)).await??;
            Ok(MigratePeerReply::Ack)
        }
        MigratePeerRequest::Abort { xfer } => {
            incoming::abort(st, origin, xfer)?;
            Ok(MigratePeerReply::Ack)
        }
        MigratePeerRequest::Output { xfer, stderr, data } => {
            let from = incoming::member(origin)?;
            stdio::write(st, from, xfer, stderr, data.to_vec()).await?;
            Ok(MigratePeerReply::Ack)
        }
        MigratePeerRequest::OutputEnd { xfer } => {
            stdio::forget(st, incoming::member(origin)?, xfer);
            Ok(MigratePeerReply::Ack)
        }
        MigratePeerRequest::Commit {
            xfer,
            checkpointable,
        } => incoming::commit(st, origin, xfer, &checkpointable)
            .await
            .map(MigratePeerReply::Restored),
        MigratePeerRequest::Pull {
            xfer,
            file,
            offset,
            len,
        } => serving::pull(st, origin, xfer, file, offset, len)
            .await
            .map(MigratePeerReply::Pulled),
        MigratePeerRequest::Release { xfer } => {
            serving::release(st, origin, xfer)?;
            Ok(MigratePeerReply::Ack)
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| err(ErrorKind::Internal, format!("worker thread: {e}")))
}

/// The origin's side.
async fn move_here(
    st: &Arc<ProcState>,
    req: MigrateRequest,
    who: Credentials,
) -> Result<MigrateReport, AdminError> {
    let t0 = Instant::now();
    let mut clock = Clock::new();
    let (me, to, pid) = (st.node(), req.to, req.pid);
    fanout::check_online(st, to)?;
    fanout::check_owner(st, to, who.uid)?;
    // A krg run job's program moves with its descendants and its session
    // (also a process back on the node of its stand-in: a job here whose
    // PID, as it sees it, is its stand-in's).
    let job = runjob::find(st, pid)?;
    if let (None, Some(on)) = (&job, st.migration.standins.runs_on(pid)) {
        let msg = if on == me {
            format!("process {pid} is a stand-in whose process is not found on node {me} (krg ps shows where it runs)")
        } else {
            format!(
                "process {pid} runs on node {on}; this is its stand-in (migrate {on}:{pid} {to})"
            )
        };
        return Err(err(ErrorKind::InvalidArgument, msg));
    }
    // (after the stand-ins: a stand-in's process does not run here)
    if to == me {
        return Err(err(
            ErrorKind::InvalidArgument,
            format!("process {pid} already runs on node {me}"),
        ));
    }
    if let Some(why) = restore::unavailable() {
        return Err(err(
            ErrorKind::Unavailable,
            format!("node {me} could not take the process back if the target failed: {why}"),
        ));
    }
    let pid = job.as_ref().map_or(pid, |j| j.host_pid);
    let (tree, in_job) = (req.tree || job.is_some(), job.is_some());
    let stdio = job.as_ref().map(|j| j.stdio_files()).unwrap_or_default();
    let caps = st.caps.clone();
    let who2 = who.clone();
    let stdio2 = stdio.clone();
    let plan = blocking(move || {
        check::plan(
            me,
            pid,
            tree,
            in_job,
            &who2,
            |p| caps.can_migrate(p),
            &stdio2,
        )
    })
    .await??;
    wait_filled(st, &plan.pids).await?;
    // what its user knows them by (krg ps): a job's PIDs in its namespace
    let known_as: Option<Vec<i32>> = in_job.then(|| {
        plan.pids
            .iter()
            .map(|&p| procfs::ns_pid(p).unwrap_or(p))
            .collect()
    });
    clock.mark("check");
    let xfer: u64 = rand::random();
    let out = st.spool.join("out").join(format!("{xfer:x}"));
    let early = Early {
        handle: tokio::runtime::Handle::current(),
        sender: push::Sender::new(st.clone(), to, xfer),
        offer: Offer {
            xfer,
            app: pid,
            sn: 0,
            pids: plan.pids.clone(),
            owner: plan.owner,
            creds: who.clone(),
            files: Vec::new(),
            identities: plan.identities.clone(),
            postcopy: req.postcopy,
        },
        error: None,
        listed: Vec::new(),
        sending: Vec::new(),
    };
    let (dumped, early) = {
        let out = out.clone();
        blocking(move || {
            let mut early = early;
            let r = dump(pid, &out, me, in_job, stdio, &mut early);
            (r, early)
        })
        .await?
    };
    let Early {
        mut sender, error, ..
    } = early;
    let rep = match dumped {
        Ok(r) => r,
        Err(e) => {
            if sender.offered {
                let _ = call(st, to, MigratePeerRequest::Abort { xfer }, STEP_TIMEOUT).await;
            }
            check::resume(&check::tree(pid));
            let _ = std::fs::remove_dir_all(&out);
            if let Some(e) = error {
                return Err(err(
                    e.kind,
                    format!("{} (process {pid} keeps running on node {me})", e.message),
                ));
            }
            return Err(err(
                ErrorKind::InvalidArgument,
                format!("{e} (it keeps running on node {me})"),
            ));
        }
    };
    clock.mark("dump");
    clock.extend("dump.", &rep.phases);
    let sent = push(&mut sender, &rep, &plan, who, req.postcopy).await;
    clock.mark("push");
    let bytes = match sent {
        Ok(b) => b,
        Err(e) => {
            let _ = call(st, to, MigratePeerRequest::Abort { xfer }, STEP_TIMEOUT).await;
            check::resume(&rep.tasks);
            let _ = std::fs::remove_dir_all(&out);
            return Err(err(
                e.kind,
                format!("{} (process {pid} keeps running on node {me})", e.message),
            ));
        }
    };
    let prepared = match &job {
        Some(j) => match runjob::prepare(st, j, &rep.tasks) {
            Ok(p) => Some(p),
            Err(e) => {
                let _ = call(st, to, MigratePeerRequest::Abort { xfer }, STEP_TIMEOUT).await;
                check::resume(&rep.tasks);
                let _ = std::fs::remove_dir_all(&out);
                return Err(e);
            }
        },
        None => None,
    };
    if req.postcopy {
        // the target pulls the page data from this copy of the image
        let dir = checkpoint::checked_dir::CheckedDir::open(&rep.dir).ok();
        let files = sender
            .names()
            .iter()
            .map(|n| {
                let dir = dir.as_ref()?;
                send::open_image_file(dir, n, plan.owner).ok().map(Arc::new)
            })
            .collect();
        serving::start(st, xfer, to, out.clone(), files);
    }
    // What it held here it holds there (CAN_MIGRATE it does: it moved).
    let checkpointable: Vec<i32> = rep
        .tasks
        .iter()
        .copied()
        .filter(|&p| st.caps.is_checkpointable(p))
        .collect();
    // A process that is no job leaves a stand-in in its place; without
    // one, its output (not a job's: its session has it) goes on into what
    // it led to here.
    let mut made = None;
    let mut sinks = stdio::Sinks::default();
    if job.is_none() {
        sinks = stdio::take(pid);
        let begun = if req.no_stand_in {
            None
        } else {
            Some(standin::begin(st, pid, &rep, plan.owner).await)
        };
        match begun {
            Some(Ok(b)) => made = Some(b),
            Some(Err(why)) => {
                tracing::warn!(
                    pid,
                    why,
                    "no stand-in: its parent sees it killed at the move"
                );
                stdio::keep(st, to, xfer, sinks.clone());
            }
            None => stdio::keep(st, to, xfer, sinks.clone()),
        }
    }
    // The handover: from here on the origin's copy is gone (but for the
    // stand-in, which is no copy any more).
    for &p in &rep.tasks {
        if made.is_none() || p != pid {
            // SAFETY: plain kill(2) of the stopped processes we dumped.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    // taken over as a job there (its copy dies with the target's krgd)
    let as_job = prepared.is_some() || made.is_some();
    let mut unclaimed = None;
    let mut unstood = None;
    let committed = match (prepared, made) {
        (Some(p), _) => match runjob::to_target(st, p, to, xfer, &checkpointable).await {
            Ok(phases) => Ok((rep.tasks.clone(), phases)),
            Err((why, p)) => {
                unclaimed = Some(p);
                Err(why)
            }
        },
        (None, Some(b)) => {
            match standin::hand_over(st, b, to, xfer, &checkpointable, &sinks).await {
                Ok(phases) => Ok((rep.tasks.clone(), phases)),
                Err((why, m)) => {
                    unstood = m;
                    Err(why)
                }
            }
        }
        (None, None) => match call(
            st,
            to,
            MigratePeerRequest::Commit {
                xfer,
                checkpointable: checkpointable.clone(),
            },
            COMMIT_TIMEOUT,
        )
        .await
        {
            Ok(MigratePeerReply::Restored(r)) => Ok((r.pids, r.phases)),
            Ok(other) => Err(format!("node {to} answered {other:?}")),
            Err(e) => Err(e.message),
        },
    };
    let mut report = MigrateReport {
        from: me,
        to,
        pids: rep.tasks.clone(),
        bytes,
        stopped_ms: 0,
        total_ms: 0,
        fell_back: None,
        phases: Vec::new(),
    };
    clock.mark("commit");
    match committed {
        Ok((pids, phases)) => {
            report.pids = pids;
            clock.phases.extend(phases);
        }
        Err(why) => {
            // Only if the cluster places it here: a target cut off after
            // it was placed there runs it (see `fence`).
            let on = fence::back_here(st, xfer, to, as_job).await;
            if on != me {
                tracing::warn!(
                    pid,
                    to,
                    on,
                    why,
                    "target failed after the handover, but runs the process"
                );
                let gone = format!("process {pid} is not taken back to node {me}: the cluster placed it on node {on}, and node {me} lost touch with it ({why})");
                if let Some(m) = unstood {
                    m.lost(gone.clone());
                }
                serving::forget(st, xfer);
                let _ = std::fs::remove_dir_all(&out);
                return Err(err(ErrorKind::Unavailable, gone));
            }
            tracing::warn!(
                pid,
                to,
                why,
                "target failed after the handover: taking the process back"
            );
            // (post-copy: the image is this node's again)
            serving::forget(st, xfer);
            let img = runjob::Saved {
                root: &out,
                app: rep.app,
                sn: rep.sn,
                checkpointable: &checkpointable,
            };
            let taken_as_job = unclaimed.is_some() || unstood.is_some();
            let back = match (unclaimed, unstood) {
                (Some(p), _) => runjob::take_back(st, p, img).await,
                (None, Some(m)) => m.take_back(st, img).await,
                (None, None) => {
                    stdio::forget(st, to, xfer);
                    let out_fds = sinks.for_restart();
                    restore::restore(&out, rep.app, rep.sn, out_fds)
                        .await
                        .map(|_| ())
                }
            };
            let _ = std::fs::remove_dir_all(&out);
            if let Err(e2) = back {
                return Err(err(
                    ErrorKind::Internal,
                    format!("node {to} failed after the handover ({why}) and node {me} could not take process {pid} back ({e2})"),
                ));
            }
            if !taken_as_job {
                incoming::adopt(st, &rep.tasks, me, &checkpointable);
            }
            report.to = me;
            report.fell_back = Some(why);
        }
    }
    if let Some(pids) = known_as {
        report.pids = pids;
    }
    report.stopped_ms = rep.frozen_at.elapsed().as_millis() as u64;
    if report.fell_back.is_some() || !req.postcopy {
        // Removing a GiB from ext4 takes 0.1 s: not the caller's wait (a
        // krgd stopped before it is done leaves it to the next one's sweep)
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&out));
    }
    clock.mark("cleanup");
    report.phases = clock.phases;
    report.total_ms = t0.elapsed().as_millis() as u64;
    tracing::info!(pid, to, bytes, stopped_ms = report.stopped_ms, total_ms = report.total_ms, fell_back = ?report.fell_back, "migrated");
    Ok(report)
}
