//! `restart` of an application whose processes ran on several nodes
//! (`ProcRequest::RestoreParts`, root only). Its tree's node file holds
//! the stand-ins of the processes that had moved away, each naming the
//! node that saved its process (`checkpoint` had it saved there first,
//! [`super::chkptat`]). Each part runs again where it was saved
//! (`ProcPeerRequest::AdoptSaved`: from that node's checkpoint store, as
//! a job in a namespace of its own, its PIDs kept) with its session
//! coming back here; `restart` makes each stand-in again with the token
//! this gives, and the stand-in claims the session with it — as after a
//! migration ([`super::migrate::standin`]).
//!
//! A part whose node is not online runs here instead, from the copy
//! `checkpoint` made of it in the application's directory
//! (`parts/<NODE>/<PID>/`, see `checkpoint::partcopy`), checked as its
//! node's store would be ([`run_saved`]); the answer names those parts.
//!
//! A stand-in that does not come (restart failed) within
//! [`CLAIM_TIMEOUT`]: its part is ended (its session dropped). A part
//! that does not run: its stand-in is told why and ends. `restart
//! --node`: each part, once it runs again, moves here ([`move_here`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::auth::Identity;
use krg_proto::migrate::MigrateRequest;
use krg_proto::proc::{
    AdoptSaved, Credentials, PartsRestoring, ProcPeerReply, RestoreParts, SavedPart,
    SESSION_VERSION,
};
use krg_proto::seal::FrameKeys;
use krg_proto::NodeId;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::creds::Origin;
use super::job::StartedJob;
use super::migrate::adopt;
use super::migrate::registry::{start_ticks, PendingStandIn, StandInStream};
use super::migrate::restore::Lazy;
use super::migrate::{incoming, Clock};
use super::remote::RunsOn;
use super::serve;
use super::session;
use super::state::ProcState;
use crate::caller::Caller;

/// How long restart may take to make a stand-in again (it restores the
/// rest of the tree meanwhile).
const CLAIM_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a part's node may take to run it again.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(150);

fn refused(kind: ErrorKind, what: impl std::fmt::Display) -> AdminError {
    AdminError::new(kind, what.to_string())
}

/// Have every part of `req` run again where it was saved (or here, from
/// its copy: [`copy_to_use`]), its session waiting here for its
/// stand-in: the token of each, and which parts run from their copies.
pub async fn restore(
    st: &Arc<ProcState>,
    caller: &Caller,
    req: RestoreParts,
) -> Result<PartsRestoring, AdminError> {
    if !caller.is_root() {
        return Err(refused(
            ErrorKind::PermissionDenied,
            "only root restarts an application (restart runs as root)",
        ));
    }
    let copies = match req.copies.map(PathBuf::from) {
        Some(c) if !c.is_absolute() => {
            return Err(refused(
                ErrorKind::InvalidArgument,
                format!(
                    "{}: the parts' copies must be named by an absolute path",
                    c.display()
                ),
            ))
        }
        c => c,
    };
    let mut tokens = Vec::new();
    let mut from_copies = Vec::new();
    for part in req.parts {
        let token: u64 = rand::random();
        let (claimed_tx, claimed) = oneshot::channel();
        let (session_tx, session_rx) = oneshot::channel();
        crate::sync::lock(&st.migration.standins.pending).insert(
            token,
            PendingStandIn {
                pid: part.stand_in,
                claimed: claimed_tx,
                session: session_rx,
            },
        );
        tokens.push((part.stand_in, token));
        let copy = match copies.as_deref() {
            Some(c) => copy_to_use(st, &part, c, req.here).await,
            None => None,
        };
        if copy.is_some() {
            from_copies.push(part.stand_in);
        }
        let here = req.here && copy.is_none();
        let st = st.clone();
        tokio::spawn(async move {
            let back = bring_back(&st, part, token, (claimed, session_tx), copy).await;
            if back && here {
                move_here(&st, part).await;
            }
        });
    }
    Ok(PartsRestoring {
        tokens,
        from_copies,
    })
}

