//! krgd configuration: `/etc/krg/krgd.toml`, overridden key by key by flags;
//! `node_id` and `session_id` fall back to the kernel command line, as a
//! diskless node boots with `node_id=N session_id=S`.

use std::net::{Ipv4Addr, SocketAddr};
use std::num::ParseIntError;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use krg_proto::{NodeId, SessionId, DEFAULT_DISCOVERY_PORT, DEFAULT_PORT, DEFAULT_SOCKET};
use serde::Deserialize;

use crate::DaemonError;

pub const DEFAULT_CONFIG: &str = "/etc/krg/krgd.toml";

/// Every setting, as it appears both as a flag (`--node-id`) and as a key of
/// the config file (`node_id = 3`). Unset values fall back to the file, then
/// to the kernel command line (ids only), then to defaults.
#[derive(Debug, Clone, Default, Parser, Deserialize)]
#[command(name = "krgd", version, about = "krg node daemon", long_about = LONG_ABOUT)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Config file to read (TOML; keys are the flag names with '_' for '-').
    #[arg(long, value_name = "FILE", env = "KRGD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// This node's id (else `node_id=` on the kernel command line).
    #[arg(long, value_name = "N")]
    pub node_id: Option<NodeId>,

    /// Cluster session id; only nodes of one session form a cluster (else `session_id=`).
    #[arg(long, value_name = "S")]
    pub session_id: Option<SessionId>,

    /// TCP address to listen on for other nodes; port 0 lets the kernel
    /// choose one (advertised to peers) [default: 0.0.0.0:7600].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// Address other nodes should use to reach this one, when it differs from
    /// --listen (e.g. when listening on 0.0.0.0) [default: the listen address,
    /// or the address of the interface that carries the default route].
    #[arg(long, value_name = "ADDR:PORT")]
    pub advertise: Option<SocketAddr>,

    /// A peer krgd to find (repeatable). Without any, peers are found by UDP broadcast.
    #[arg(long = "peer", value_name = "ADDR:PORT")]
    #[serde(rename = "peers")]
    pub peers: Vec<SocketAddr>,

    /// UDP port of presence broadcasts [default: 7601].
    #[arg(long, value_name = "PORT")]
    pub discovery_port: Option<u16>,

    /// Broadcast address for presence announcements [default: the listen
    /// interface's broadcast address, else 255.255.255.255].
    #[arg(long, value_name = "ADDR")]
    pub broadcast: Option<Ipv4Addr>,

    /// Directory for this node's persistent state [default: /var/lib/krg].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Admin Unix socket [default: /run/krg/krgd.sock].
    #[arg(long, value_name = "PATH", env = "KRG_SOCKET")]
    pub socket: Option<PathBuf>,

    /// File holding the shared cluster key (at least 16 bytes) [default: /etc/krg/cluster.key].
    #[arg(long, value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,

    /// Interval between liveness probes, in milliseconds [default: 200].
    #[arg(long, value_name = "MS")]
    pub heartbeat_ms: Option<u64>,

    /// A member silent for this long is marked failed, in milliseconds [default: 1000].
    #[arg(long, value_name = "MS")]
    pub failure_timeout_ms: Option<u64>,

    /// Largest number of Raft voters; other members are learners [default: 5].
    #[arg(long, value_name = "N")]
    pub max_voters: Option<usize>,

    /// Where the scheduler tree is mounted [default: /config/krg_scheduler].
    #[arg(long, value_name = "DIR")]
    pub scheduler_mount: Option<PathBuf>,

    /// Do not mount the scheduler tree (useful for many daemons on one host).
    #[arg(long)]
    #[serde(default)]
    pub no_scheduler_mount: bool,

    /// Plug-in registry of external probes, filters and policies
    /// [default: /etc/krg/plugins.conf].
    #[arg(long, value_name = "FILE")]
    pub plugin_registry: Option<PathBuf>,

    /// Where the /krg tree (nodes, XCPU sessions, processes) is mounted [default: /krg].
    #[arg(long, value_name = "DIR")]
    pub krg_mount: Option<PathBuf>,

    /// Do not mount the /krg tree.
    #[arg(long)]
    #[serde(default)]
    pub no_krg_mount: bool,

    /// HTTP address of /metrics (Prometheus) and the status page at /
    /// [default: 127.0.0.1:7690]. An address already taken is logged, not fatal.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http_listen: Option<SocketAddr>,

    /// Serve no HTTP at all (no /metrics, no status page).
    #[arg(long)]
    #[serde(default)]
    pub no_http: bool,

    /// File holding the token HTTP clients must present (`Authorization:
    /// Bearer TOKEN`, or `?token=TOKEN` in a browser); required when
    /// --http-listen is not a loopback address.
    #[arg(long, value_name = "FILE")]
    pub http_token_file: Option<PathBuf>,

    /// The `[run]` table: jobs started here by `krg run`.
    #[command(flatten)]
    #[serde(default)]
    pub run: RunSettings,
}

