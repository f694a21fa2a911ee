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

pub mod check;
pub mod incoming;
pub mod restore;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::migrate::{
    Data, ImageFile, MigratePeerReply, MigratePeerRequest, MigrateReport, MigrateRequest, Offer,
    MAX_DATA,
};
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::proc::{Credentials, ProcPeerReply, ProcPeerRequest};
use krg_proto::NodeId;

use super::creds::Origin;
use super::fanout;
use super::state::ProcState;
use crate::peers::PeerCallError;

/// How long the target may take to take one request of a transfer.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the target may take to restore.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(150);

/// A process that migrated in.
#[derive(Debug, Clone, Copy)]
pub struct Adopted {
    /// Its start time (clock ticks after boot): a recycled PID is another process.
    pub start: u64,
    /// The node it came from.
    pub from: NodeId,
}

/// This node's migrations.
#[derive(Default)]
pub struct Registry {
    /// Images being received.
    pub transfers: incoming::Transfers,
    /// Processes that migrated in and still run, by PID.
    pub adopted: Mutex<HashMap<i32, Adopted>>,
}

/// Start time of `pid` (field 22 of its stat).
pub fn start_ticks(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    checkpoint::procfs::parse_stat(&s).ok().map(|s| s.field(22))
}

/// PIDs of the processes that migrated in and still run (the same processes).
pub fn adopted(st: &ProcState) -> Vec<i32> {
    let mut a = crate::sync::lock(&st.migration.adopted);
    a.retain(|&p, x| start_ticks(p) == Some(x.start));
    let mut v: Vec<i32> = a.keys().copied().collect();
    v.sort_unstable();
    v
}

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
    match req.from {
        Some(from) if from != st.node() => forward(st, from, req, who).await,
        _ => {
            let r = move_here(st, req, who).await;
            st.ctx.metrics.migrated(&r);
            r
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

async fn call(
    st: &ProcState,
    node: NodeId,
    body: MigratePeerRequest,
    timeout: Duration,
) -> Result<MigratePeerReply, AdminError> {
    let req = PeerRequest::Proc(ProcPeerRequest::Migrate(body));
    match st.ctx.peers.call(node, req, timeout).await {
        Ok(PeerResponse::Proc(ProcPeerReply::Migrate(r))) => Ok(r),
        Ok(other) => Err(err(
            ErrorKind::Internal,
            format!("node {node} answered {other:?}"),
        )),
        Err(PeerCallError::Remote { error, .. }) => Err(error),
        Err(e) => Err(err(ErrorKind::Unavailable, format!("node {node}: {e}"))),
    }
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
        MigratePeerRequest::Abort { xfer } => {
            incoming::abort(st, origin, xfer)?;
            Ok(MigratePeerReply::Ack)
        }
        MigratePeerRequest::Commit { xfer } => incoming::commit(st, origin, xfer)
            .await
            .map(MigratePeerReply::Restored),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| err(ErrorKind::Internal, format!("worker thread: {e}")))
}

/// The files of SN `sn` in `dir`, with their lengths.
fn image_files(dir: &Path, sn: u32) -> std::io::Result<Vec<ImageFile>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ours =
            name.ends_with(&format!("_v{sn}.bin")) || name == format!("description_v{sn}.txt");
        if ours && e.file_type()?.is_file() {
            out.push(ImageFile {
                name,
                len: e.metadata()?.len(),
            });
        }
    }
    // the global file last: a reader takes its presence as "complete"
    out.sort_by_key(|f| (f.name.starts_with("global_"), f.name.clone()));
    Ok(out)
}

