//! The admin Unix socket: local tools send [`AdminRequest`]s here. Any local
//! user may connect (mode 0666, in a 0755 directory): the socket's mode is
//! not the security boundary. Every request is authorised by its service
//! against the caller's credentials, read with SO_PEERCRED when the
//! connection is accepted (changes to the cluster need root; a user may
//! only touch their own processes).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use krg_proto::admin::{AdminRequest, AdminResponse};
use krg_proto::frame::{read_frame, write_frame};
use krg_proto::proc::ProcRequest;
use krg_proto::ProtoError;
use tokio::net::{UnixListener, UnixStream};

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

/// Accept admin connections until the task is aborted.
pub async fn serve(listener: UnixListener, node: Arc<Node>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let node = node.clone();
                tokio::spawn(async move { serve_connection(stream, node).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(mut stream: UnixStream, node: Arc<Node>) {
    let caller = match stream.peer_cred() {
        Ok(c) => Caller {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot read admin peer credentials; closing");
            return;
        }
    };
    loop {
        let req: AdminRequest = match read_frame(&mut stream).await {
            Ok(r) => r,
            Err(ProtoError::Closed) => return,
            Err(e) => {
                tracing::warn!(uid = caller.uid, error = %e, "refused malformed admin request");
                return;
            }
        };
        if let AdminRequest::Proc(ProcRequest::Run(run)) = req {
            // The connection becomes the run's session stream.
            node.proc.serve_run(stream, &caller, run).await;
            return;
        }
        let resp: AdminResponse = crate::router::admin(&node, &caller, req).await;
        if write_frame(&mut stream, &resp).await.is_err() {
            return;
        }
    }
}