/// The `[run]` table of the config file (flags `--run-*`).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSettings {
    /// Run root's jobs (for root on this node or on a member node) [default: true].
    #[arg(long = "run-allow-root", value_name = "BOOL")]
    pub allow_root: Option<bool>,

    /// The init of every job, krg-init [default: next to the krgd executable].
    #[arg(long = "run-init", value_name = "PATH")]
    pub init: Option<PathBuf>,
}

const LONG_ABOUT: &str = "\
krgd runs on every node of a krg cluster. It announces the node to the other
nodes of its session, takes part in the replicated membership (Raft), detects
failed members, serves the /config/krg_scheduler tree, serves the node's kDFS
directory and tracks CHECKPOINTABLE processes.

Settings come from flags, then from the config file (default /etc/krg/krgd.toml,
keys named like the flags with '_' for '-'), then, for node_id and session_id,
from the kernel command line (node_id=N session_id=S), then from defaults.";

/// The resolved configuration a running krgd uses.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: NodeId,
    pub session_id: SessionId,
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub discovery_port: u16,
    pub broadcast: Option<Ipv4Addr>,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub cluster_key_file: PathBuf,
    pub heartbeat: Duration,
    pub failure_timeout: Duration,
    pub max_voters: usize,
    pub scheduler_mount: Option<PathBuf>,
    pub plugin_registry: PathBuf,
    /// Mount point of the /krg tree, unless disabled.
    pub krg_mount: Option<PathBuf>,
    /// `[run] allow_root`.
    pub run_allow_root: bool,
    /// `[run] init`: path of krg-init.
    pub job_init: PathBuf,
    /// Where /metrics and the status page are served, unless disabled.
    pub http_listen: Option<SocketAddr>,
    /// The token HTTP clients must present (read at start-up).
    pub http_token: Option<String>,
}

