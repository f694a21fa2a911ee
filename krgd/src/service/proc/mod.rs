//! The process service: this node's share of the global process table
//! (the jobs its krgd started for `krg run`), runs here and on other nodes,
//! `krg ps` and `krg kill` across the cluster.
//!
//! * [`spawner`]: the thread that starts the init of each job, PID 1 of its
//!   own PID namespace; [`spawn`]: the clone and pidfd calls under it.
//! * [`initspec`]: what krgd tells that init (`krg-init`) and hears back.
//! * [`job`]: one job's start (stdio, terminal, output files) and end;
//!   [`pushfile`]: `krg push`'s destination, written by krgd.
//! * [`session`]: a session's jobs on this node, driven by `Up`/`Down` frames;
//!   [`local_stream`]: a session carried on a local tool's connection.
//! * [`hub`]: a run as its origin sees it, across nodes ([`remote`] is the
//!   origin's side of another node's part, [`serve`] the target's;
//!   [`splice`]: a moved job's session joined where it runs; [`liveness`]:
//!   whether the node a session or a migration depends on is still there).
//! * [`place`]: where jobs go; [`fanout`]: the cluster-wide views.
//! * [`table`], [`procfs`], [`lookup`]: this node's jobs and their processes.
//! * [`creds`]: whose a job is, and who may run what here.
//! * [`restartjob`]: a job's checkpoint restarted as a detached job here;
//!   [`chkptat`]: `checkpoint NODE:PID` (or of a stand-in), saved where the
//!   process runs; [`held`]: such a part held stopped until the rest of
//!   its application is saved, what was on its way between it and its
//!   stand-in kept ([`heldio`]); [`partread`]: a part's files read for
//!   its copy in the application's directory; [`parts`]: an
//!   application's parts restarted on their nodes (or here, from their
//!   copies).
//! * [`fs`]: the same service as files, the /krg FUSE tree.
//! * [`sealed`]: a session connection's sealed frames, read without loss,
//!   and its answers.
//! * [`zygote`]: the pre-started `krg-init` that forks every job's init.
//! * [`pty`], [`detach`], [`nodestat`], [`fdio`], [`state`]: the smaller pieces.

pub mod balance;
pub mod chkptat;
pub mod creds;
pub mod detach;
pub mod fanout;
pub mod fdio;
pub mod fs;
pub mod handover;
pub mod held;
pub mod heldio;
pub mod heldparts;
pub mod hub;
pub mod initspec;
pub mod job;
pub mod liveness;
pub mod load;
pub mod local_stream;
pub mod lookup;
pub mod migrate;
pub mod nodestat;
pub mod partread;
pub mod parts;
pub mod place;
pub mod plugmove;
pub mod procfs;
pub mod pty;
pub mod pushfile;
pub mod remote;
pub mod reply;
pub mod restartjob;
pub mod sealed;
pub mod serve;
pub mod session;
pub mod spawn;
pub mod spawner;
pub mod splice;
pub mod state;
pub mod table;
pub mod zygote;

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use krg_proto::admin::{AdminError, AdminResponse, ErrorKind};
use krg_proto::auth::Identity;
use krg_proto::frame::write_frame;
use krg_proto::proc::{
    Credentials, PeerSession, ProcPeerReply, ProcPeerRequest, ProcReply, ProcRequest, RunRequest,
};
use krg_proto::seal::FrameKeys;
use tokio::net::{TcpStream, UnixStream};

use self::creds::RunPolicy;
use self::spawner::Spawner;
use self::state::ProcState;
use self::table::Table;
use crate::caller::Caller;
use crate::context::NodeContext;
use crate::service::chkpt::ChkptService;
use crate::service::placement::Placement;
use crate::service::sched::SchedService;
use crate::DaemonError;

/// How long jobs get between SIGTERM and SIGKILL when krgd stops.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long the jobs killed at shutdown may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// The process service of a node.
pub struct ProcService {
    st: Arc<ProcState>,
    sched: Arc<SchedService>,
    tree: std::sync::Mutex<Option<fs::Mounted>>,
    /// The loop that runs the balance policies.
    balancer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Moving this node's processes away when it leaves.
    handover: Arc<handover::ProcHandOver>,
}

/// Why `init` cannot be trusted as every job's init, if it cannot: it must
/// be a regular file that only root (or krgd's own user) can change.
fn check_init(init: &Path) -> Option<String> {
    let shown = init.display();
    let meta = match std::fs::metadata(init) {
        Ok(m) => m,
        Err(e) => {
            return Some(format!(
                "{shown}: {e} (install krg-init next to krgd, or set [run] init)"
            ))
        }
    };
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_file() {
        Some(format!("{shown} is not a regular file"))
    } else if meta.uid() != 0 && meta.uid() != me {
        Some(format!("{shown} belongs to uid {}, not root", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "{shown} may be changed by other users (mode {:o})",
            meta.mode() & 0o7777
        ))
    } else if meta.mode() & 0o111 == 0 {
        Some(format!("{shown} is not executable"))
    } else {
        None
    }
}

