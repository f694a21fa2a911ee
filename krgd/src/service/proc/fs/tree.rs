//! What the /krg tree holds: which entries exist, their attributes (the
//! kernel checks access by them: the mount uses default_permissions), and
//! the content of the files that are generated when opened.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use fuser::{FileAttr, FileType, INodeNo};
use krg_proto::cluster::NodeState;
use krg_proto::proc::ProcRow;
use krg_proto::NodeId;

use super::super::fanout;
use super::super::state::ProcState;
use super::inode::{Entry, Inodes, NodeFile, ProcFile, SessFile};
use super::xcpu::{errno_of, Sessions};
use crate::service::sched::SchedService;
use crate::sync;

/// The tree's state.
pub struct Tree {
    /// The process service's state.
    pub st: Arc<ProcState>,
    /// For placement (the hub asks it).
    pub sched: Arc<SchedService>,
    /// XCPU sessions.
    pub sessions: Arc<Sessions>,
    /// Inode numbers.
    pub inodes: Mutex<Inodes>,
    /// The process table as last listed (owners of `proc/` entries).
    procs: Mutex<HashMap<(NodeId, i32), ProcRow>>,
    /// Mode of every `clone` file (root may change it).
    pub clone_mode: AtomicU32,
    born: SystemTime,
}

fn attr(ino: u64, kind: FileType, perm: u16, uid: u32, gid: u32, at: SystemTime) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: at,
        mtime: at,
        ctime: at,
        crtime: at,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// `3:4096` → (3, 4096).
pub fn parse_proc_name(name: &str) -> Option<(NodeId, i32)> {
    let (n, p) = name.split_once(':')?;
    let node = krg_proto::nodeset::parse_id(n).ok()?;
    let pid = p.parse::<i32>().ok().filter(|p| *p > 0)?;
    Some((node, pid))
}

impl Tree {
    /// A tree over the service's state.
    pub fn new(st: Arc<ProcState>, sched: Arc<SchedService>) -> Tree {
        Tree {
            st,
            sched,
            sessions: Arc::default(),
            inodes: Mutex::default(),
            procs: Mutex::default(),
            clone_mode: AtomicU32::new(0o666),
            born: SystemTime::now(),
        }
    }

    /// Inode of `e`.
    pub fn ino(&self, e: Entry) -> u64 {
        sync::lock(&self.inodes).ino(e)
    }

    /// Entry of `ino`.
    pub fn entry(&self, ino: u64) -> Option<Entry> {
        sync::lock(&self.inodes).entry(ino)
    }

    /// Nodes with a directory: every member (this node alone without a cluster).
    pub fn nodes(&self) -> Vec<NodeId> {
        let view = self.st.ctx.view();
        let mut ids: Vec<NodeId> = view.members().map(|n| n.id).collect();
        if ids.is_empty() {
            ids.push(self.st.node());
        }
        ids.sort_unstable();
        ids
    }

    fn has_node(&self, id: NodeId) -> bool {
        self.nodes().contains(&id)
    }

    /// Attributes of `e` (numbered `ino`), if it exists.
    pub fn attr(&self, ino: u64, e: Entry) -> Option<FileAttr> {
        let (dir, file) = (FileType::Directory, FileType::RegularFile);
        let t = self.born;
        Some(match e {
            Entry::Root | Entry::Nodes | Entry::Procs => attr(ino, dir, 0o555, 0, 0, t),
            Entry::Node(id) | Entry::Xcpu(id) => {
                self.has_node(id).then_some(())?;
                attr(ino, dir, 0o555, 0, 0, t)
            }
            Entry::NodeFile(id, _) => {
                self.has_node(id).then_some(())?;
                attr(ino, file, 0o444, 0, 0, t)
            }
            Entry::Clone(id) => {
                self.has_node(id).then_some(())?;
                let mode = self.clone_mode.load(Ordering::Relaxed) as u16;
                attr(ino, file, mode, 0, 0, t)
            }
            Entry::Session(id, n) => {
                let s = self.sessions.get(id, n)?;
                attr(ino, dir, 0o700, s.owner.uid, s.owner.gid, t)
            }
            Entry::SessFile(id, n, f) => {
                let s = self.sessions.get(id, n)?;
                let perm = match f {
                    SessFile::Argv | SessFile::Env | SessFile::Cwd | SessFile::Ctl => 0o600,
                    SessFile::Exec | SessFile::Stdin => 0o200,
                    _ => 0o400,
                };
                attr(ino, file, perm, s.owner.uid, s.owner.gid, t)
            }
            Entry::Proc(node, pid) => {
                let uid = sync::lock(&self.procs).get(&(node, pid))?.uid;
                attr(ino, dir, 0o555, uid, 0, t)
            }
            Entry::ProcFile(node, pid, f) => {
                let uid = sync::lock(&self.procs).get(&(node, pid))?.uid;
                let perm = if f == ProcFile::Signal { 0o200 } else { 0o444 };
                attr(ino, file, perm, uid, 0, t)
            }
        })
    }

