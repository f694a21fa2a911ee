//! The mirrors kept here: one per owner whose store this node mirrors.
//!
//! A copy serves reads only once its owner said the full copy of the
//! current session ended (`Synced`), and only while every batch since
//! came in order. It is void (serves nothing until the owner copies it
//! again) from the start of this krgd, after a batch it could not apply,
//! and whenever this node is cut off from the majority — the owner may
//! have gone on without it then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kdfs::mirror::{is_mirror_read, MirrorCopy};
use kdfs::store::Store;
use krg_proto::kdfs::{KdfsRequest, KdfsResponse, MirrorRequest, MIRROR_HANDLE};
use krg_proto::NodeId;

use crate::sync;

/// One owner's mirror here.
struct Copy {
    disk: Arc<MirrorCopy>,
    session: u64,
    seq: u64,
    /// Full and current: serves reads.
    view: Option<Arc<Store>>,
}

#[derive(Default)]
pub struct Copies {
    by_owner: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Copy>>>>,
}

fn errno(e: i32) -> KdfsResponse {
    KdfsResponse::Errno(e)
}

impl Copies {
    fn get(&self, owner: NodeId) -> Option<Arc<tokio::sync::Mutex<Copy>>> {
        sync::lock(&self.by_owner).get(&owner).cloned()
    }

    /// Every copy stops serving until its owner copies it again.
    pub async fn void_all(&self) {
        let all: Vec<_> = sync::lock(&self.by_owner).values().cloned().collect();
        for c in all {
            let mut c = c.lock().await;
            if c.view.is_some() || c.session != 0 {
                tracing::warn!(
                    owner = c.disk.owner(),
                    "kdfs mirror: cut off; this copy is void until its owner copies it again"
                );
            }
            (c.session, c.view) = (0, None);
        }
    }

    /// A request of `owner` (authenticated as that node) about its mirror,
    /// kept in `host` (this node's store).
    pub async fn handle(
        &self,
        host: &Arc<Store>,
        owner: NodeId,
        req: MirrorRequest,
    ) -> KdfsResponse {
        match req {
            MirrorRequest::Begin { session } => self.begin(host, owner, session).await,
            MirrorRequest::Apply {
                session,
                seq,
                changes,
            } => {
                let Some(c) = self.get(owner) else {
                    return errno(libc::ESTALE);
                };
                let mut c = c.lock().await;
                if session == 0 || c.session != session || c.seq + 1 != seq {
                    return errno(libc::ESTALE);
                }
                let strict = c.view.is_some();
                let disk = c.disk.clone();
                let done = tokio::task::spawn_blocking(move || disk.apply(&changes, strict)).await;
                match done {
                    Ok(Ok(())) => {
                        c.seq = seq;
                        KdfsResponse::Done
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(owner, error = %e, "kdfs mirror: a change could not be applied; copy void");
                        (c.session, c.view) = (0, None);
                        errno(libc::ESTALE)
                    }
                    Err(_) => errno(libc::EIO),
                }
            }
            MirrorRequest::Synced { session, seq } => {
                let Some(c) = self.get(owner) else {
                    return errno(libc::ESTALE);
                };
                let mut c = c.lock().await;
                if session == 0 || c.session != session || c.seq != seq {
                    return errno(libc::ESTALE);
                }
                match Store::view(&c.disk.path(), owner) {
                    Ok(v) => {
                        tracing::info!(
                            owner,
                            "kdfs mirror: this node holds a full copy of the owner's store"
                        );
                        c.view = Some(Arc::new(v));
                        KdfsResponse::Done
                    }
                    Err(e) => {
                        tracing::warn!(owner, error = %e, "kdfs mirror: the copy does not open as a store");
                        c.session = 0;
                        errno(libc::ESTALE)
                    }
                }
            }
        }
    }

    async fn begin(&self, host: &Arc<Store>, owner: NodeId, session: u64) -> KdfsResponse {
        let c = match self.get(owner) {
            Some(c) => c,
            None => {
                let h = host.clone();
                let disk = match tokio::task::spawn_blocking(move || h.mirror_copy(owner)).await {
                    Ok(Ok(d)) => Arc::new(d),
                    Ok(Err(e)) => {
                        tracing::warn!(owner, error = %e, "kdfs mirror: cannot keep a copy here");
                        return errno(libc::EIO);
                    }
                    Err(_) => return errno(libc::EIO),
                };
                let c = Copy {
                    disk,
                    session: 0,
                    seq: 0,
                    view: None,
                };
                let c = Arc::new(tokio::sync::Mutex::new(c));
                sync::lock(&self.by_owner).entry(owner).or_insert(c).clone()
            }
        };
        let mut c = c.lock().await;
        (c.session, c.seq, c.view) = (session, 0, None);
        let disk = c.disk.clone();
        match tokio::task::spawn_blocking(move || disk.inventory()).await {
            Ok(Ok(have)) => KdfsResponse::Mirrored(have),
            Ok(Err(e)) => {
                c.session = 0;
                tracing::warn!(owner, error = %e, "kdfs mirror: cannot list the copy");
                errno(libc::EIO)
            }
            Err(_) => errno(libc::EIO),
        }
    }

    /// A read of `owner`'s files while it does not answer: served from its
    /// copy here, with the handles it opens marked as the mirror's.
    pub async fn read(&self, owner: NodeId, req: KdfsRequest) -> KdfsResponse {
        if !is_mirror_read(&req) {
            return errno(libc::EROFS);
        }
        let Some(c) = self.get(owner) else {
            return errno(libc::ENOTCONN);
        };
        let Some(view) = c.lock().await.view.clone() else {
            return errno(libc::ENOTCONN);
        };
        let req = unmark(kdfs::mirror::unwrapped(req));
        let resp = match tokio::task::spawn_blocking(move || view.handle(req)).await {
            Ok(r) => r,
            Err(_) => return errno(libc::EIO),
        };
        match resp {
            KdfsResponse::Handle(fh) => KdfsResponse::Handle(fh | MIRROR_HANDLE),
            r => r,
        }
    }
}

/// `req` with the mirror's mark taken off its handle.
fn unmark(req: KdfsRequest) -> KdfsRequest {
    use KdfsRequest as Q;
    let m = !MIRROR_HANDLE;
    match req {
        Q::Read {
            ino,
            fh,
            offset,
            len,
        } => Q::Read {
            ino,
            fh: fh & m,
            offset,
            len,
        },
        Q::Release { ino, fh } => Q::Release { ino, fh: fh & m },
        Q::ReadDir { fh, offset, max } => Q::ReadDir {
            fh: fh & m,
            offset,
            max,
        },
        Q::ReleaseDir { fh } => Q::ReleaseDir { fh: fh & m },
        r => r,
    }
}