/// The copy of `part` to run here instead, under `copies` (the
/// application's `parts/`), if the copy has its SN: always with `here`
/// (`restart --node`: the part's memory is here already, it need not be
/// restored on its node and moved), otherwise when its node is not
/// online or answers that it does not hold it any more (its store
/// lost). The checkpoint root of the copy.
async fn copy_to_use(
    st: &Arc<ProcState>,
    part: &SavedPart,
    copies: &Path,
    here: bool,
) -> Option<PathBuf> {
    let root = copies.join(part.node.to_string());
    let dir = checkpoint::store::app_dir(&root, part.host_pid);
    if !dir.join(format!("global_v{}.bin", part.sn)).exists() {
        return None;
    }
    let why = match super::fanout::check_online(st, part.node) {
        _ if here => "the whole application runs here (restart --node)".to_string(),
        Err(e) => e.message,
        Ok(()) => match super::partread::held_there(st, part.node, part.host_pid, part.sn).await {
            Err(e) if e.kind == ErrorKind::NotFound => e.message,
            // there (or not known): it runs there, or says why not
            _ => return None,
        },
    };
    tracing::info!(
        pid = part.stand_in,
        node = part.node,
        copy = %dir.display(),
        why,
        "a part runs here, from its copy"
    );
    Some(root)
}

/// Run `part` again on its node (or here, from its `copy`) and hand its
/// session to its stand-in once both are there: whether it runs.
async fn bring_back(
    st: &Arc<ProcState>,
    part: SavedPart,
    token: u64,
    (claimed, session): (
        oneshot::Receiver<()>,
        oneshot::Sender<Result<StandInStream, AdminError>>,
    ),
    copy: Option<PathBuf>,
) -> bool {
    let on = if copy.is_some() { st.node() } else { part.node };
    let opened = async {
        match &copy {
            Some(root) => from_copy(st, &part, root)
                .await
                .map(|sess| (sess, RunsOn::new(on))),
            None => {
                let adopt = AdoptSaved {
                    version: SESSION_VERSION,
                    app: part.host_pid,
                    sn: part.sn,
                    pid: part.stand_in,
                    uid: part.uid,
                };
                super::remote::open_adopted_saved(st, part.node, adopt, ADOPT_TIMEOUT)
                    .await
                    .map(|(sess, _, runs_on)| (sess, runs_on))
            }
        }
    };
    let (opened, claimed) = tokio::join!(opened, tokio::time::timeout(CLAIM_TIMEOUT, claimed));
    let pid = part.stand_in;
    if !matches!(claimed, Ok(Ok(()))) {
        crate::sync::lock(&st.migration.standins.pending).remove(&token);
        tracing::warn!(
            pid,
            node = on,
            "a restarted stand-in did not come: its process is ended there"
        );
        return false; // the session dropped ends the job
    }
    let (sess, runs_on) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            tracing::warn!(pid, node = on, error = %e.message, "a part of an application did not run again");
            let _ = session.send(Err(e));
            return false;
        }
    };
    if let Some(start) = start_ticks(pid) {
        crate::sync::lock(&st.migration.standins.active).insert(pid, (start, runs_on));
    }
    tracing::info!(
        pid,
        node = on,
        "a part of an application runs again there, behind its stand-in here"
    );
    session.send(Ok((sess.input, sess.events))).is_ok()
}

/// Run `part` here from its copy under `root` (the application's
/// `parts/<NODE>`, its user's to edit: checked as its node's store is).
async fn from_copy(
    st: &Arc<ProcState>,
    part: &SavedPart,
    root: &Path,
) -> Result<session::Session, AdminError> {
    let saved = Saved {
        root,
        app: part.host_pid,
        sn: part.sn,
        pid: part.stand_in,
        uid: part.uid,
    };
    let (job, unread) = run_saved(st, &saved, st.node()).await?;
    Ok(session::spawn_started_with_input(
        st.clone(),
        job,
        None,
        unread,
    ))
}

