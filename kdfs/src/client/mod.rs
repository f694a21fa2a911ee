//! The FUSE client behind `mount.kdfs`: options, start-up (learn the cluster
//! from the local krgd, attach the local store, find the root), then serve
//! the kernel until the file system is unmounted.
//!
//! * `fs`: the kernel's requests; `ops`: the namespace operations over the
//!   cluster; `conn`: the connections to every krgd (and failover);
//! * `local`: this node's store read (and its regular files written) in
//!   place; `loans` and `lent`: directories krgd lent to this mount, where
//!   it makes and removes files itself;
//! * `cache`: what the kernel may keep and the callbacks that keep it
//!   true; `locks`, `release`, `striped`, `pieces`, `conversion`,
//!   `follow`, `inherit`, `root`, `convert`, `kmount`: the rest, one
//!   concept each.

pub mod cache;
pub mod conn;
mod conversion;
mod convert;
pub mod follow;
pub mod fs;
mod inherit;
pub mod kmount;
mod lent;
pub mod loans;
pub mod local;
pub mod locks;
pub mod ops;
pub mod pieces;
pub mod release;
pub mod root;
pub mod striped;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use krg_proto::auth::{ClusterKey, Identity, Role};
use krg_proto::kdfs::{KdfsAdminReply, KdfsAdminRequest, KdfsRequest, KdfsResponse};
use krg_proto::NodeId;

use crate::format;
use crate::KdfsError;
use conn::Cluster;
use ops::Ops;

/// How long a mount waits for its krgd and the root node by default.
pub const DEFAULT_TIMEO: Duration = Duration::from_secs(30);
/// How long the kernel keeps names and attributes by default: the nodes
/// tell it of every change (see `cache`), so this only bounds how long a
/// change waits for a mount that stopped answering.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(5);
/// Pause between two attempts while waiting for them.
const RETRY_EVERY: Duration = Duration::from_millis(300);

/// The `-o` options mount.kdfs understands.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub socket: PathBuf,
    pub keyfile: PathBuf,
    /// `nodes=1@10.0.0.1:7600+2@10.0.0.2:7600`: addresses that override the
    /// membership krgd reports.
    pub nodes: HashMap<NodeId, SocketAddr>,
    pub attr_timeout: Duration,
    pub entry_timeout: Duration,
    pub threads: usize,
    /// How long the mount waits for the local krgd and the root node to
    /// serve the file system (`timeo=`): nodes boot in any order.
    pub timeo: Duration,
    /// Kernel read-ahead of the mount, in KiB (the kernel offers FUSE only
    /// 128 KiB at init; it is raised through sysfs once mounted).
    pub readahead_kb: u32,
    /// Let the kernel do the I/O of this node's own files (FUSE passthrough).
    pub passthrough: bool,
    /// Offer extended attributes (`noxattr`: ENOSYS, which also spares the
    /// kernel's security.capability request before every write).
    pub xattr: bool,
    /// Borrow this node's directories from krgd to create files in them
    /// without a round trip (`nolend`: every create goes through krgd).
    pub lend: bool,
    pub foreground: bool,
    pub read_only: bool,
    /// Honour set-user/group-id bits (`suid`); off unless asked for, as
    /// mount(8) does for user mounts: anyone who can write a file on any
    /// node could otherwise plant a setuid-root program.
    pub suid: bool,
    /// Allow device nodes to be opened (`dev`); off unless asked for.
    pub dev: bool,
    /// Allow programs to be executed (`noexec` turns it off).
    pub exec: bool,
    pub log: Option<PathBuf>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(krg_proto::DEFAULT_SOCKET),
            keyfile: PathBuf::from(krg_proto::DEFAULT_CLUSTER_KEY),
            nodes: HashMap::new(),
            attr_timeout: DEFAULT_CACHE_TTL,
            entry_timeout: DEFAULT_CACHE_TTL,
            threads: 2,
            timeo: DEFAULT_TIMEO,
            readahead_kb: 1024,
            passthrough: true,
            xattr: true,
            lend: true,
            foreground: false,
            read_only: false,
            suid: false,
            dev: false,
            exec: true,
            log: None,
        }
    }
}