impl Settings {
    /// Read the config file (if any) and lay these flags over it.
    pub fn merged_with_file(self) -> Result<Settings, DaemonError> {
        let (path, required) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str::<Settings>(&text).map_err(|source| DaemonError::ConfigFile {
                    path: path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Settings::default(),
            Err(e) => return Err(DaemonError::io(format!("reading {}", path.display()), e)),
        };
        Ok(self.over(file))
    }

    fn over(self, file: Settings) -> Settings {
        Settings {
            config: self.config,
            node_id: self.node_id.or(file.node_id),
            session_id: self.session_id.or(file.session_id),
            listen: self.listen.or(file.listen),
            advertise: self.advertise.or(file.advertise),
            peers: if self.peers.is_empty() {
                file.peers
            } else {
                self.peers
            },
            discovery_port: self.discovery_port.or(file.discovery_port),
            broadcast: self.broadcast.or(file.broadcast),
            data_dir: self.data_dir.or(file.data_dir),
            socket: self.socket.or(file.socket),
            cluster_key_file: self.cluster_key_file.or(file.cluster_key_file),
            heartbeat_ms: self.heartbeat_ms.or(file.heartbeat_ms),
            failure_timeout_ms: self.failure_timeout_ms.or(file.failure_timeout_ms),
            max_voters: self.max_voters.or(file.max_voters),
            scheduler_mount: self.scheduler_mount.or(file.scheduler_mount),
            no_scheduler_mount: self.no_scheduler_mount || file.no_scheduler_mount,
            plugin_registry: self.plugin_registry.or(file.plugin_registry),
            krg_mount: self.krg_mount.or(file.krg_mount),
            no_krg_mount: self.no_krg_mount || file.no_krg_mount,
            http_listen: self.http_listen.or(file.http_listen),
            no_http: self.no_http || file.no_http,
            http_token_file: self.http_token_file.or(file.http_token_file),
            run: RunSettings {
                allow_root: self.run.allow_root.or(file.run.allow_root),
                init: self.run.init.or(file.run.init),
            },
        }
    }

    /// Apply kernel command line fallbacks and defaults, and validate.
    pub fn resolve(self, cmdline: &str) -> Result<Config, DaemonError> {
        let (http_listen, http_token) = self.http()?;
        let node_id = self
            .node_id
            .or(cmdline_value(cmdline, "node_id")?)
            .ok_or_else(|| DaemonError::invalid("node_id", "no node id: pass --node-id, set node_id in the config file, or boot with node_id=N"))?;
        if !krg_proto::nodeset::VALID_IDS.contains(&node_id) {
            return Err(DaemonError::invalid(
                "node_id",
                format!("node id {node_id} is out of range: node ids are 1..=65535"),
            ));
        }
        let session_id = self
            .session_id
            .or(cmdline_value(cmdline, "session_id")?)
            .ok_or_else(|| DaemonError::invalid("session_id", "no session id: pass --session-id, set session_id in the config file, or boot with session_id=S"))?;
        let listen = self
            .listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
        let advertise = self.advertise.unwrap_or(listen);
        let heartbeat = Duration::from_millis(self.heartbeat_ms.unwrap_or(200));
        let failure_timeout = Duration::from_millis(self.failure_timeout_ms.unwrap_or(1000));
        if heartbeat.is_zero() || failure_timeout < heartbeat * 2 {
            return Err(DaemonError::invalid("failure_timeout_ms", format!(
                "failure_timeout_ms ({}) must be at least twice heartbeat_ms ({}), which must be positive",
                failure_timeout.as_millis(),
                heartbeat.as_millis()
            )));
        }
        let max_voters = self.max_voters.unwrap_or(5);
        if max_voters == 0 {
            return Err(DaemonError::invalid(
                "max_voters",
                "max_voters must be at least 1",
            ));
        }
        let scheduler_mount = if self.no_scheduler_mount {
            None
        } else {
            Some(
                self.scheduler_mount
                    .unwrap_or_else(|| PathBuf::from(krg_proto::DEFAULT_SCHEDULER_MOUNT)),
            )
        };
        let krg_mount = if self.no_krg_mount {
            None
        } else {
            Some(
                self.krg_mount
                    .unwrap_or_else(|| PathBuf::from(krg_proto::DEFAULT_KRG_MOUNT)),
            )
        };
        let job_init = match self.run.init {
            Some(p) => p,
            None => std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|d| d.join("krg-init")))
                .unwrap_or_else(|| PathBuf::from("/usr/local/sbin/krg-init")),
        };
        Ok(Config {
            node_id,
            session_id,
            listen,
            advertise,
            peers: self.peers,
            discovery_port: self.discovery_port.unwrap_or(DEFAULT_DISCOVERY_PORT),
            broadcast: self.broadcast,
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/krg")),
            socket: self.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            cluster_key_file: self
                .cluster_key_file
                .unwrap_or_else(|| PathBuf::from(krg_proto::DEFAULT_CLUSTER_KEY)),
            heartbeat,
            failure_timeout,
            max_voters,
            scheduler_mount,
            plugin_registry: self
                .plugin_registry
                .unwrap_or_else(|| PathBuf::from(krg_proto::DEFAULT_PLUGIN_REGISTRY)),
            krg_mount,
            run_allow_root: self.run.allow_root.unwrap_or(true),
            job_init,
            http_listen,
            http_token,
        })
    }

    /// The HTTP address and token: a token file is required off loopback,
    /// so that the status page never leaks to the network by accident.
    fn http(&self) -> Result<(Option<SocketAddr>, Option<String>), DaemonError> {
        if self.no_http {
            return Ok((None, None));
        }
        let addr = self
            .http_listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_HTTP_PORT)));
        let token = match &self.http_token_file {
            Some(path) => Some(read_token(path)?),
            None if addr.ip().is_loopback() => None,
            None => {
                return Err(DaemonError::invalid(
                    "http_token_file",
                    format!("--http-listen {addr} is not a loopback address: give --http-token-file (or --no-http)"),
                ))
            }
        };
        Ok((Some(addr), token))
    }
}

/// Default port of /metrics and the status page.
pub const DEFAULT_HTTP_PORT: u16 = 7690;

/// Read an HTTP token file: one line, at least 16 characters.
fn read_token(path: &std::path::Path) -> Result<String, DaemonError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        DaemonError::io(format!("reading the HTTP token file {}", path.display()), e)
    })?;
    let token = text.trim().to_string();
    if token.len() < 16 || token.contains(char::is_whitespace) {
        return Err(DaemonError::invalid(
            "http_token_file",
            format!(
                "{}: the token must be one word of at least 16 characters",
                path.display()
            ),
        ));
    }
    Ok(token)
}

