//! `kdfsctl status`: what an operator asks of a kDFS first — which node
//! serves a store of it, how full each store is, and which nodes' files
//! cannot be reached now.
//!
//! The local krgd names the members and the store it serves (its
//! superblock gives the file system's id and root node); every member is
//! then asked for its store's space over the cluster's authenticated
//! peer connection, as the mount's `statfs` does, each with a short
//! timeout so that a dead node costs at most that.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use krg_proto::kdfs::{KdfsRequest, KdfsResponse, ReplicaState};
use krg_proto::NodeId;
use serde::Serialize;

use crate::client::conn::Cluster;
use crate::error::KdfsError;
use crate::members::Members;

/// How long a member may take to say how full its store is.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The file system as this node's store describes it.
#[derive(Debug, Serialize)]
pub struct FsFacts {
    /// The file system's id, in hex.
    pub fs_id: String,
    /// The node holding the root directory.
    pub root_node: NodeId,
    /// This node's store.
    pub store: PathBuf,
}

/// What one member's store answered.
#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StoreState {
    /// It serves a store: its space and inodes (bytes, counts).
    Serving {
        size: u64,
        used: u64,
        avail: u64,
        inodes: u64,
        inodes_free: u64,
    },
    /// Its krgd answers but serves no kDFS store.
    NoStore,
    /// Its krgd serves a store of another kDFS (id in hex).
    OtherFs { fs_id: String },
    /// Nothing answered: the member is failed, or cannot be reached.
    Down { why: String },
}

/// One member.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub node: NodeId,
    pub addr: SocketAddr,
    /// The membership's view (false: failed).
    pub member_online: bool,
    #[serde(flatten)]
    pub store: StoreState,
    /// Its store's mirror and the copies it keeps (a member that answers).
    pub replication: Option<ReplicaState>,
    /// The member that serves this node's store while it is down (its
    /// mirror took it over).
    pub served_by: Option<NodeId>,
}

/// The whole answer.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The node asked.
    pub local: NodeId,
    pub fs: FsFacts,
    /// Copies of each file: 1, or 2 (each store mirrored on the next
    /// member), as this node's store is formatted.
    pub copies: u32,
    pub nodes: Vec<NodeStatus>,
}

impl Status {
    /// Members whose files cannot be reached now (down, and no mirror
    /// serves them).
    pub fn down(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| matches!(n.store, StoreState::Down { .. }) && n.served_by.is_none())
            .map(|n| n.node)
            .collect()
    }
}

/// Ask the local krgd (`socket`) and every member (with the cluster key
/// in `keyfile`). With `mount`, first check that it mounts the store the
/// local krgd serves ([`crate::members::check_mount`]): a wrong one asks no member.
pub async fn gather(
    socket: &Path,
    keyfile: &Path,
    mount: Option<&Path>,
) -> Result<Status, KdfsError> {
    let Members {
        node,
        members,
        store,
        sb,
        cluster,
    } = crate::members::connect(socket, keyfile, mount).await?;
    let mut nodes = Vec::new();
    for m in members {
        let store = if m.online {
            ask(&cluster, m.id, sb.fs_id).await
        } else {
            StoreState::Down {
                why: "the membership counts it failed".into(),
            }
        };
        let replication = match store {
            StoreState::Serving { .. } => replication(&cluster, m.id).await,
            _ => None,
        };
        nodes.push(NodeStatus {
            node: m.id,
            addr: m.addr,
            member_online: m.online,
            store,
            replication,
            served_by: None,
        });
    }
    nodes.sort_by_key(|n| n.node);
    let serving: Vec<(NodeId, Vec<NodeId>)> = nodes
        .iter()
        .filter_map(|n| Some((n.node, n.replication.as_ref()?.serves_for.clone())))
        .collect();
    for n in nodes.iter_mut() {
        n.served_by = serving
            .iter()
            .find(|(_, of)| of.contains(&n.node))
            .map(|(by, _)| *by);
    }
    Ok(Status {
        local: node,
        fs: FsFacts {
            fs_id: format!("{:032x}", sb.fs_id),
            root_node: sb.root_node,
            store,
        },
        copies: u32::from(sb.replicas),
        nodes,
    })
}

/// One member's store, if it serves one of file system `fs_id`.
async fn ask(cluster: &Cluster, node: NodeId, fs_id: u128) -> StoreState {
    let down = |e: i32| StoreState::Down {
        why: std::io::Error::from_raw_os_error(e).to_string(),
    };
    match cluster
        .call_within(node, KdfsRequest::Hello, ASK_TIMEOUT)
        .await
    {
        Ok(KdfsResponse::Hello { fs_id: None, .. }) => return StoreState::NoStore,
        Ok(KdfsResponse::Hello {
            fs_id: Some(id), ..
        }) if id != fs_id => {
            return StoreState::OtherFs {
                fs_id: format!("{id:032x}"),
            }
        }
        Ok(KdfsResponse::Hello { .. }) => {}
        Ok(other) => {
            return StoreState::Down {
                why: format!("answered out of turn: {other:?}"),
            }
        }
        Err(e) => return down(e),
    }
    match cluster
        .call_within(node, KdfsRequest::Statfs, ASK_TIMEOUT)
        .await
    {
        Ok(KdfsResponse::Statfs {
            blocks,
            bfree,
            bavail,
            files,
            ffree,
            bsize,
        }) => {
            let b = u64::from(bsize);
            StoreState::Serving {
                size: blocks.saturating_mul(b),
                used: blocks.saturating_sub(bfree).saturating_mul(b),
                avail: bavail.saturating_mul(b),
                inodes: files,
                inodes_free: ffree,
            }
        }
        Ok(other) => StoreState::Down {
            why: format!("answered out of turn: {other:?}"),
        },
        Err(e) => down(e),
    }
}

