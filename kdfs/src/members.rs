//! What the kdfsctl commands that ask every member share: the local
//! krgd's view (the members, the store it serves and its superblock) and
//! connections to every node as a tool holding the cluster key.

use std::path::{Path, PathBuf};

use krg_proto::auth::{ClusterKey, Identity, Role};
use krg_proto::kdfs::{KdfsAdminReply, KdfsAdminRequest, KdfsNode};
use krg_proto::NodeId;

use crate::client::conn::{self, Cluster};
use crate::error::KdfsError;
use crate::format::{self, Superblock};

/// The local krgd's view, and a way to ask every member.
pub struct Members {
    /// This node.
    pub node: NodeId,
    /// Every member, as the local krgd knows them.
    pub members: Vec<KdfsNode>,
    /// The store the local krgd serves.
    pub store: PathBuf,
    /// Its superblock.
    pub sb: Superblock,
    /// Connections to every node (opened on first use).
    pub cluster: Cluster,
}

/// Ask the local krgd (`socket`) who the members are, and connect to them
/// with the cluster key in `keyfile`. With `mount`, first check that it
/// mounts the store the local krgd serves ([`check_mount`]).
pub async fn connect(
    socket: &Path,
    keyfile: &Path,
    mount: Option<&Path>,
) -> Result<Members, KdfsError> {
    let KdfsAdminReply::Info {
        node,
        session,
        addr,
        cluster_started,
        members,
        attached,
    } = conn::admin_call(socket, KdfsAdminRequest::Info).await?
    else {
        return Err(KdfsError::Invalid("krgd answered out of turn".into()));
    };
    let store = PathBuf::from(attached.ok_or_else(|| {
        KdfsError::Invalid(
            "the local krgd serves no kDFS store (mkfs.kdfs DIR ROOT_NODEID attaches one)".into(),
        )
    })?);
    if let Some(m) = mount {
        check_mount(m, &store)?;
    }
    let sb = format::read_superblock(&store)?;
    let key = ClusterKey::from_file(keyfile).map_err(|e| KdfsError::Invalid(e.to_string()))?;
    let me = Identity {
        session,
        node,
        role: Role::Tool,
    };
    let info = conn::LocalInfo {
        node,
        session,
        addr,
        cluster_started,
        members: members.iter().map(|m| (m.id, m.addr)).collect(),
        failed: Vec::new(),
    };
    // Each store asked of its own node (not of a mirror): the tools say
    // where things are.
    let cluster = Cluster::new(key, me, socket.to_path_buf(), Default::default(), &info, 1);
    Ok(Members {
        node,
        members,
        store,
        sb,
        cluster,
    })
}

/// Check that `mount` is a kDFS mount of this node's store `store` (the
/// one the local krgd serves), so that the status printed is that mount's.
pub fn check_mount(mount: &Path, store: &Path) -> Result<(), KdfsError> {
    let at = std::fs::canonicalize(mount).map_err(|e| KdfsError::io(mount, e))?;
    let table = crate::mountinfo::read()?;
    let m = crate::mountinfo::newest_at(&table, &at)
        // Plain "fuse": a mount made by a mount.kdfs from before Dec 3
        // 2026, which passed no subtype; the source (the store) tells a
        // kDFS mount from another FUSE one.
        .filter(|m| m.fstype == "fuse" || m.fstype == "fuse.kdfs")
        .ok_or_else(|| KdfsError::Invalid(format!("{} is not a kDFS mount", mount.display())))?;
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if same(Path::new(&m.source), store) {
        Ok(())
    } else {
        Err(KdfsError::Invalid(format!(
            "{} mounts {}, not the store {} this node's krgd serves (give that node's --socket)",
            mount.display(),
            m.source,
            store.display()
        )))
    }
}