fn secs(key: &str, v: &str) -> Result<Duration, KdfsError> {
    let f: f64 = v
        .parse()
        .map_err(|_| KdfsError::Invalid(format!("option {key}={v}: not a number of seconds")))?;
    if !(0.0..=3600.0).contains(&f) {
        return Err(KdfsError::Invalid(format!(
            "option {key}={v}: out of range 0..3600"
        )));
    }
    Ok(Duration::from_secs_f64(f))
}

/// A cache lifetime: at most [`crate::callback::MAX_TTL`], which the nodes
/// assume for a mount they do not know.
fn cache_secs(key: &str, v: &str) -> Result<Duration, KdfsError> {
    let d = secs(key, v)?;
    let max = crate::callback::MAX_TTL;
    if d > max {
        return Err(KdfsError::Invalid(format!(
            "option {key}={v}: out of range 0..{}",
            max.as_secs()
        )));
    }
    Ok(d)
}

fn parse_nodes(v: &str) -> Result<HashMap<NodeId, SocketAddr>, KdfsError> {
    let bad = || {
        KdfsError::Invalid(format!(
            "option nodes={v}: expected ID@ADDR:PORT[+ID@ADDR:PORT...]"
        ))
    };
    let mut out = HashMap::new();
    for part in v.split('+').filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('@').ok_or_else(bad)?;
        out.insert(
            id.parse().map_err(|_| bad())?,
            addr.parse().map_err(|_| bad())?,
        );
    }
    Ok(out)
}

impl MountOptions {
    /// Parse a comma-separated `-o` list. Generic mount(8) options that mean
    /// nothing to a FUSE file system (defaults, auto, _netdev, ...) are accepted.
    /// As in mount(8), a later option overrides an earlier one (`user,exec`).
    pub fn parse(list: &str) -> Result<Self, KdfsError> {
        let mut o = Self::default();
        for opt in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            match (k, v) {
                ("socket", Some(v)) => o.socket = v.into(),
                ("keyfile", Some(v)) => o.keyfile = v.into(),
                ("nodes", Some(v)) => o.nodes = parse_nodes(v)?,
                ("attr_timeout", Some(v)) => o.attr_timeout = cache_secs(k, v)?,
                ("entry_timeout", Some(v)) => o.entry_timeout = cache_secs(k, v)?,
                ("timeo", Some(v)) => o.timeo = secs(k, v)?,
                ("threads", Some(v)) => {
                    o.threads =
                        v.parse()
                            .ok()
                            .filter(|n| (1..=64).contains(n))
                            .ok_or_else(|| {
                                KdfsError::Invalid(format!("option threads={v}: expected 1..64"))
                            })?
                }
                ("readahead", Some(v)) => {
                    o.readahead_kb = v
                        .parse()
                        .ok()
                        .filter(|n| (4..=65536).contains(n))
                        .ok_or_else(|| {
                            KdfsError::Invalid(format!(
                                "option readahead={v}: expected 4..65536 (KiB)"
                            ))
                        })?
                }
                ("log", Some(v)) => o.log = Some(v.into()),
                ("foreground", None) => o.foreground = true,
                ("nopassthrough", None) => o.passthrough = false,
                ("noxattr", None) => o.xattr = false,
                ("xattr", None) => o.xattr = true,
                ("lend", None) => o.lend = true,
                ("nolend", None) => o.lend = false,
                ("ro", None) => o.read_only = true,
                ("rw", None) => o.read_only = false,
                ("suid", None) => o.suid = true,
                ("nosuid", None) => o.suid = false,
                ("dev", None) => o.dev = true,
                ("nodev", None) => o.dev = false,
                ("exec", None) => o.exec = true,
                ("noexec", None) => o.exec = false,
                // mount(8): user and users imply noexec, nosuid and nodev.
                ("user" | "users", None) => (o.suid, o.dev, o.exec) = (false, false, false),
                // `defaults` turns nothing on here: suid and dev must be named.
                (
                    "defaults" | "auto" | "noauto" | "_netdev" | "nofail" | "nouser" | "atime"
                    | "noatime" | "relatime" | "async",
                    None,
                ) => {}
                _ => return Err(KdfsError::Invalid(format!("unknown mount option '{opt}'"))),
            }
        }
        Ok(o)
    }
}

/// Everything needed to serve the mount, established before mounting so
/// that mount.kdfs can report a clear error instead of a dead mount point.
pub struct Prepared {
    pub ops: Arc<Ops>,
    pub dir: PathBuf,
}