/// The origin's side.
async fn move_here(
    st: &Arc<ProcState>,
    req: MigrateRequest,
    who: Credentials,
) -> Result<MigrateReport, AdminError> {
    let t0 = Instant::now();
    let (me, to, pid) = (st.node(), req.to, req.pid);
    if to == me {
        return Err(err(
            ErrorKind::InvalidArgument,
            format!("process {pid} already runs on node {me}"),
        ));
    }
    fanout::check_online(st, to)?;
    fanout::check_owner(st, to, who.uid)?;
    if let Some(why) = restore::unavailable() {
        return Err(err(
            ErrorKind::Unavailable,
            format!("node {me} could not take the process back if the target failed: {why}"),
        ));
    }
    let caps = st.caps.clone();
    let who2 = who.clone();
    let plan =
        blocking(move || check::plan(me, pid, req.tree, &who2, |p| caps.can_migrate(p))).await??;
    let xfer: u64 = rand::random();
    let out = st.spool.join("out").join(format!("{xfer:x}"));
    let dumped = {
        let out = out.clone();
        blocking(move || dump(pid, &out, me)).await?
    };
    let rep = match dumped {
        Ok(r) => r,
        Err(e) => {
            check::resume(&check::tree(pid));
            let _ = std::fs::remove_dir_all(&out);
            return Err(err(
                ErrorKind::InvalidArgument,
                format!("{e} (it keeps running on node {me})"),
            ));
        }
    };
    let sent = push(st, to, xfer, &rep, &plan, who).await;
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
    // The handover: from here on the origin's copy is gone.
    for &p in &rep.tasks {
        // SAFETY: plain kill(2) of the stopped processes we dumped.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let committed = match call(st, to, MigratePeerRequest::Commit { xfer }, COMMIT_TIMEOUT).await {
        Ok(MigratePeerReply::Restored(r)) => Ok(r.pids),
        Ok(other) => Err(format!("node {to} answered {other:?}")),
        Err(e) => Err(e.message),
    };
    let mut report = MigrateReport {
        from: me,
        to,
        pids: rep.tasks.clone(),
        bytes,
        stopped_ms: 0,
        total_ms: 0,
        fell_back: None,
    };
    match committed {
        Ok(pids) => report.pids = pids,
        Err(why) => {
            tracing::warn!(
                pid,
                to,
                why,
                "target failed after the handover: taking the process back"
            );
            let back = restore::restore(&out, rep.app, rep.sn).await;
            let _ = std::fs::remove_dir_all(&out);
            if let Err(e2) = back {
                return Err(err(
                    ErrorKind::Internal,
                    format!("node {to} failed after the handover ({why}) and node {me} could not take process {pid} back ({e2})"),
                ));
            }
            incoming::adopt(st, &rep.tasks, me);
            report.to = me;
            report.fell_back = Some(why);
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    report.stopped_ms = rep.frozen_at.elapsed().as_millis() as u64;
    report.total_ms = t0.elapsed().as_millis() as u64;
    tracing::info!(pid, to, bytes, stopped_ms = report.stopped_ms, total_ms = report.total_ms, fell_back = ?report.fell_back, "migrated");
    Ok(report)
}

/// What the dump left.
struct Dumped {
    app: i32,
    sn: u32,
    dir: PathBuf,
    tasks: Vec<i32>,
    frozen_at: Instant,
}

/// Dump `pid`'s tree into `out`, leaving it stopped.
fn dump(pid: i32, out: &Path, node: NodeId) -> Result<Dumped, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let opts = checkpoint::dump::DumpOptions {
        root: out.to_path_buf(),
        kill: false,
        stop: true,
        node: node.min(63),
        sysv_sem: Vec::new(),
        sysv_msg: Vec::new(),
        full: true,
    };
    let r = checkpoint::dump::checkpoint(pid, &opts, &|_, _| {}).map_err(|e| e.to_string())?;
    Ok(Dumped {
        app: pid,
        sn: r.sn,
        dir: r.dir,
        tasks: r.tasks,
        frozen_at: r.frozen_at,
    })
}

/// Send the image: the offer, then every file in chunks. Returns the bytes sent.
async fn push(
    st: &ProcState,
    to: NodeId,
    xfer: u64,
    rep: &Dumped,
    plan: &check::Plan,
    who: Credentials,
) -> Result<u64, AdminError> {
    let files = image_files(&rep.dir, rep.sn)
        .map_err(|e| err(ErrorKind::Internal, format!("reading the image: {e}")))?;
    let offer = Offer {
        xfer,
        app: rep.app,
        sn: rep.sn,
        pids: rep.tasks.clone(),
        owner: plan.owner,
        creds: who,
        files: files.clone(),
        identities: plan.identities.clone(),
    };
    call(st, to, MigratePeerRequest::Offer(offer), STEP_TIMEOUT).await?;
    let mut total = 0;
    for (i, f) in files.iter().enumerate() {
        let path = rep.dir.join(&f.name);
        let file = std::fs::File::open(&path)
            .map_err(|e| err(ErrorKind::Internal, format!("{}: {e}", path.display())))?;
        let file = Arc::new(file);
        let mut offset = 0u64;
        while offset < f.len {
            let n = (f.len - offset).min(MAX_DATA as u64) as usize;
            let fh = file.clone();
            let data = blocking(move || {
                let mut buf = vec![0u8; n];
                std::os::unix::fs::FileExt::read_exact_at(&*fh, &mut buf, offset).map(|()| buf)
            })
            .await?
            .map_err(|e| err(ErrorKind::Internal, format!("{}: {e}", path.display())))?;
            let d = Data {
                xfer,
                file: i as u32,
                offset,
                data,
            };
            call(st, to, MigratePeerRequest::Data(d), STEP_TIMEOUT).await?;
            offset += n as u64;
            total += n as u64;
        }
    }
    Ok(total)
}