/// How a member's store and the copies it keeps stand (`None`: it did
/// not say).
async fn replication(cluster: &Cluster, node: NodeId) -> Option<ReplicaState> {
    match cluster
        .call_within(node, KdfsRequest::Replication, ASK_TIMEOUT)
        .await
    {
        Ok(KdfsResponse::Replication(r)) => Some(r),
        _ => None,
    }
}

/// How a member's store is mirrored: `mirrored on node 3 (in sync) and
/// node 1 (copying: …)`, or why it is not.
fn mirrors_part(r: &ReplicaState, down: &[NodeId]) -> String {
    if !r.serving {
        return "not serving its store yet (claiming it, or taking it back)".to_string();
    }
    if r.mirrors.is_empty() {
        return "no mirror (no other member)".to_string();
    }
    let each: Vec<String> = r
        .mirrors
        .iter()
        .map(|m| match (&m.copying, m.synced) {
            _ if down.contains(&m.node) => format!("node {}, which is down", m.node),
            (_, true) => format!("node {} (in sync)", m.node),
            (Some(p), false) => format!(
                "node {} (copying: {} of {} objects looked at, {} sent)",
                m.node,
                p.done,
                p.of,
                human(p.bytes)
            ),
            (None, false) => format!("node {} (copying: not yet a full copy)", m.node),
        })
        .collect();
    let mut line = format!("mirrored on {}", each.join(" and "));
    if r.mirrors.iter().all(|m| down.contains(&m.node)) {
        line.push_str(": one copy until one is back");
    }
    line
}

