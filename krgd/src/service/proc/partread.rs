//! `checkpoint` of an application over several nodes copies each part's
//! SN into the application's directory (`checkpoint::partcopy`): it reads
//! the SN's files where the part was saved (`ProcRequest::ReadSaved`).
//! The node asked forwards to the node that saved the part, which reads
//! its default checkpoint directory for the caller — the directory's
//! owner, or root from this node or a member — as `checkpoint rm` there
//! would check (`checkpoint::partcopy::serve`: its user's files only,
//! never through a link).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::peer::PeerRequest;
use krg_proto::proc::{
    Credentials, ProcPeerReply, ProcPeerRequest, ReadSaved, SavedFiles, SAVED_CHUNK_MAX,
};
use krg_proto::NodeId;

use super::creds::Origin;
use super::state::ProcState;
use crate::caller::Caller;

/// How long one read may take (8 MiB from a disk that is busy).
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long `restart` waits to learn whether a part's node still holds it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a [`ReadSaved`] gets.
pub enum Read {
    Files(SavedFiles),
    Bytes(Bytes),
}

impl Read {
    fn from_peer(r: ProcPeerReply) -> Result<Self, ProcPeerReply> {
        match r {
            ProcPeerReply::SavedFiles(f) => Ok(Read::Files(f)),
            ProcPeerReply::SavedBytes(b) => Ok(Read::Bytes(b)),
            other => Err(other),
        }
    }

    pub fn into_peer(self) -> ProcPeerReply {
        match self {
            Read::Files(f) => ProcPeerReply::SavedFiles(f),
            Read::Bytes(b) => ProcPeerReply::SavedBytes(b),
        }
    }

    pub fn into_reply(self) -> krg_proto::proc::ProcReply {
        match self {
            Read::Files(f) => krg_proto::proc::ProcReply::SavedFiles(f),
            Read::Bytes(b) => krg_proto::proc::ProcReply::SavedBytes(b),
        }
    }
}

/// On the node asked: read where the part was saved.
pub async fn asked(
    st: &Arc<ProcState>,
    caller: &Caller,
    req: ReadSaved,
) -> Result<Read, AdminError> {
    let creds = super::creds::of_caller(caller);
    if req.node == st.node() {
        return here(req, creds, Origin::Local).await;
    }
    let node = req.node;
    let ask = PeerRequest::Proc(ProcPeerRequest::ReadSaved { req, creds });
    let got = st.ctx.peers.call(node, ask, TIMEOUT).await;
    super::reply::answer(node, got, Read::from_peer)
}

/// On the node that saved the part: read SN `req.sn` of `req.app` of its
/// default checkpoint directory for `creds`.
pub async fn here(req: ReadSaved, creds: Credentials, origin: Origin) -> Result<Read, AdminError> {
    if creds.uid == 0 && matches!(origin, Origin::Outsider(_)) {
        return Err(AdminError::new(
            ErrorKind::PermissionDenied,
            "root's reads of saved parts are taken only from members of the cluster",
        ));
    }
    if req.chunk.as_ref().is_some_and(|c| c.len > SAVED_CHUNK_MAX) {
        return Err(AdminError::new(
            ErrorKind::InvalidArgument,
            format!("at most {SAVED_CHUNK_MAX} bytes are read at once"),
        ));
    }
    let dir = checkpoint::store::app_dir(Path::new(checkpoint::store::DEFAULT_ROOT), req.app);
    let node = req.node;
    let read = tokio::task::spawn_blocking(move || {
        use checkpoint::partcopy::serve;
        match req.chunk {
            None => serve::list(&dir, req.sn, creds.uid).map(|l| {
                Read::Files(SavedFiles {
                    files: l.files,
                    parent: l.parent,
                })
            }),
            Some(c) => serve::read(&dir, req.sn, &c.name, c.offset, c.len, creds.uid)
                .map(|b| Read::Bytes(Bytes::from(b))),
        }
    })
    .await
    .map_err(|e| AdminError::new(ErrorKind::Internal, e.to_string()))?;
    read.map_err(|e| {
        let kind = match e {
            checkpoint::ChkptError::Permission(_) => ErrorKind::PermissionDenied,
            checkpoint::ChkptError::NoSuchCheckpoint { .. } => ErrorKind::NotFound,
            // the directory (or a file) is not there any more
            ref e if e.is_gone() => ErrorKind::NotFound,
            _ => ErrorKind::InvalidArgument,
        };
        AdminError::new(kind, format!("node {node}: {e}"))
    })
}

/// Does node `node` still hold SN `sn` of application `app` (asked as
/// root of this node)? `NotFound`: it answered that it does not.
pub async fn held_there(
    st: &Arc<ProcState>,
    node: NodeId,
    app: i32,
    sn: u32,
) -> Result<(), AdminError> {
    let req = ReadSaved {
        node,
        app,
        sn,
        chunk: None,
    };
    let creds = Credentials::root();
    if node == st.node() {
        return here(req, creds, Origin::Local).await.map(drop);
    }
    let ask = PeerRequest::Proc(ProcPeerRequest::ReadSaved { req, creds });
    let got = st.ctx.peers.call(node, ask, CHECK_TIMEOUT).await;
    super::reply::answer(node, got, Read::from_peer).map(drop)
}