/// Find `key=value` on a kernel command line and parse the value.
fn cmdline_value<T>(cmdline: &str, key: &'static str) -> Result<Option<T>, DaemonError>
where
    T: std::str::FromStr<Err = ParseIntError>,
{
    for word in cmdline.split_whitespace() {
        if let Some(v) = word
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
        {
            return v.parse().map(Some).map_err(|source| DaemonError::Cmdline {
                key,
                value: v.to_string(),
                source,
            });
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_cmdline_fills_ids() {
        let file: Settings =
            toml::from_str("node_id = 3\nsession_id = 5\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        let flags = Settings {
            node_id: Some(4),
            ..Default::default()
        };
        let cfg = flags.over(file).resolve("").unwrap();
        assert_eq!(cfg.node_id, 4);
        assert_eq!(cfg.session_id, 5);
        assert_eq!(cfg.listen, "127.0.0.1:9000".parse().unwrap());

        let cfg = Settings::default()
            .resolve("quiet node_id=12 session_id=7 root=/dev/nfs")
            .unwrap();
        assert_eq!((cfg.node_id, cfg.session_id), (12, 7));
        for bad in ["node_id=0 session_id=7", "node_id=65536 session_id=7"] {
            let e = Settings::default().resolve(bad).unwrap_err().to_string();
            assert!(e.contains("node ids are 1..=65535"), "{bad}: {e}");
        }
    }

    #[test]
    fn missing_ids_and_bad_values_are_clear_errors() {
        let e = Settings::default().resolve("").unwrap_err().to_string();
        assert!(e.contains("no node id"), "{e}");
        let e = Settings::default()
            .resolve("node_id=x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("node_id=x"), "{e}");
        assert!(toml::from_str::<Settings>("nodeid = 3").is_err());
    }

    #[test]
    fn the_shipped_example_parses() {
        let file: Settings = toml::from_str(include_str!("../krgd.toml.example")).unwrap();
        let cfg = Settings::default().over(file).resolve("").unwrap();
        assert_eq!((cfg.node_id, cfg.session_id), (1, 1));
        assert!(cfg.run_allow_root);
    }

    #[test]
    fn run_table_and_krg_mount() {
        let file: Settings = toml::from_str(
            "node_id = 3\nsession_id = 5\nno_krg_mount = true\n[run]\nallow_root = false\ninit = \"/opt/krg-init\"\n",
        )
        .unwrap();
        let cfg = Settings::default().over(file).resolve("").unwrap();
        assert!(!cfg.run_allow_root);
        assert_eq!(cfg.job_init, PathBuf::from("/opt/krg-init"));
        assert_eq!(cfg.krg_mount, None);
        let cfg = Settings::default()
            .resolve("node_id=1 session_id=1")
            .unwrap();
        assert!(cfg.run_allow_root);
        assert_eq!(cfg.krg_mount, Some(PathBuf::from("/krg")));
        assert!(cfg.job_init.ends_with("krg-init"));
        assert!(toml::from_str::<Settings>("[run]\nallow_roots = true").is_err());
        let flags =
            Settings::try_parse_from(["krgd", "--run-allow-root", "false", "--krg-mount", "/x"])
                .unwrap();
        assert_eq!(flags.run.allow_root, Some(false));
    }

    #[test]
    fn errors_keep_their_source_and_stay_one_line() {
        use std::error::Error;
        let e = Settings::default().resolve("node_id=x").unwrap_err();
        assert!(
            matches!(e, DaemonError::Cmdline { key: "node_id", .. }),
            "{e:?}"
        );
        assert!(e.source().is_some_and(|s| s.is::<ParseIntError>()));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("krgd.toml");
        std::fs::write(&file, "node_id = 3\nnodeid = 4\n").unwrap();
        let flags = Settings {
            config: Some(file),
            ..Default::default()
        };
        let e = flags.merged_with_file().unwrap_err();
        assert!(e.source().is_some_and(|s| s.is::<toml::de::Error>()));
        let line = e.to_string();
        assert!(
            line.starts_with("configuration: ") && !line.contains('\n'),
            "{line}"
        );

        let e: DaemonError = krg_proto::auth::ClusterKey::from_file(&dir.path().join("absent.key"))
            .map(drop)
            .unwrap_err()
            .into();
        assert!(e.source().is_some_and(|s| s.is::<std::io::Error>()));
        assert!(e.to_string().contains("absent.key"), "{e}");
    }
}