impl ProcService {
    /// Start the service (its spawner thread).
    pub async fn start(
        ctx: Arc<NodeContext>,
        sched: Arc<SchedService>,
        caps: Arc<ChkptService>,
        placement: Arc<dyn Placement>,
    ) -> Result<Arc<Self>, DaemonError> {
        let spawner =
            Spawner::start().map_err(|e| DaemonError::io("starting the job spawner thread", e))?;
        let init_path = ctx.config.job_init.clone();
        let mut init_problem = check_init(&init_path);
        let init = CString::new(init_path.as_os_str().as_encoded_bytes()).unwrap_or_else(|_| {
            init_problem = Some(format!("{} contains a NUL byte", init_path.display()));
            CString::default()
        });
        if let Some(why) = &init_problem {
            tracing::error!(why, "krg run is unavailable on this node");
        }
        let st = Arc::new(ProcState {
            policy: RunPolicy {
                allow_root: ctx.config.run_allow_root,
            },
            detach_dir: ctx.config.data_dir.join("detached"),
            spool: ctx.config.data_dir.join("migrate"),
            caps,
            migration: migrate::Registry::default(),
            splices: Arc::default(),
            placement,
            ctx,
            table: Table::default(),
            spawner,
            init,
            init_problem,
            stopping: tokio::sync::watch::Sender::new(false),
            held: heldparts::Held::default(),
        });
        // Restored (migrated-in) processes come to krgd when restart exits.
        migrate::restore::become_subreaper();
        // (before any migration can start here)
        migrate::sweep(&st.spool);
        let tree = match st.ctx.config.krg_mount.clone() {
            Some(path) => {
                let (st2, sched2) = (st.clone(), sched.clone());
                let mounted = tokio::task::spawn_blocking(move || fs::mount(st2, sched2, &path))
                    .await
                    .map_err(|source| DaemonError::Task {
                        what: "mounting the /krg tree",
                        source,
                    })??;
                if let Some(m) = &mounted {
                    tracing::info!(path = %m.path().display(), "/krg tree mounted");
                }
                mounted
            }
            None => None,
        };
        // krg_load_probe measures what this node runs; balance policies
        // move its processes.
        let st2 = st.clone();
        sched.engine().add_probe_kind(
            load::PROBE_NAME,
            Arc::new(move || Box::new(load::LoadProbe::new(&st2))),
        );
        // one task for both loops, so that aborting it stops both
        let (st2, engine) = (st.clone(), sched.engine().clone());
        let balancer = tokio::spawn(async move {
            tokio::join!(
                balance::run(st2.clone(), engine.clone()),
                plugmove::run(st2, engine)
            );
        });
        Ok(Arc::new(Self {
            handover: handover::ProcHandOver::new(st.clone()),
            st,
            sched,
            tree: std::sync::Mutex::new(tree),
            balancer: std::sync::Mutex::new(Some(balancer)),
        }))
    }

    /// XCPU sessions the /krg tree holds (None without a tree).
    pub fn xcpu_sessions(&self) -> Option<usize> {
        crate::sync::lock(&self.tree)
            .as_ref()
            .map(fs::Mounted::sessions)
    }

    /// The hand-over of this node's processes, for the cluster service
    /// to ask before a leaving node is removed.
    pub fn handover(&self) -> Arc<handover::ProcHandOver> {
        self.handover.clone()
    }

    /// The shared state (for the /krg tree).
    pub fn state(&self) -> &Arc<ProcState> {
        &self.st
    }

