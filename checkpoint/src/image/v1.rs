//! Format version 1, as written before incremental checkpoints: the types
//! as they were, and their conversion to the current ones, so that images
//! taken by an older krg still restart. Only what changed is copied here.

use serde::{Deserialize, Serialize};

use super::{
    AltStack, FdImage, GlobalImage, ITimer, MmImage, MmParams, MsgImage, NodeImage, PageRun,
    PipeImage, Rlimit, RunData, SemImage, SharedMemObject, SigAction, SysvShmImage, TaskEntry,
    TaskImage, ThreadImage, Vma, VmaKind,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GlobalV1 {
    pub app_id: i32,
    pub sn: u32,
    pub node_mask: u64,
    pub created_unix: u64,
    pub uid: u32,
    pub kernel: String,
}

impl From<GlobalV1> for GlobalImage {
    fn from(g: GlobalV1) -> Self {
        GlobalImage {
            app_id: g.app_id,
            sn: g.sn,
            node_mask: g.node_mask,
            created_unix: g.created_unix,
            uid: g.uid,
            kernel: g.kernel,
            frozen_us: 0,
            parent: None,
            pidns: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MmV1 {
    pub vmas: Vec<VmaV1>,
    pub params: MmParams,
    pub shared_pending: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmaV1 {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub shared: bool,
    pub kind: VmaKind,
    pub runs: Vec<RunV1>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RunV1 {
    pub addr: u64,
    pub pages: u64,
    pub data_off: u64,
}

/// Version 1 pages carry no CRC: `crcs` stays empty (the loader accepts
/// that from version 1 files only).
impl From<MmV1> for MmImage {
    fn from(m: MmV1) -> Self {
        MmImage {
            vmas: m
                .vmas
                .into_iter()
                .map(|v| Vma {
                    start: v.start,
                    end: v.end,
                    prot: v.prot,
                    shared: v.shared,
                    kind: v.kind,
                    runs: v
                        .runs
                        .into_iter()
                        .map(|r| PageRun {
                            addr: r.addr,
                            pages: r.pages,
                            data: RunData::Here {
                                off: r.data_off,
                                crcs: Vec::new(),
                            },
                        })
                        .collect(),
                })
                .collect(),
            params: m.params,
            shared_pending: m.shared_pending,
            parent: None,
            tracker: None,
            start_time: 0,
            frozen_us: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeV1 {
    pub node: u32,
    pub tasks: Vec<TaskEntryV1>,
    pub pipes: Vec<PipeImage>,
    pub shared_mem: Vec<SharedMemObject>,
    pub sysv_shm: Vec<SysvShmImage>,
    pub sysv_sem: Vec<SemImage>,
    pub sysv_msg: Vec<MsgImage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskEntryV1 {
    pub pid: i32,
    pub ppid: i32,
    pub threads: Vec<i32>,
}

impl From<NodeV1> for NodeImage {
    fn from(n: NodeV1) -> Self {
        NodeImage {
            node: n.node,
            tasks: n
                .tasks
                .into_iter()
                .map(|t| TaskEntry {
                    pid: t.pid,
                    ppid: t.ppid,
                    threads: t.threads,
                    zombie: None,
                })
                .collect(),
            pipes: n.pipes,
            shared_mem: n.shared_mem,
            sysv_shm: n.sysv_shm,
            sysv_sem: n.sysv_sem,
            sysv_msg: n.sysv_msg,
            in_flight: Vec::new(),
            sockets: Vec::new(),
            stand_ins: Vec::new(),
        }
    }
}

/// The task file before file locks (version 1, and version 2 as first
/// written: see [`v2::decode_task`](super::v2::decode_task)).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskV1 {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    pub exe: String,
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cwd: String,
    pub umask: u32,
    pub pgid: i32,
    pub sid: i32,
    pub personality: u32,
    pub no_new_privs: bool,
    pub rlimits: Vec<Rlimit>,
    pub sigactions: Vec<SigAction>,
    pub itimers: Vec<ITimer>,
    pub altstack: AltStack,
    /// Version 1 knew files, inherited stdio and pipes: the first
    /// variants of today's [`FdKind`](super::FdKind), unchanged.
    pub fds: Vec<FdImage>,
    pub threads: Vec<ThreadImage>,
}

impl From<TaskV1> for TaskImage {
    fn from(t: TaskV1) -> Self {
        TaskImage {
            pid: t.pid,
            ppid: t.ppid,
            comm: t.comm,
            exe: t.exe,
            uids: t.uids,
            gids: t.gids,
            groups: t.groups,
            cwd: t.cwd,
            umask: t.umask,
            pgid: t.pgid,
            sid: t.sid,
            personality: t.personality,
            no_new_privs: t.no_new_privs,
            rlimits: t.rlimits,
            sigactions: t.sigactions,
            itimers: t.itimers,
            altstack: t.altstack,
            fds: t.fds,
            threads: t.threads,
            locks: Vec::new(),
            attrs: super::TaskAttrs::unsaved(),
        }
    }
}
