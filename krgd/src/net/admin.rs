//! The admin Unix socket: local tools send [`AdminRequest`]s here. Any local
//! user may connect (mode 0666, in a 0755 directory): the socket's mode is
//! not the security boundary. Every request is authorised by its service
//! against the caller's credentials, read with SO_PEERCRED when the
//! connection is accepted (changes to the cluster need root; a user may
//! only touch their own processes).
//!
//! Because anyone may connect, what a connection may hold is bounded: at most
//! [`PER_UID`] connections per uid and [`TOTAL`] for all non-root users
//! together (root has its own [`PER_UID`], so no user's flood locks the
//! administrator out), a request of at most
//! [`MAX_USER_REQUEST_LEN`] (root: [`MAX_REQUEST_LEN`]) read as it arrives,
//! and [`IDLE_TIMEOUT`] to send each whole request. A connection over a limit
//! is answered with one error line and closed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use krg_proto::admin::{
    AdminError, AdminRequest, AdminResponse, ErrorKind, MAX_REQUEST_LEN, MAX_USER_REQUEST_LEN,
};
use krg_proto::frame::{read_frame_limited, write_frame};
use krg_proto::proc::ProcRequest;
use krg_proto::ProtoError;
use tokio::net::{UnixListener, UnixStream};

use super::limits::{Full, Limits, LogBudget, LogTurn, Slot};
use crate::caller::Caller;
use crate::node::Node;
use crate::DaemonError;

/// Bind the admin socket, replacing a stale one left by a crashed krgd but
/// refusing to steal the socket of a krgd that still answers.
pub async fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)))
            .map_err(|e| DaemonError::io(format!("creating {}", dir.display()), e))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(DaemonError::SocketInUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path)
            .map_err(|e| DaemonError::io(format!("removing stale {}", path.display()), e))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| DaemonError::io(format!("binding {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| DaemonError::io(format!("chmod {}", path.display()), e))?;
    Ok(listener)
}

/// Connections one uid may hold open at once.
pub const PER_UID: usize = 16;
/// Connections all non-root users together may hold open at once.
pub const TOTAL: usize = 32;
/// Time a client has to send each whole request (from connecting or from
/// the previous answer); a connection silent for longer is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Accept admin connections until the task is aborted.
pub async fn serve(listener: UnixListener, node: Arc<Node>) {
    let limits: Arc<Limits<u32>> = Limits::new(PER_UID, TOTAL);
    let refusals = Arc::new(LogBudget::new(5, Duration::from_secs(10)));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let node = node.clone();
                let limits = limits.clone();
                let refusals = refusals.clone();
                tokio::spawn(async move {
                    let Some((caller, stream, slot)) = admit(stream, &limits, &refusals).await
                    else {
                        return;
                    };
                    serve_connection(stream, caller, node, &refusals).await;
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Who is calling, and their slot under the limits; a caller over a limit
/// is told so in one line and the connection closed.
async fn admit(
    mut stream: UnixStream,
    limits: &Arc<Limits<u32>>,
    refusals: &LogBudget,
) -> Option<(Caller, UnixStream, Slot<u32>)> {
    let caller = match stream.peer_cred() {
        Ok(c) => Caller {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot read admin peer credentials; closing");
            return None;
        }
    };
    match limits.try_admit(caller.uid, !caller.is_root()) {
        Ok(slot) => Some((caller, stream, slot)),
        Err(full) => {
            let message = match full {
                Full::PerKey(n) => format!(
                    "uid {} already holds {n} connections to krgd, the most one user may",
                    caller.uid
                ),
                Full::Total(n) => format!(
                    "krgd already serves {n} connections of ordinary users, the most it takes; try again"
                ),
            };
            if refusals.take() != LogTurn::Quiet {
                tracing::warn!(uid = caller.uid, "admin connection refused: {message}");
            }
            let refusal = AdminResponse::Error(AdminError::new(ErrorKind::Unavailable, message));
            let _ =
                tokio::time::timeout(Duration::from_secs(1), write_frame(&mut stream, &refusal))
                    .await;
            None
        }
    }
}

async fn serve_connection(
    mut stream: UnixStream,
    caller: Caller,
    node: Arc<Node>,
    refusals: &LogBudget,
) {
    loop {
        let max = if caller.is_root() {
            MAX_REQUEST_LEN
        } else {
            MAX_USER_REQUEST_LEN
        };
        let read = read_frame_limited(&mut stream, max);
        let req: AdminRequest = match tokio::time::timeout(IDLE_TIMEOUT, read).await {
            Ok(Ok(r)) => r,
            Ok(Err(ProtoError::Closed)) => return,
            Ok(Err(e)) => {
                if refusals.take() != LogTurn::Quiet {
                    tracing::warn!(uid = caller.uid, error = %e, "refused malformed admin request");
                }
                if let ProtoError::FrameTooLarge { len, max } = e {
                    let message = format!(
                        "a request of {len} bytes is over the {max}-byte limit for uid {}",
                        caller.uid
                    );
                    let refusal =
                        AdminResponse::Error(AdminError::new(ErrorKind::InvalidArgument, message));
                    let write = write_frame(&mut stream, &refusal);
                    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
                }
                return;
            }
            Err(_) => {
                tracing::debug!(uid = caller.uid, "admin connection idle too long; closed");
                return;
            }
        };
        if let AdminRequest::Proc(ProcRequest::Run(run)) = req {
            // The connection becomes the run's session stream.
            node.proc.serve_run(stream, &caller, run).await;
            return;
        }
        if let AdminRequest::Proc(ProcRequest::StandIn { token }) = req {
            node.proc.serve_standin(stream, &caller, token).await;
            return;
        }
        let resp: AdminResponse = crate::router::admin(&node, &caller, req).await;
        if write_frame(&mut stream, &resp).await.is_err() {
            return;
        }
    }
}