    /// `krg ps` and `krg kill` from the admin socket. (`Run` arrives by
    /// [`ProcService::serve_run`], which keeps the connection.)
    pub async fn handle_admin(
        &self,
        caller: &Caller,
        req: ProcRequest,
    ) -> Result<ProcReply, AdminError> {
        match req {
            ProcRequest::Ps { nodes, uid } => {
                let (rows, missing) = fanout::ps(&self.st, nodes, uid).await;
                Ok(ProcReply::Ps { rows, missing })
            }
            ProcRequest::Kill { node, pid, signal } => {
                let who = creds::of_caller(caller);
                fanout::kill(&self.st, node, pid, signal, who).await?;
                Ok(ProcReply::Killed)
            }
            ProcRequest::Migrate(req) => {
                let who = creds::of_caller(caller);
                migrate::migrate(&self.st, req, who, creds::Origin::Local)
                    .await
                    .map(ProcReply::Migrated)
            }
            ProcRequest::RestartJob(req) => {
                if !caller.is_root() {
                    return Err(AdminError::new(
                        ErrorKind::PermissionDenied,
                        "only root restarts a job's checkpoint (restart runs as root)",
                    ));
                }
                let restarted = match req.node.filter(|&n| n != self.st.node()) {
                    Some(node) => {
                        let root = Credentials::of(0, caller.gid);
                        restartjob::forward(&self.st, node, req, root).await
                    }
                    None => restartjob::restart(&self.st, req).await,
                };
                restarted.map(ProcReply::Restarted)
            }
            ProcRequest::CheckpointAt(req) => chkptat::asked(&self.st, caller, req)
                .await
                .map(ProcReply::CheckpointedThere),
            ProcRequest::RestoreParts(req) => parts::restore(&self.st, caller, req)
                .await
                .map(ProcReply::PartsRestoring),
            ProcRequest::RemoveSaved(req) => chkptat::remove_asked(&self.st, caller, req)
                .await
                .map(|()| ProcReply::SavedRemoved),
            ProcRequest::ReadSaved(req) => partread::asked(&self.st, caller, req)
                .await
                .map(partread::Read::into_reply),
            ProcRequest::ReleaseHeld(req) => held::release_asked(&self.st, caller, req)
                .await
                .map(|stopped_us| ProcReply::HeldReleased { stopped_us }),
            ProcRequest::Run(_) | ProcRequest::StandIn { .. } => Err(AdminError::new(
                ErrorKind::InvalidArgument,
                "a session needs a connection of its own",
            )),
        }
    }

    /// Where a peer request comes from, refused unless a member sent it
    /// (`what` it asks for, for the error).
    async fn member(&self, from: &Identity, what: &str) -> Result<creds::Origin, AdminError> {
        let origin = serve::origin_of(&self.st, from).await;
        match origin {
            creds::Origin::Member(_) => Ok(origin),
            _ => Err(AdminError::new(
                ErrorKind::PermissionDenied,
                format!("only members of the cluster ask for {what}"),
            )),
        }
    }

    /// Requests of other krgds (sessions come by [`ProcService::serve_session`]).
    pub async fn handle_peer(
        &self,
        from: &Identity,
        req: ProcPeerRequest,
    ) -> Result<ProcPeerReply, AdminError> {
        match req {
            ProcPeerRequest::List { uid } => Ok(ProcPeerReply::List(lookup::list(&self.st, uid))),
            ProcPeerRequest::Kill { pid, signal, creds } => {
                let origin = serve::origin_of(&self.st, from).await;
                lookup::kill(&self.st, pid, signal, &creds, origin)?;
                Ok(ProcPeerReply::Killed)
            }
            ProcPeerRequest::RestartJob { req, creds } => {
                let member = matches!(
                    serve::origin_of(&self.st, from).await,
                    creds::Origin::Member(_)
                );
                if !member || creds.uid != 0 {
                    return Err(AdminError::new(
                        ErrorKind::PermissionDenied,
                        "only root on a member node restarts a job's checkpoint here",
                    ));
                }
                restartjob::restart(&self.st, req)
                    .await
                    .map(ProcPeerReply::Restarted)
            }
            ProcPeerRequest::Checkpoint { req, creds } => {
                let origin = self.member(from, "a checkpoint").await?;
                chkptat::here(&self.st, req, creds, origin)
                    .await
                    .map(ProcPeerReply::Checkpointed)
            }
            ProcPeerRequest::RemoveSaved { req, creds } => {
                let origin = self.member(from, "a removal").await?;
                chkptat::remove_here(req, creds, origin)
                    .await
                    .map(|()| ProcPeerReply::SavedRemoved)
            }
            ProcPeerRequest::ReadSaved { req, creds } => {
                let origin = self.member(from, "a saved part's files").await?;
                partread::here(req, creds, origin)
                    .await
                    .map(partread::Read::into_peer)
            }
            ProcPeerRequest::ReleaseHeld { req, creds } => {
                let origin = self.member(from, "a release").await?;
                held::release_here(&self.st, req, creds, origin)
                    .map(|stopped_us| ProcPeerReply::HeldReleased { stopped_us })
            }
            ProcPeerRequest::Stat => Ok(ProcPeerReply::Stat(nodestat::read(
                self.st.table.len() as u32
            ))),
            ProcPeerRequest::Migrate(m) => {
                let origin = serve::origin_of(&self.st, from).await;
                migrate::handle_peer(&self.st, origin, m)
                    .await
                    .map(ProcPeerReply::Migrate)
            }
            ProcPeerRequest::HandOver => {
                if !matches!(
                    serve::origin_of(&self.st, from).await,
                    creds::Origin::Member(_)
                ) {
                    return Err(AdminError::new(
                        ErrorKind::PermissionDenied,
                        "only members of the cluster hand processes over",
                    ));
                }
                Ok(ProcPeerReply::HandedOver {
                    done: self.handover.progress(),
                })
            }
            ProcPeerRequest::Session(_)
            | ProcPeerRequest::AdoptJob(_)
            | ProcPeerRequest::AdoptSaved(_)
            | ProcPeerRequest::JoinSession { .. } => Err(AdminError::new(
                ErrorKind::InvalidArgument,
                "a session needs a connection of its own",
            )),
        }
    }