/// `restart --node`: the part, running again where it was saved, comes
/// to this node (root's migration, with its descendants), so that the
/// whole application runs here. If it cannot, it runs on where it is.
async fn move_here(st: &Arc<ProcState>, part: SavedPart) {
    let req = MigrateRequest {
        from: Some(part.node),
        pid: part.stand_in,
        to: st.node(),
        tree: true,
        postcopy: false,
        no_stand_in: false,
    };
    let root = Credentials::root();
    match super::migrate::migrate(st, req, root, Origin::Local).await {
        Ok(r) => tracing::info!(
            pid = part.stand_in,
            from = r.from,
            to = r.to,
            "a part of a restarted application came here"
        ),
        Err(e) => {
            tracing::warn!(pid = part.stand_in, node = part.node, error = %e.message, "a part of a restarted application stays where it was saved")
        }
    }
}

/// On the node that saved a part: run it again as a job, then carry its
/// session on `stream` for the stand-in's node.
pub async fn serve(
    st: Arc<ProcState>,
    mut stream: TcpStream,
    mut keys: FrameKeys,
    peer: Identity,
    open: AdoptSaved,
) {
    match start(&st, &peer, &open).await {
        Ok((job, unread)) => {
            tracing::info!(
                from = peer.node,
                app = open.app,
                sn = open.sn,
                pid = open.pid,
                "a saved part of an application runs again here"
            );
            let sess = session::spawn_started_with_input(st.clone(), job, Some(peer.node), unread);
            let opened = ProcPeerReply::Adopted { phases: Vec::new() };
            serve::carry(st, stream, keys, peer, sess, opened, None).await;
        }
        Err(e) => {
            tracing::warn!(from = peer.node, app = open.app, sn = open.sn, error = %e.message, "a saved part did not run again");
            serve::answer_error(&mut stream, &mut keys.sealer, e).await;
        }
    }
}

/// Check `open` (from a member) and start it; the input it had not
/// read when it was saved, if any.
async fn start(
    st: &Arc<ProcState>,
    peer: &Identity,
    open: &AdoptSaved,
) -> Result<(StartedJob, Option<Bytes>), AdminError> {
    let from = incoming::member(serve::origin_of(st, peer).await)?;
    if open.version != SESSION_VERSION {
        return Err(refused(
            ErrorKind::InvalidArgument,
            format!(
                "node {} speaks session version {SESSION_VERSION}, node {from} sent {}",
                st.node(),
                open.version
            ),
        ));
    }
    let root = PathBuf::from(checkpoint::store::DEFAULT_ROOT);
    let saved = Saved {
        root: &root,
        app: open.app,
        sn: open.sn,
        pid: open.pid,
        uid: open.uid,
    };
    run_saved(st, &saved, from).await
}

/// A saved part to run again: SN `sn` of application `app` under `root`,
/// the process of stand-in `pid`, of user `uid`.
struct Saved<'a> {
    root: &'a Path,
    app: i32,
    sn: u32,
    pid: i32,
    uid: u32,
}

/// Check `saved` (it is the stand-in's process, and belongs to the
/// application's owner) and start it here as a job whose session goes
/// to `origin`; the input it had not read when it was saved, if any.
async fn run_saved(
    st: &Arc<ProcState>,
    saved: &Saved<'_>,
    origin: NodeId,
) -> Result<(StartedJob, Option<Bytes>), AdminError> {
    let (app, sn) = (saved.app, saved.sn);
    let job = super::restartjob::read_job(saved.root, app, sn).await?;
    if job.uid != saved.uid {
        return Err(refused(
            ErrorKind::PermissionDenied,
            format!(
                "SN {sn} of {app} on node {} belongs to uid {}, not to the application's owner (uid {})",
                st.node(),
                job.uid,
                saved.uid
            ),
        ));
    }
    if job.map.is_empty() || job.root != saved.pid {
        return Err(refused(
            ErrorKind::InvalidArgument,
            format!(
                "SN {sn} of {app} on node {} is not the saved process {} of a stand-in",
                st.node(),
                saved.pid
            ),
        ));
    }
    let dir = checkpoint::store::app_dir(saved.root, app);
    let unread = super::heldio::input::kept(&dir, sn).map_err(|e| {
        refused(
            ErrorKind::InvalidArgument,
            format!("SN {sn} of {app} on node {}: {e}", st.node()),
        )
    })?;
    let img = super::restartjob::saved_image(saved.root, (app, sn), job, origin, false);
    let job = adopt::start(st, img, &mut Clock::new(), Lazy::No).await?;
    Ok((job, unread))
}
