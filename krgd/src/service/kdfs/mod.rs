//! kDFS storage: serves this node's formatted kDFS directory to the cluster.
//!
//! mkfs.kdfs attaches the directory it formats (KdfsAdminRequest::Attach;
//! mount.kdfs does too, for stores made by an older mkfs); from then on
//! every kDFS peer request is answered by the [`kdfs::store::Store`] on a
//! blocking thread. The attached directory is remembered in
//! `<data-dir>/kdfs.attach` so that a restarted krgd serves it again at once:
//! a node's files come back with its krgd, whether or not it is mounted there.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kdfs::callback::Callbacks;
use kdfs::lockmgr::{is_lock_request, LockManager};
use kdfs::store::Store;
use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::auth::{Identity, Role};
use krg_proto::cluster::NodeState;
use krg_proto::kdfs::{KdfsAdminReply, KdfsAdminRequest, KdfsNode, KdfsRequest, KdfsResponse};
use krg_proto::peer::{PeerRequest, PeerResponse};

use crate::caller::Caller;
use crate::context::NodeContext;
use crate::service::cluster::Pass;
use crate::service::placement::Placement;
use crate::sync;
use crate::DaemonError;

mod drain;
mod handover;
mod holders;
mod lending;
mod mirror;
mod replicas;
mod striping;

pub use handover::KdfsHandOver;

const ATTACH_FILE: &str = "kdfs.attach";
/// There while this krgd's lock manager holds locks (see `kdfs::lockmgr`):
/// the next start waits for their holders to reclaim them.
const LOCKS_FILE: &str = "kdfs.locks";

pub struct KdfsService {
    ctx: Arc<NodeContext>,
    store: RwLock<Option<Arc<Store>>>,
    /// Locks on this node's files, taken through any node's mount.
    locks: LockManager,
    /// Which mounts' kernels hold what of this node's store, told of changes.
    callbacks: Callbacks,
    /// The store is being handed over (this node leaves): read-only.
    draining: AtomicBool,
    /// The hand-over pass of this node, when it leaves (`handover.rs`).
    pass: Pass,
    /// Which mounts hold handles here, and when they are gone.
    holders: holders::Holders,
    /// Replication (`--replicas 2`): this store's mirror, the copies kept
    /// here, who serves what.
    mirroring: mirror::Mirroring,
    /// A conversion to more copies waiting for this node's mounts.
    pending: std::sync::Mutex<replicas::Pending>,
}

fn unavailable(msg: impl Into<String>) -> AdminError {
    AdminError::new(ErrorKind::Unavailable, msg)
}

/// Requests answered without leaving the runtime thread.
fn is_quick(req: &KdfsRequest) -> bool {
    // (chmod, chown and utimes are quick; a truncate may wait on the disk)
    if let KdfsRequest::SetAttr { set, .. } = req {
        return set.size.is_none();
    }
    !matches!(
        req,
        KdfsRequest::Read { .. }
            | KdfsRequest::Write { .. }
            | KdfsRequest::StripeRead { .. }
            | KdfsRequest::StripeWrite { .. }
            | KdfsRequest::StripeSync { .. }
            | KdfsRequest::StripeTruncate { .. }
            | KdfsRequest::StripeDrop { .. }
            | KdfsRequest::StripeRename { .. }
            | KdfsRequest::SetRoot { .. }
            | KdfsRequest::Extend { .. }
            | KdfsRequest::Fsync { .. }
            | KdfsRequest::FsyncDir { .. }
            | KdfsRequest::SyncStore
            | KdfsRequest::Fallocate { .. }
            | KdfsRequest::OpenDir { .. }
            | KdfsRequest::Statfs
    )
}

impl KdfsService {
    pub async fn start(
        ctx: Arc<NodeContext>,
        placement: Arc<dyn Placement>,
    ) -> Result<Arc<Self>, DaemonError> {
        let svc = Arc::new(Self {
            locks: LockManager::with_marker(ctx.node_id(), ctx.config.data_dir.join(LOCKS_FILE)),
            callbacks: Callbacks::new(ctx.node_id()),
            ctx,
            store: RwLock::new(None),
            draining: AtomicBool::new(false),
            pass: Pass::default(),
            holders: holders::Holders::default(),
            mirroring: mirror::Mirroring::new(placement),
            pending: Default::default(),
        });
        svc.clone().expire_gone_mounts();
        svc.clone().take_over_failed_owners();
        mirror::Beat::keep(&svc);
        if let Ok(dir) = std::fs::read_to_string(svc.attach_file()) {
            let dir = PathBuf::from(dir.trim());
            let node = svc.ctx.node_id();
            match tokio::task::spawn_blocking(move || Store::open(&dir, node, None)).await {
                Ok(Ok(store)) => {
                    tracing::info!(dir = %store.dir().display(), "kdfs: serving the attached directory again");
                    svc.set_store(Some(Arc::new(store)));
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kdfs: cannot serve the previously attached directory")
                }
                Err(e) => tracing::warn!(error = %e, "kdfs: attach task failed"),
            }
        }
        Ok(svc)
    }