    /// Serve `krg run` on an admin connection: answer the request, then
    /// carry the session stream until the run is over or the tool leaves.
    pub async fn serve_run(&self, mut stream: UnixStream, caller: &Caller, req: RunRequest) {
        let groups = match creds::peer_groups(&stream) {
            Ok(g) => g,
            Err(e) => {
                let err = AdminError::new(
                    ErrorKind::Internal,
                    format!("cannot read the caller's groups: {e}"),
                );
                let _ = write_frame(&mut stream, &AdminResponse::Error(err)).await;
                return;
            }
        };
        let creds = Credentials {
            uid: caller.uid,
            gid: caller.gid,
            groups,
        };
        let opened = hub::open(&self.st, &self.sched, caller, req, creds).await;
        let (jobs, sess) = match opened {
            Ok(x) => x,
            Err(e) => {
                tracing::info!(uid = caller.uid, error = %e.message, "run refused");
                let _ = write_frame(&mut stream, &AdminResponse::Error(e)).await;
                return;
            }
        };
        let reply = AdminResponse::Proc(ProcReply::Session { jobs });
        if write_frame(&mut stream, &reply).await.is_err() {
            return;
        }
        local_stream::carry(stream, sess.input, sess.events).await;
    }

    /// Serve the stand-in of a process that moved away, on its admin
    /// connection (see [`migrate::standin`]).
    pub async fn serve_standin(&self, stream: UnixStream, caller: &Caller, token: u64) {
        migrate::standin::serve(&self.st, stream, caller, token).await;
    }

    /// Serve a session connection another krgd opened.
    pub async fn serve_session(
        &self,
        stream: TcpStream,
        keys: FrameKeys,
        peer: Identity,
        open: PeerSession,
    ) {
        serve::serve(self.st.clone(), stream, keys, peer, open).await;
    }

    /// Serve a connection that hands a migrating `krg run` job over.
    pub async fn serve_adopt(
        &self,
        stream: TcpStream,
        keys: FrameKeys,
        peer: Identity,
        open: krg_proto::migrate::AdoptJob,
    ) {
        migrate::adopt::serve(self.st.clone(), stream, keys, peer, open).await;
    }

    /// Serve a connection that has a saved part of an application run
    /// again here (`restart` of the application on the asking node).
    pub async fn serve_adopt_saved(
        &self,
        stream: TcpStream,
        keys: FrameKeys,
        peer: Identity,
        open: krg_proto::proc::AdoptSaved,
    ) {
        parts::serve(self.st.clone(), stream, keys, peer, open).await;
    }

    /// Serve a connection that joins a moved job's session here.
    pub async fn serve_join(
        &self,
        stream: TcpStream,
        keys: FrameKeys,
        peer: Identity,
        token: u64,
        sent: u64,
    ) {
        let join = splice::Joining {
            stream,
            keys,
            peer,
            sent,
        };
        splice::serve_join(&self.st.splices, self.st.node(), join, token).await;
    }

    /// Stop every job: SIGTERM (forwarded by each init to its program),
    /// then SIGKILL after a grace period. Their sessions tell their users
    /// why, then report the end. Then unmount the /krg tree, which the
    /// jobs' mount namespaces held copies of (see [`crate::unmount`]).
    pub async fn shutdown(&self) {
        self.st.stopping.send_replace(true);
        if let Some(b) = crate::sync::lock(&self.balancer).take() {
            b.abort();
        }
        self.stop_jobs().await;
        let tree = crate::sync::lock(&self.tree).take();
        if let Some(m) = tree {
            crate::unmount::bounded("/krg", move || m.unmount()).await;
        }
    }

    async fn stop_jobs(&self) {
        let jobs = self.st.table.jobs();
        if jobs.is_empty() {
            return;
        }
        tracing::info!(jobs = jobs.len(), "stopping the jobs of this node");
        for j in &jobs {
            session::signal_job(j, libc::SIGTERM);
        }
        self.until_no_job(STOP_GRACE).await;
        for j in self.st.table.jobs() {
            session::signal_job(&j, libc::SIGKILL);
        }
        self.until_no_job(KILL_WAIT).await;
    }

    async fn until_no_job(&self, at_most: Duration) {
        let deadline = tokio::time::Instant::now() + at_most;
        while !self.st.table.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