    /// The child `name` of `parent`, when it can be known without asking
    /// other nodes (Err(()) for `proc/<node>:<pid>`, which needs a table).
    pub fn child(&self, parent: Entry, name: &str) -> Result<Option<Entry>, (NodeId, i32)> {
        Ok(match parent {
            Entry::Root => match name {
                "nodes" => Some(Entry::Nodes),
                "proc" => Some(Entry::Procs),
                _ => None,
            },
            Entry::Nodes => name
                .parse::<NodeId>()
                .ok()
                .filter(|id| self.has_node(*id))
                .map(Entry::Node),
            Entry::Node(id) if name == "xcpu" => Some(Entry::Xcpu(id)),
            Entry::Node(id) => NodeFile::from_name(name).map(|f| Entry::NodeFile(id, f)),
            Entry::Xcpu(id) if name == "clone" => Some(Entry::Clone(id)),
            Entry::Xcpu(id) => name
                .parse::<u64>()
                .ok()
                .filter(|n| self.sessions.get(id, *n).is_some())
                .map(|n| Entry::Session(id, n)),
            Entry::Session(id, n) => SessFile::from_name(name).map(|f| Entry::SessFile(id, n, f)),
            Entry::Procs => match parse_proc_name(name) {
                Some(key) => return Err(key),
                None => None,
            },
            Entry::Proc(node, pid) => {
                ProcFile::from_name(name).map(|f| Entry::ProcFile(node, pid, f))
            }
            _ => None,
        })
    }

    /// Children of a directory other than `proc/`.
    pub fn children(&self, e: Entry) -> Vec<(String, Entry)> {
        match e {
            Entry::Root => vec![
                ("nodes".into(), Entry::Nodes),
                ("proc".into(), Entry::Procs),
            ],
            Entry::Nodes => self
                .nodes()
                .into_iter()
                .map(|id| (id.to_string(), Entry::Node(id)))
                .collect(),
            Entry::Node(id) => {
                let mut v: Vec<(String, Entry)> = NodeFile::ALL
                    .iter()
                    .map(|f| (f.name().into(), Entry::NodeFile(id, *f)))
                    .collect();
                v.push(("xcpu".into(), Entry::Xcpu(id)));
                v
            }
            Entry::Xcpu(id) => {
                let mut v = vec![("clone".to_string(), Entry::Clone(id))];
                v.extend(
                    self.sessions
                        .of_node(id)
                        .into_iter()
                        .map(|n| (n.to_string(), Entry::Session(id, n))),
                );
                v
            }
            Entry::Session(id, n) => SessFile::ALL
                .iter()
                .map(|f| (f.name().into(), Entry::SessFile(id, n, *f)))
                .collect(),
            Entry::Proc(node, pid) => ProcFile::ALL
                .iter()
                .map(|f| (f.name().into(), Entry::ProcFile(node, pid, *f)))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// List the process table (of one node, or all), remembering it.
    pub async fn list_procs(&self, node: Option<NodeId>) -> Vec<ProcRow> {
        let (rows, _) = fanout::ps(&self.st, node.map(|n| vec![n]), None).await;
        let mut cache = sync::lock(&self.procs);
        match node {
            Some(n) => cache.retain(|(a, _), _| *a != n),
            None => cache.clear(),
        }
        for r in &rows {
            cache.insert((r.node, r.pid), r.clone());
        }
        rows
    }

    /// The entries of the table as last listed, in order.
    pub fn cached_procs(&self) -> Vec<(NodeId, i32)> {
        let mut keys: Vec<(NodeId, i32)> = sync::lock(&self.procs).keys().copied().collect();
        keys.sort_unstable();
        keys
    }

    /// One process of the table, asked of its node now.
    pub async fn proc_row(&self, node: NodeId, pid: i32) -> Option<ProcRow> {
        self.list_procs(Some(node))
            .await
            .into_iter()
            .find(|r| r.pid == pid)
    }

    /// Content of a file of `nodes/<id>/`.
    pub async fn node_file(&self, id: NodeId, f: NodeFile) -> Result<Vec<u8>, i32> {
        let view = self.st.ctx.view();
        let info = view.node(id);
        let text = match f {
            NodeFile::State => match info {
                Some(n) => n.state.to_string(),
                None if id == self.st.node() => NodeState::Present.to_string(),
                None => return Err(libc::ENOENT),
            },
            NodeFile::Address => match info {
                Some(n) => n.addr.to_string(),
                None => self.st.ctx.config.advertise.to_string(),
            },
            NodeFile::Mac => match info.map(|n| n.mac).unwrap_or(self.st.ctx.mac) {
                Some(m) => m.to_string(),
                None => "-".into(),
            },
            other => {
                let s = fanout::stat(&self.st, id).await.map_err(|e| errno_of(&e))?;
                match other {
                    NodeFile::Load => s.load,
                    NodeFile::MemFree => s.mem_free.to_string(),
                    NodeFile::Uptime => s.uptime_s.to_string(),
                    NodeFile::Arch => s.arch,
                    _ => s.uname,
                }
            }
        };
        Ok(format!("{text}\n").into_bytes())
    }
}

/// Content of a file of `proc/<node>:<pid>/`.
pub fn proc_file(r: &ProcRow, f: ProcFile) -> Vec<u8> {
    let name = r
        .command
        .split_whitespace()
        .next()
        .unwrap_or("")
        .rsplit('/')
        .next()
        .unwrap_or("");
    match f {
        ProcFile::Cmdline => format!("{}\n", r.command),
        ProcFile::Status => format!(
            "Name:\t{name}\nState:\t{}\nNode:\t{}\nPid:\t{}\nPPid:\t{}\nUid:\t{}\nUser:\t{}\nVmRSS:\t{} kB\nCpuTime:\t{} ms\nElapsed:\t{} s\n",
            r.state, r.node, r.pid, r.ppid, r.uid, r.user, r.rss_kib, r.cpu_ms, r.elapsed_s
        ),
        ProcFile::Stat => format!(
            "{} ({name}) {} {} {} {} {} {} {}\n",
            r.pid, r.state, r.ppid, r.uid, r.cpu_ms, r.rss_kib, r.elapsed_s, r.node
        ),
        ProcFile::Signal => String::new(),
    }
    .into_bytes()
}