    /// Every second, drop the locks of mounts whose lease ran out or whose
    /// node failed or left the membership, and close the handles of mounts
    /// gone for a lease (see [`holders`]).
    fn expire_gone_mounts(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(svc) = weak.upgrade() else { return };
                let view = svc.ctx.view();
                let me = svc.ctx.node_id();
                let online = |n| {
                    n == me
                        || view
                            .members()
                            .any(|m| m.id == n && m.state != NodeState::Failed)
                };
                svc.locks.expire(online);
                svc.mirroring.copies.expire_locks(online).await;
                if view.cut_off {
                    svc.mirroring.copies.void_all().await;
                }
                if let Some(store) = svc.current() {
                    svc.check_claim(&store).await;
                    let gone = svc.holders.gone(&store, online);
                    if !gone.is_empty() {
                        holders::release(store, gone, &svc.ctx.metrics).await;
                    }
                }
            }
        });
    }

    /// Four times a second: take over the stores of failed owners whose
    /// copy here is complete, and stop serving this node's own store if
    /// the log gave it to the mirror.
    fn take_over_failed_owners(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let Some(svc) = weak.upgrade() else { return };
                svc.mirroring
                    .copies
                    .takeover(&svc.ctx, &svc.mirroring.placement)
                    .await;
                if svc.current().is_some_and(|s| s.replicas() > 1) {
                    svc.still_claimed().await;
                }
            }
        });
    }

    fn attach_file(&self) -> PathBuf {
        self.ctx.config.data_dir.join(ATTACH_FILE)
    }

    fn current(&self) -> Option<Arc<Store>> {
        sync::read(&self.store).clone()
    }

    fn set_store(&self, s: Option<Arc<Store>>) {
        if let Some(store) = &s {
            self.resume_conversion(store);
        }
        *sync::write(&self.store) = s;
    }

    fn info(&self) -> KdfsAdminReply {
        let view = self.ctx.view();
        let members: Vec<KdfsNode> = view
            .members()
            .map(|n| KdfsNode {
                id: n.id,
                addr: n.addr,
                online: n.state == NodeState::Online,
                failed: n.state == NodeState::Failed,
            })
            .collect();
        KdfsAdminReply::Info {
            node: self.ctx.node_id(),
            session: self.ctx.config.session_id,
            addr: self.ctx.config.advertise,
            cluster_started: view.epoch > 0 || !members.is_empty(),
            members,
            attached: self.current().map(|s| s.dir().display().to_string()),
        }
    }

    async fn attach(&self, dir: String, fs_id: Option<u128>) -> Result<KdfsAdminReply, AdminError> {
        let path = PathBuf::from(&dir);
        if !path.is_absolute() {
            return Err(AdminError::new(
                ErrorKind::InvalidArgument,
                format!("{dir}: the path must be absolute"),
            ));
        }
        if let Some(cur) = self.current() {
            if cur.dir() == path.as_path() && fs_id.is_none_or(|id| id == cur.superblock().fs_id) {
                // Served since mkfs (or a restart): still refuse it if it
                // became reachable by other users meanwhile.
                cur.check_private()
                    .map_err(|e| AdminError::new(ErrorKind::InvalidArgument, e.to_string()))?;
                let sb = cur.superblock();
                return Ok(KdfsAdminReply::Attached {
                    fs_id: sb.fs_id,
                    root_node: sb.root_node,
                });
            }
            return Err(AdminError::new(
                ErrorKind::Conflict,
                format!(
                    "this node already serves kDFS directory {}",
                    cur.dir().display()
                ),
            ));
        }
        let node = self.ctx.node_id();
        let fs_id = match fs_id {
            Some(id) => Some(id),
            None => self.root_fs_id_if_unbound(&path).await,
        };
        let store = tokio::task::spawn_blocking(move || Store::open(&path, node, fs_id))
            .await
            .map_err(|e| AdminError::new(ErrorKind::Internal, e.to_string()))?
            .map_err(|e| AdminError::new(ErrorKind::InvalidArgument, e.to_string()))?;
        let sb = store.superblock().clone();
        self.remember(Some(store.dir()));
        tracing::info!(dir = %store.dir().display(), fs_id = %format!("{:032x}", sb.fs_id), "kdfs: serving");
        self.set_store(Some(Arc::new(store)));
        Ok(KdfsAdminReply::Attached {
            fs_id: sb.fs_id,
            root_node: sb.root_node,
        })
    }

    /// For a store formatted on a non-root node that has not joined its file
    /// system yet (mkfs.kdfs attaching it): the id the root node serves, if
    /// it answers now. Otherwise the store joins at its first mount, which
    /// waits for the root node.
    async fn root_fs_id_if_unbound(&self, dir: &Path) -> Option<u128> {
        let sb = kdfs::format::read_superblock(dir).ok()?;
        if sb.fs_id != 0 || sb.root_node == self.ctx.node_id() {
            return None;
        }
        let req = PeerRequest::Kdfs(KdfsRequest::Hello);
        match self
            .ctx
            .peers
            .call(sb.root_node, req, Duration::from_secs(2))
            .await
        {
            Ok(PeerResponse::Kdfs(KdfsResponse::Hello { fs_id, .. })) => fs_id,
            _ => None,
        }
    }

    /// Persist (or forget) the attached directory for the next start.
    fn remember(&self, dir: Option<&Path>) {
        let file = self.attach_file();
        let r = match dir {
            Some(d) => std::fs::write(&file, d.display().to_string()),
            None => std::fs::remove_file(&file).or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            }),
        };
        if let Err(e) = r {
            tracing::warn!(file = %file.display(), error = %e, "kdfs: cannot record the attached directory");
        }
    }

    pub async fn handle_admin(
        &self,
        caller: &Caller,
        req: KdfsAdminRequest,
    ) -> Result<KdfsAdminReply, AdminError> {
        match req {
            KdfsAdminRequest::Info => Ok(self.info()),
            KdfsAdminRequest::Attach { .. } | KdfsAdminRequest::Detach if !caller.is_root() => {
                Err(AdminError::new(
                    ErrorKind::PermissionDenied,
                    "only root may attach or detach a kDFS directory",
                ))
            }
            KdfsAdminRequest::Attach { dir, fs_id } => self.attach(dir, fs_id).await,
            KdfsAdminRequest::Detach => {
                self.set_store(None);
                self.remember(None);
                Ok(KdfsAdminReply::Detached)
            }
        }
    }

    pub async fn handle_peer(
        self: &Arc<Self>,
        from: &Identity,
        req: KdfsRequest,
    ) -> Result<KdfsResponse, AdminError> {
        if let KdfsRequest::HandOver = req {
            return self.asked_to_hand_over(from);
        }
        let Some(store) = self.current() else {
            return match req {
                KdfsRequest::Hello => Ok(KdfsResponse::Hello {
                    fs_id: None,
                    node: self.ctx.node_id(),
                }),
                _ => Err(unavailable(format!(
                    "node {} serves no kDFS directory",
                    self.ctx.node_id()
                ))),
            };
        };
        let (client, req) = match req {
            KdfsRequest::As { client, req } => (Some(client), *req),
            req => (None, req),
        };
        match req {
            KdfsRequest::Mirror {
                from: sender,
                store: of,
                req,
            } => {
                // Only a krgd (not a tool holding the key, a mount) may
                // write a copy, and only its own store's, a failed node's
                // it serves (to that store's other mirror: `--replicas
                // 3`) or, handing it back, this node's.
                let me = self.ctx.node_id();
                let whose = if of == me {
                    self.hands_back(sender)
                } else {
                    of == sender || mirror::is_failed(&self.ctx, of)
                };
                let allowed = sender == from.node && from.role == Role::Node && whose;
                if !allowed {
                    return Ok(KdfsResponse::Errno(libc::EPERM));
                }
                return Ok(self
                    .mirroring
                    .copies
                    .handle(&store, sender, of, req, &self.ctx)
                    .await);
            }
            KdfsRequest::FromMirror { node, req } => {
                return Ok(self
                    .mirroring
                    .copies
                    .serve(&self.ctx, node, from.node, *req)
                    .await)
            }
            KdfsRequest::Replication => {
                return Ok(KdfsResponse::Replication(self.replication(&store).await))
            }
            KdfsRequest::SetReplicas { copies } => {
                return Ok(self.set_replicas(&store, copies).await)
            }
            KdfsRequest::Conversion {
                pid,
                switched,
                writers,
            } => return Ok(self.mount_conversion(&store, pid, switched, writers)),
            _ => {}
        }
        if !matches!(req, KdfsRequest::Hello) && !self.wait_to_serve(&store).await {
            return Ok(KdfsResponse::Errno(libc::ENOTCONN));
        }
        if let KdfsRequest::Watch {
            client,
            acked,
            ttl_ms,
        } = req
        {
            return Ok(self.callbacks.watch(from.node, client, acked, ttl_ms).await);
        }
        if let KdfsRequest::Unwatch { client } = req {
            self.callbacks.unwatch(client);
            return Ok(KdfsResponse::Done);
        }
        if let KdfsRequest::Lend { dir } = req {
            return Ok(self.lend(&store, client, from.node, dir));
        }
        let (req, holder) = match holders::opening(req, from.node, self.ctx.node_id()) {
            Ok(unwrapped) => unwrapped,
            Err(errno) => return Ok(KdfsResponse::Errno(errno)),
        };
        if is_lock_request(&req) {
            if let KdfsRequest::LockLease { client } = req {
                self.holders.seen((from.node, client));
            }
            return Ok(self.locks.handle(from.node, req).await);
        }
        if let Some(h) = holder {
            self.holders.seen(h);
        }
        if self.is_draining() && handover::changes_store(&req) {
            return Ok(KdfsResponse::Errno(libc::EROFS));
        }
        // A directory lent to this node's sole mount is taken back first.
        let _touching = self.callbacks.touching(client, &req).await;
        // Kept for the callbacks (never a write's data: writes change
        // nothing they track).
        let asked = kdfs::callback::concerns(&req).then(|| req.clone());
        if let KdfsRequest::SetAttr { ino, set } = &req {
            if let Some(size) = set.size {
                if let Err(e) = self.cut_stripes(&store, *ino, size).await {
                    return Ok(KdfsResponse::Errno(e));
                }
            }
        }
        // What the mirror must be told of (when there is one).
        let mirrored = (store.replicas() > 1 && !Store::is_read_only(&req)).then(|| req.clone());
        let resp = Self::serve(store.clone(), req).await?;
        if let Some(req) = mirrored {
            match self
                .mirroring
                .owner
                .changed(&self.ctx, &store, &req, &resp)
                .await
            {
                Ok(()) => {}
                Err(mirror::NotMirrored::Unreachable) => return Ok(KdfsResponse::Errno(libc::EIO)),
                Err(mirror::NotMirrored::TakenOver) => {
                    self.lost_claim("its mirror took the store over");
                    return Ok(KdfsResponse::Errno(libc::EROFS));
                }
            }
        }
        if let Some(h) = holder {
            store.opened_for(h, &resp);
        }
        self.drop_gone_stripes(&store);
        if let Some(req) = asked {
            if let Some(c) = client {
                self.callbacks.granted(c, from.node, &req, &resp);
            }
            let moved = match (&req, &resp) {
                (
                    KdfsRequest::Rename {
                        dst_dir, dst_name, ..
                    },
                    KdfsResponse::Removed(_),
                ) => match store.handle(KdfsRequest::Lookup {
                    dir: *dst_dir,
                    name: dst_name.clone(),
                }) {
                    KdfsResponse::Entry { ino, .. } => Some(ino),
                    _ => None,
                },
                _ => None,
            };
            self.callbacks
                .changed(client, from.node, &req, &resp, moved)
                .await;
        }
        Ok(resp)
    }

    /// Serve one store request. Metadata requests are a few fast local
    /// syscalls: answering them on the runtime thread saves a thread
    /// hand-off per request (most of a loopback round trip). Data, fsync
    /// and directory listings may wait on the disk: they go to the
    /// blocking pool.
    async fn serve(store: Arc<Store>, req: KdfsRequest) -> Result<KdfsResponse, AdminError> {
        if is_quick(&req) {
            return Ok(store.handle(req));
        }
        tokio::task::spawn_blocking(move || store.handle(req))
            .await
            .map_err(|e| AdminError::new(ErrorKind::Internal, format!("kdfs task failed: {e}")))
    }

    pub async fn shutdown(&self) {
        // Everything written is already in the local file system; handles
        // die with the process like a crashed client's would.
        self.set_store(None);
    }
}