/// The line saying how node `n`'s store is mirrored and what it serves
/// (`down`: the members whose stores answer nothing now).
fn replication_line(n: &NodeStatus, down: &[NodeId]) -> Option<String> {
    if let Some(by) = n.served_by {
        return Some(format!(
            "node {}: served by node {by}, its mirror, while it is down",
            n.node
        ));
    }
    let r = n.replication.as_ref()?;
    let mut parts = Vec::new();
    if r.replicas > 1 {
        parts.push(mirrors_part(r, down));
    }
    if let Some(c) = r.converting {
        parts.push(format!(
            "converting to {} copies once its mount stops writing in place ({} file handle(s) opened with passthrough still open there)",
            c.copies, c.in_place
        ));
    }
    let list = |v: &[NodeId]| {
        v.iter()
            .map(NodeId::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !r.copies_of.is_empty() {
        parts.push(format!(
            "keeps a full copy of node(s) {}",
            list(&r.copies_of)
        ));
    }
    if !r.partial_copies_of.is_empty() {
        parts.push(format!(
            "keeps the files of more copies of node(s) {}",
            list(&r.partial_copies_of)
        ));
    }
    if !r.serves_for.is_empty() {
        parts.push(format!(
            "serves the store of node(s) {}",
            list(&r.serves_for)
        ));
    }
    (!parts.is_empty()).then(|| format!("node {}: {}", n.node, parts.join("; ")))
}

/// `12.3G`-style size (powers of 1024).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// The table `kdfsctl status` prints.
pub fn render(s: &Status) -> String {
    let mut out = format!(
        "kDFS {} (root node {}), store {} on node {} (this node)\n",
        s.fs.fs_id,
        s.fs.root_node,
        s.fs.store.display(),
        s.local
    );
    if s.copies > 1 {
        out.push_str(&format!(
            "copies: {}: each node's store is mirrored on the next {}, which {} it \
             while that node is down\n",
            s.copies,
            if s.copies > 2 { "members" } else { "member" },
            if s.copies > 2 { "serve" } else { "serves" },
        ));
    } else {
        out.push_str(
            "copies: 1 (no replication): each file lives on the node that created it; \
             while that node is down its files answer ENOTCONN\n",
        );
    }
    out.push_str(&format!(
        "{:<6} {:<22} {:<9} {:>9} {:>9} {:>9} {:>5} {:>12}\n",
        "NODE", "ADDRESS", "STATE", "SIZE", "USED", "AVAIL", "USE%", "INODES USED"
    ));
    for n in &s.nodes {
        let addr = n.addr.to_string();
        let line = match &n.store {
            StoreState::Serving {
                size,
                used,
                avail,
                inodes,
                inodes_free,
            } => {
                // as df(1): of what users may fill (root's reserve left
                // out), rounded up
                let fill = used.saturating_add(*avail);
                let pct = if fill > 0 {
                    (used.saturating_mul(100)).div_ceil(fill)
                } else {
                    0
                };
                format!(
                    "{:<6} {addr:<22} {:<9} {:>9} {:>9} {:>9} {:>4}% {:>12}",
                    n.node,
                    "serving",
                    human(*size),
                    human(*used),
                    human(*avail),
                    pct,
                    inodes.saturating_sub(*inodes_free)
                )
            }
            StoreState::NoStore => format!("{:<6} {addr:<22} no store", n.node),
            StoreState::OtherFs { fs_id } => {
                format!("{:<6} {addr:<22} another kDFS ({fs_id})", n.node)
            }
            StoreState::Down { why } => format!("{:<6} {addr:<22} down: {why}", n.node),
        };
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let silent: Vec<NodeId> = s
        .nodes
        .iter()
        .filter(|n| matches!(n.store, StoreState::Down { .. }))
        .map(|n| n.node)
        .collect();
    for line in s.nodes.iter().filter_map(|n| replication_line(n, &silent)) {
        out.push_str(&line);
        out.push('\n');
    }
    let down = s.down();
    if !down.is_empty() {
        let list: Vec<String> = down.iter().map(NodeId::to_string).collect();
        out.push_str(&format!(
            "unreachable now: the files of node(s) {}\n",
            list.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(nodes: Vec<NodeStatus>) -> Status {
        Status {
            local: 1,
            fs: FsFacts {
                fs_id: "ab".repeat(16),
                root_node: 1,
                store: "/KDFS".into(),
            },
            copies: 1,
            nodes,
        }
    }

    fn node(id: NodeId, store: StoreState) -> NodeStatus {
        NodeStatus {
            node: id,
            addr: format!("127.0.0.1:{}", 7000 + id).parse().unwrap(),
            member_online: !matches!(store, StoreState::Down { .. }),
            store,
            replication: None,
            served_by: None,
        }
    }

    /// A store of 1 GiB, half its inodes used.
    fn serving() -> StoreState {
        StoreState::Serving {
            size: 1 << 30,
            used: 0,
            avail: 1 << 30,
            inodes: 10,
            inodes_free: 5,
        }
    }

    #[test]
    fn sizes_read_as_df_h_does() {
        assert_eq!(human(512), "512B");
        assert_eq!(human(1536), "1.5K");
        assert_eq!(human(20 << 30), "20.0G");
    }

    #[test]
    fn the_table_names_what_is_down() {
        let s = status(vec![
            node(
                1,
                StoreState::Serving {
                    size: 100 << 30,
                    used: 25 << 30,
                    avail: 75 << 30,
                    inodes: 1000,
                    inodes_free: 900,
                },
            ),
            node(2, StoreState::NoStore),
            node(
                3,
                StoreState::Down {
                    why: "the membership counts it failed".into(),
                },
            ),
        ]);
        let t = render(&s);
        assert!(t.contains("root node 1"), "{t}");
        assert!(
            t.lines().any(|l| l.starts_with("1 ")
                && l.contains("serving")
                && l.contains("25%")
                && l.ends_with(" 100")),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.starts_with("2 ") && l.contains("no store")),
            "{t}"
        );
        assert!(t.contains("unreachable now: the files of node(s) 3"), "{t}");
        assert_eq!(s.down(), vec![3]);
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["nodes"][0]["state"], "serving");
        assert_eq!(j["nodes"][2]["state"], "down");
        assert_eq!(j["copies"], 1);
    }

    #[test]
    fn a_copy_under_way_shows_how_far_it_is() {
        let mut n = node(2, serving());
        n.replication = Some(ReplicaState {
            replicas: 2,
            serving: true,
            generation: 7,
            mirrors: vec![
                krg_proto::kdfs::MirrorLink {
                    node: 3,
                    synced: false,
                    copying: Some(krg_proto::kdfs::CopyProgress {
                        done: 3,
                        of: 10,
                        bytes: 1 << 20,
                    }),
                },
                krg_proto::kdfs::MirrorLink {
                    node: 1,
                    synced: true,
                    copying: None,
                },
            ],
            copies_of: Vec::new(),
            partial_copies_of: Vec::new(),
            serves_for: Vec::new(),
            converting: None,
        });
        let mut s = status(vec![n]);
        s.copies = 2;
        let t = render(&s);
        assert!(
            t.contains(
                "node 2: mirrored on node 3 (copying: 3 of 10 objects looked at, 1.0M sent)"
            ),
            "{t}"
        );
    }

    #[test]
    fn a_conversion_waiting_for_a_mount_says_for_what() {
        let mut n = node(1, serving());
        n.replication = Some(ReplicaState {
            replicas: 1,
            serving: true,
            generation: 0,
            mirrors: Vec::new(),
            copies_of: Vec::new(),
            partial_copies_of: Vec::new(),
            serves_for: Vec::new(),
            converting: Some(krg_proto::kdfs::Converting {
                copies: 2,
                in_place: 1,
            }),
        });
        let t = render(&status(vec![n]));
        assert!(
            t.contains("node 1: converting to 2 copies once its mount stops writing in place (1 file handle(s) opened with passthrough still open there)"),
            "{t}"
        );
    }
}
