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

pub mod adopt;
pub mod check;
pub mod incoming;
pub mod push;
pub mod relay;
pub mod restore;
pub mod runjob;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::migrate::{
    ImageFile, MigratePeerReply, MigratePeerRequest, MigrateReport, MigrateRequest, Offer,
    PhaseTime,
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

/// The phases of a migration as they pass.
pub struct Clock {
    last: Instant,
    /// The phases so far.
    pub phases: Vec<PhaseTime>,
}

impl Clock {
    /// A clock that starts now.
    pub fn new() -> Self {
        Clock {
            last: Instant::now(),
            phases: Vec::new(),
        }
    }

    /// The phase since the last mark ends now.
    pub fn mark(&mut self, name: &str) {
        let now = Instant::now();
        self.phases.push(PhaseTime {
            name: name.to_string(),
            us: (now - self.last).as_micros() as u64,
        });
        self.last = now;
    }

    /// Phases measured elsewhere (inside the span of a mark), merged by name
    /// and prefixed, after the mark that holds them.
    pub fn extend(&mut self, prefix: &str, phases: &[checkpoint::timings::Phase]) {
        for (name, d) in checkpoint::timings::merged(phases) {
            self.phases.push(PhaseTime {
                name: format!("{prefix}{name}"),
                us: d.as_micros() as u64,
            });
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A process that migrated in.
#[derive(Debug, Clone, Copy)]
pub struct Adopted {
    /// Its start time (clock ticks after boot): a recycled PID is another process.
    pub start: u64,
    /// The node it came from.
    pub from: NodeId,
    /// When it arrived (balancing leaves it here for `min_residency`).
    pub at: Instant,
}

/// This node's migrations.
#[derive(Default)]
pub struct Registry {
    /// Images being received.
    pub transfers: incoming::Transfers,
    /// Processes that migrated in and still run, by PID.
    pub adopted: Mutex<HashMap<i32, Adopted>>,
    /// When each `krg run` job that migrated in arrived, by job number.
    pub jobs_arrived: Mutex<HashMap<u64, Instant>>,
    /// Page servers still bringing in the memory of processes that
    /// migrated in (server PID → those processes).
    pub filling: Mutex<HashMap<i32, Vec<i32>>>,
}

/// How long a migration waits for the memory of a process that just
/// arrived to be all in before it moves it on.
const FILL_WAIT: Duration = Duration::from_secs(10);

/// `server` brings in the memory of `pids` (restored lazily); it is
/// reaped here when it is done.
pub fn filling(st: &Arc<ProcState>, server: i32, pids: &[i32]) {
    crate::sync::lock(&st.migration.filling).insert(server, pids.to_vec());
    let st = st.clone();
    tokio::spawn(async move {
        restore::reap_server(server).await;
        crate::sync::lock(&st.migration.filling).remove(&server);
    });
}

/// Wait until no page server fills the memory of any of `pids` (a dump
/// must not race the server for the pages it has not brought in yet).
async fn wait_filled(st: &ProcState, pids: &[i32]) -> Result<(), AdminError> {
    let deadline = Instant::now() + FILL_WAIT;
    loop {
        let busy = crate::sync::lock(&st.migration.filling)
            .iter()
            .find(|(_, p)| p.iter().any(|x| pids.contains(x)))
            .map(|(s, _)| *s);
        let Some(server) = busy else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(err(
                ErrorKind::Unavailable,
                format!("process {} arrived here a moment ago and its memory is still coming in (page server {server}): retry", pids[0]),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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

/// When process `pid` migrated in, if it did and still runs (a process
/// of a job that migrated in: when its job did).
pub fn arrived(st: &ProcState, pid: i32) -> Option<Instant> {
    {
        let a = crate::sync::lock(&st.migration.adopted);
        if let Some(x) = a.get(&pid) {
            return (start_ticks(pid) == Some(x.start)).then_some(x.at);
        }
    }
    let ns = super::procfs::pid_ns_inode(pid)?;
    let job = st.table.jobs().into_iter().find(|j| j.ns_ino == ns)?;
    crate::sync::lock(&st.migration.jobs_arrived)
        .get(&job.id)
        .copied()
}

/// Job `id` (of this node's table) migrated in now.
pub fn arrived_job(st: &ProcState, id: u64) {
    let live: std::collections::HashSet<u64> = st.table.jobs().iter().map(|j| j.id).collect();
    let mut a = crate::sync::lock(&st.migration.jobs_arrived);
    a.retain(|k, _| live.contains(k));
    a.insert(id, Instant::now());
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
        MigratePeerRequest::Files { xfer, pids, files } => {
            let st2 = st.clone();
            blocking(move || incoming::files(&st2, origin, xfer, pids, files)).await??;
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
    let mut clock = Clock::new();
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
    // A krg run job's program moves with its descendants and its session.
    let job = runjob::find(st, pid)?;
    let pid = job.as_ref().map_or(pid, |j| j.host_pid);
    let (tree, in_job) = (req.tree || job.is_some(), job.is_some());
    let caps = st.caps.clone();
    let who2 = who.clone();
    let plan = blocking(move || check::plan(me, pid, tree, in_job, &who2, |p| caps.can_migrate(p)))
        .await??;
    wait_filled(st, &plan.pids).await?;
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
        },
        error: None,
    };
    let (dumped, early) = {
        let out = out.clone();
        blocking(move || {
            let mut early = early;
            let r = dump(pid, &out, me, in_job, &mut early);
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
    let sent = push(&mut sender, &rep, &plan, who).await;
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
    // The handover: from here on the origin's copy is gone.
    for &p in &rep.tasks {
        // SAFETY: plain kill(2) of the stopped processes we dumped.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let mut unclaimed = None;
    let committed = match prepared {
        Some(p) => match runjob::to_target(st, p, to, xfer).await {
            Ok(phases) => Ok((rep.tasks.clone(), phases)),
            Err((why, p)) => {
                unclaimed = Some(p);
                Err(why)
            }
        },
        None => match call(st, to, MigratePeerRequest::Commit { xfer }, COMMIT_TIMEOUT).await {
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
            tracing::warn!(
                pid,
                to,
                why,
                "target failed after the handover: taking the process back"
            );
            let back = match unclaimed {
                Some(p) => runjob::take_back(st, p, &out, rep.app, rep.sn).await,
                None => restore::restore(&out, rep.app, rep.sn).await.map(|_| ()),
            };
            let _ = std::fs::remove_dir_all(&out);
            if let Err(e2) = back {
                return Err(err(
                    ErrorKind::Internal,
                    format!("node {to} failed after the handover ({why}) and node {me} could not take process {pid} back ({e2})"),
                ));
            }
            if job.is_none() {
                incoming::adopt(st, &rep.tasks, me);
            }
            report.to = me;
            report.fell_back = Some(why);
        }
    }
    report.stopped_ms = rep.frozen_at.elapsed().as_millis() as u64;
    let _ = std::fs::remove_dir_all(&out);
    clock.mark("cleanup");
    report.phases = clock.phases;
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
    phases: Vec<checkpoint::timings::Phase>,
    /// What changed in the memory files sent early (see `DumpReport::delta`).
    delta: HashMap<String, Vec<(u64, u64)>>,
}

/// The memory files sent to the target while the process runs.
struct Early {
    handle: tokio::runtime::Handle,
    sender: push::Sender,
    /// The offer, but its SN and files.
    offer: Offer,
    /// Why sending failed, when it did.
    error: Option<AdminError>,
}

impl checkpoint::dump::Ship for Early {
    fn staged(&mut self, sn: u32, files: &[checkpoint::dump::Staged]) -> Result<(), String> {
        let mut parts = Vec::new();
        let mut list = Vec::new();
        for f in files {
            let file = f.file.try_clone().map_err(|e| format!("{}: {e}", f.name))?;
            parts.push(push::Part {
                name: f.name.clone(),
                file: Arc::new(file),
                ranges: f.ranges.clone(),
            });
            list.push(ImageFile {
                name: f.name.clone(),
                len: f.len,
            });
        }
        let Early {
            handle,
            sender,
            offer,
            ..
        } = self;
        let r = handle.block_on(async {
            if sender.offered {
                sender.files(offer.pids.clone(), list).await?;
            } else {
                let mut o = offer.clone();
                o.sn = sn;
                o.files = list;
                sender.offer(o).await?;
            }
            sender.send(&parts).await
        });
        r.map_err(|e| {
            let msg = e.message.clone();
            self.error = Some(e);
            msg
        })
    }
}

/// Dump `pid` into `out`, leaving it stopped; its memory files go to the
/// target as they are copied.
fn dump(
    pid: i32,
    out: &Path,
    node: NodeId,
    in_job: bool,
    early: &mut Early,
) -> Result<Dumped, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let opts = checkpoint::dump::DumpOptions {
        root: out.to_path_buf(),
        kill: false,
        stop: true,
        node: node.min(63),
        sysv_sem: Vec::new(),
        sysv_msg: Vec::new(),
        full: true,
        other_pidns: in_job,
    };
    let r = checkpoint::dump::checkpoint_shipped(pid, &opts, &|_, _| {}, Some(early))
        .map_err(|e| e.to_string())?;
    Ok(Dumped {
        app: pid,
        sn: r.sn,
        dir: r.dir,
        tasks: r.tasks,
        frozen_at: r.frozen_at,
        phases: r.phases,
        delta: r.delta,
    })
}

/// Send the image: the offer (or, after an early one, the final file
/// list), then every file, or what changed in it since it was sent early.
/// Returns the bytes sent in all.
async fn push(
    sender: &mut push::Sender,
    rep: &Dumped,
    plan: &check::Plan,
    who: Credentials,
) -> Result<u64, AdminError> {
    let files = image_files(&rep.dir, rep.sn)
        .map_err(|e| err(ErrorKind::Internal, format!("reading the image: {e}")))?;
    let early = sender.offered;
    if early {
        sender.files(rep.tasks.clone(), files.clone()).await?;
    } else {
        let offer = Offer {
            xfer: sender.xfer,
            app: rep.app,
            sn: rep.sn,
            pids: rep.tasks.clone(),
            owner: plan.owner,
            creds: who,
            files: files.clone(),
            identities: plan.identities.clone(),
        };
        sender.offer(offer).await?;
    }
    let mut parts = Vec::new();
    for f in &files {
        let path = rep.dir.join(&f.name);
        let file = std::fs::File::open(&path)
            .map_err(|e| err(ErrorKind::Internal, format!("{}: {e}", path.display())))?;
        let ranges = match rep.delta.get(&f.name) {
            Some(r) if early => r.clone(),
            _ => vec![(0, f.len)],
        };
        parts.push(push::Part {
            name: f.name.clone(),
            file: Arc::new(file),
            ranges,
        });
    }
    sender.send(&parts).await?;
    Ok(sender.bytes)
}