/// Why a start-up attempt failed: worth waiting for (the local krgd or the
/// root node is not serving yet: nodes boot in any order), or final.
enum Attempt {
    Wait(String),
    Fail(KdfsError),
}

impl From<KdfsError> for Attempt {
    fn from(e: KdfsError) -> Self {
        match e {
            KdfsError::Unreachable(why) => Attempt::Wait(why),
            e => Attempt::Fail(e),
        }
    }
}

/// Learn the cluster, attach `dir` on the local krgd, and find the root,
/// waiting up to `opts.timeo` for the local krgd and the root node to serve
/// (saying once, on stderr, what it waits for).
pub async fn prepare(dir: &Path, opts: &MountOptions) -> Result<Prepared, KdfsError> {
    let dir = std::fs::canonicalize(dir).map_err(|e| KdfsError::io(dir, e))?;
    let sb = format::read_superblock(&dir)?;
    let key =
        ClusterKey::from_file(&opts.keyfile).map_err(|e| KdfsError::Invalid(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + opts.timeo;
    let mut said: Option<String> = None;
    loop {
        let why = match try_prepare(&dir, &sb, &key, opts).await {
            Ok(p) => return Ok(p),
            Err(Attempt::Fail(e)) => return Err(e),
            Err(Attempt::Wait(why)) => why,
        };
        if tokio::time::Instant::now() + RETRY_EVERY > deadline {
            return Err(KdfsError::Unreachable(format!(
                "gave up after {} s (timeo): {why}",
                opts.timeo.as_secs_f64()
            )));
        }
        if said.as_deref() != Some(why.as_str()) {
            eprintln!(
                "mount.kdfs: waiting up to {} s: {why}",
                opts.timeo.as_secs_f64()
            );
            tracing::info!(%why, "kdfs: waiting");
            said = Some(why);
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// One start-up attempt (see [`prepare`]).
async fn try_prepare(
    dir: &Path,
    sb: &format::Superblock,
    key: &ClusterKey,
    opts: &MountOptions,
) -> Result<Prepared, Attempt> {
    let info = conn::local_info(&opts.socket).await?;
    if sb.node != info.node {
        return Err(Attempt::Fail(KdfsError::Invalid(format!(
            "{} was formatted for node {}, but the local krgd is node {}",
            dir.display(),
            sb.node,
            info.node
        ))));
    }
    if !info.cluster_started {
        return Err(Attempt::Wait(
            "the local krgd is in no started cluster yet (krgadm cluster start)".into(),
        ));
    }
    let known =
        |n: NodeId| info.members.iter().any(|(m, _)| *m == n) || opts.nodes.contains_key(&n);
    if !known(sb.root_node) {
        // Said while waiting (a krgd that has just started may not know
        // every member yet): a root node that left handed the root
        // directory to another node, and the stores attached then were told.
        return Err(Attempt::Wait(format!(
            "root node {} named by {} is not a member of the cluster: if it left, the root directory is on another node now (kdfsctl status through a member's mount names it); format this store again naming that node",
            sb.root_node,
            dir.display()
        )));
    }
    let me = Identity {
        session: info.session,
        node: info.node,
        role: Role::Tool,
    };
    let cluster = Arc::new(Cluster::new(
        key.clone(),
        me,
        opts.socket.clone(),
        opts.nodes.clone(),
        &info,
        sb.replicas,
    ));
    tokio::spawn(cluster.clone().follow_failures());
    let dir_s = dir
        .to_str()
        .ok_or_else(|| KdfsError::Invalid(format!("{} is not UTF-8", dir.display())))?
        .to_string();
    let not_yet = || {
        Attempt::Wait(format!(
            "root node {} does not serve this kDFS yet (is its krgd up, and its store formatted?)",
            sb.root_node
        ))
    };
    let fs_id = if sb.root_node == info.node {
        None
    } else {
        match cluster.call(sb.root_node, KdfsRequest::Hello).await {
            Ok(KdfsResponse::Hello {
                fs_id: Some(id), ..
            }) => Some(id),
            _ => return Err(not_yet()),
        }
    };
    match conn::admin_call(&opts.socket, KdfsAdminRequest::Attach { dir: dir_s, fs_id }).await? {
        KdfsAdminReply::Attached { .. } => {}
        other => {
            return Err(Attempt::Fail(KdfsError::Invalid(format!(
                "krgd answered attach with {other:?}"
            ))))
        }
    }
    let root = match cluster.call(sb.root_node, KdfsRequest::Root).await {
        Ok(KdfsResponse::Root(r)) => r,
        _ => return Err(not_yet()),
    };
    let local_store = local::LocalStore::open(dir, info.node, cluster.local_down())?;
    if !local_store.is_sole_mount() {
        tracing::info!(
            "kdfs: another mount of node {} is up: this one keeps no regular file's attributes in the kernel and asks krgd for every attribute change",
            info.node
        );
    }
    let locks = Arc::new(locks::ClientLocks::new());
    tokio::spawn(locks.clone().keep_leases(cluster.clone()));
    let cache = Arc::new(cache::Cache::new(
        locks.client,
        info.node,
        local_store.is_sole_mount(),
        opts.entry_timeout,
        opts.attr_timeout,
    ));
    let recalled = cache.loans.recalled_handles();
    if !opts.lend {
        cache.loans.turn_off();
    }
    // This node's part is read in place: its krgd must know from the start.
    cache.watch(&cluster, info.node);
    let releases = Arc::new(release::Releases::default());
    tokio::spawn(releases.clone().run(cluster.clone(), cache.clone()));
    let ops = Arc::new(Ops {
        cluster,
        local: info.node,
        root: root::Root::new(root),
        local_store,
        locks,
        notifier: std::sync::OnceLock::new(),
        cache,
        releases,
        striped: Default::default(),
    });
    if !ops.local_store.is_mirrored() {
        tokio::spawn(conversion::follow(Arc::downgrade(&ops)));
    }
    tokio::spawn(lent::make_recalled_known(Arc::downgrade(&ops), recalled));
    tokio::spawn(follow::follow(
        Arc::downgrade(&ops),
        dir.to_path_buf(),
        sb.root_node,
    ));
    Ok(Prepared {
        ops,
        dir: dir.to_path_buf(),
    })
}

/// The fuser configuration of a kDFS session (the mount itself is
/// [`kmount`]'s: its options are there).
pub fn fuse_config(opts: &MountOptions) -> fuser::Config {
    let mut c = fuser::Config::default();
    c.acl = fuser::SessionACL::All;
    c.n_threads = Some(opts.threads);
    c.clone_fd = opts.threads > 1;
    c
}

/// Set the kernel read-ahead of the file system mounted at `mountpoint`
/// (its backing device's `read_ahead_kb` in sysfs). FUSE starts with the
/// 128 KiB the kernel offers at init, which halves cold sequential reads.
/// The device is found in /proc/self/mountinfo, not with stat(2): the mount
/// does not answer before its session runs.
pub fn set_readahead(mountpoint: &Path, kb: u32) -> Result<(), KdfsError> {
    let table = crate::mountinfo::read()?;
    let dev = crate::mountinfo::newest_at(&table, mountpoint)
        .ok_or_else(|| {
            KdfsError::Invalid(format!(
                "{} is not in /proc/self/mountinfo",
                mountpoint.display()
            ))
        })?
        .device;
    let knob = PathBuf::from(format!("/sys/class/bdi/{dev}/read_ahead_kb"));
    std::fs::write(&knob, format!("{kb}\n")).map_err(|e| KdfsError::io(&knob, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(list: &str) -> (bool, bool, bool, bool) {
        let o = MountOptions::parse(list).unwrap();
        (o.suid, o.dev, o.exec, o.read_only)
    }

    #[test]
    fn suid_and_dev_only_when_asked_and_the_last_option_wins() {
        assert_eq!(flags(""), (false, false, true, false));
        assert_eq!(flags("defaults,_netdev"), (false, false, true, false));
        assert_eq!(flags("suid,dev"), (true, true, true, false));
        assert_eq!(flags("suid,nosuid,noexec"), (false, false, false, false));
        assert_eq!(flags("dev,user"), (false, false, false, false));
        assert_eq!(flags("users,exec,suid"), (true, false, true, false));
        assert_eq!(flags("ro,rw"), (false, false, true, false));
        assert!(MountOptions::parse("").unwrap().xattr);
        assert!(!MountOptions::parse("noxattr").unwrap().xattr);
        assert_eq!(
            MountOptions::parse("timeo=2.5").unwrap().timeo,
            Duration::from_millis(2500)
        );
        assert!(MountOptions::parse("timeo=-1").is_err());
    }
}
