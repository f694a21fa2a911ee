//! The application and node files: `global_v<SN>.bin` (the application
//! as a whole) and `node_<N>_v<SN>.bin` (the tasks one node holds and the
//! objects they share: pipes, shared memory, SysV IPC).

use serde::{Deserialize, Serialize};

/// `global_v<SN>.bin`: the application as a whole.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GlobalImage {
    /// Application id: the PID of the checkpointed root process.
    pub app_id: i32,
    pub sn: u32,
    /// Bit N set: node N holds tasks of this checkpoint (a `node_<N>` file exists).
    pub node_mask: u64,
    pub created_unix: u64,
    pub uid: u32,
    pub kernel: String,
    /// How long the tree was frozen while this SN was taken, in microseconds.
    pub frozen_us: u64,
    /// The SN this one is incremental on (some task keeps pages of it);
    /// `None` when this SN starts a chain.
    pub parent: Option<u32>,
    /// Format 6: the tree ran in a PID namespace below checkpoint's (a
    /// `krg run` job): every task's and thread's PID as checkpoint saw it
    /// (the PIDs the other files record), with its number in the tree's
    /// own namespace. Empty: the tree ran in checkpoint's namespace.
    pub pidns: Vec<(i32, i32)>,
}

/// `node_<N>_v<SN>.bin`: the tasks node N holds, parents before children.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeImage {
    pub node: u32,
    pub tasks: Vec<TaskEntry>,
    /// Pipes shared by tasks of the tree, by id.
    pub pipes: Vec<PipeImage>,
    /// MAP_SHARED anonymous memory objects of the tree.
    pub shared_mem: Vec<SharedMemObject>,
    /// SysV shared memory segments attached by the tree.
    pub sysv_shm: Vec<SysvShmImage>,
    /// SysV semaphore sets and message queues named at checkpoint time.
    pub sysv_sem: Vec<SemImage>,
    pub sysv_msg: Vec<MsgImage>,
    /// Files in flight on the tree's unix sockets (sent with SCM_RIGHTS,
    /// not received yet), format 5 (older files refused them).
    pub in_flight: Vec<InFlight>,
    /// What the tree's sockets have beyond their
    /// [`SocketImage`](super::SocketImage)s, format 5 (older files refused
    /// closing TCP connections, and lost the rest).
    pub sockets: Vec<SocketExtras>,
    /// The stand-ins of the tree (processes that moved to other nodes,
    /// saved there), format 7 (older files refused them).
    pub stand_ins: Vec<StandInEntry>,
}

impl NodeImage {
    /// Node `node`'s file with nothing in it yet.
    pub fn empty(node: u32) -> Self {
        NodeImage {
            node,
            tasks: Vec::new(),
            pipes: Vec::new(),
            shared_mem: Vec::new(),
            sysv_shm: Vec::new(),
            sysv_sem: Vec::new(),
            sysv_msg: Vec::new(),
            in_flight: Vec::new(),
            sockets: Vec::new(),
            stand_ins: Vec::new(),
        }
    }
}

/// A stand-in of the tree: `krg` in the place of a process that moved
/// to another node (see [`crate::standin`]). It holds nothing of the
/// process — the node it runs on saved that, as [`PartRef`] says — only
/// what its parent and its shell know it by. Restart forks it again with
/// its PID, process group, session and fds 0-2, its parent's credentials
/// (none are read from the image, which its user may have edited), and
/// makes it a stand-in again for the process restored on its node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StandInEntry {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Its command line (the moved process's, which `ps` shows).
    pub argv: Vec<Vec<u8>>,
    /// Its fds 0-2 that are open: each the same open file as a task of
    /// the tree has ([`FdKind`](super::FdKind) copied from that task's
    /// fd), or stdio leading out of the tree (`InheritedStdio`: restart's
    /// own fd of the same number). A number missing was closed.
    pub stdio: Vec<super::FdImage>,
    /// Where the process runs and was saved.
    pub part: PartRef,
}

/// The part of an application that a node other than the tree's saved:
/// a process that moved there, saved by that node in its own checkpoint
/// store (`/var/chkpt/<host_pid>/`, SN `sn`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartRef {
    /// The node it runs on.
    pub node: u32,
    /// Its PID as that node's `krg ps` shows it (in its job's namespace:
    /// the PID it had here).
    pub pid: i32,
    /// Its PID on that node (the directory of its image there).
    pub host_pid: i32,
    pub sn: u32,
}

/// What a socket of the tree has beyond its [`SocketImage`](super::SocketImage).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SocketExtras {
    /// The socket's inode.
    pub sock: u64,
    pub shutdown: Shutdown,
    /// Its options that a new socket of its kind does not have (of
    /// [`sockopts::TABLE`](crate::sockopts::TABLE)).
    pub options: Vec<SockOption>,
    /// A unix socket bound to a path that was removed since (or now names
    /// something else): restart binds it, then removes the path again.
    pub unlinked: bool,
    /// A unix socket whose connection waited in the accept queue of a
    /// listening socket of the tree (its `remote`): its place there.
    /// Restart connects it again, in that order, once the listener listens.
    pub accept_order: Option<u32>,
    /// A datagram socket with no peer in the tree: the address each queued
    /// message came from (empty: unnamed), so restart sends it again from
    /// the tree's socket bound there, or from a new unnamed one.
    pub senders: Vec<Vec<u8>>,
    /// Its classic BPF filter (SO_ATTACH_FILTER), raw `struct sock_filter`
    /// words; empty when none.
    pub filter: Vec<u64>,
    /// A TCP socket whose connect was under way (SYN_SENT, to its
    /// `remote`): restart starts the connect again, without waiting.
    pub connecting: bool,
}

/// A socket option as `getsockopt` gave it: `setsockopt(level, name,
/// value)` sets it again (an int, a device name, a struct linger or
/// timeval).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SockOption {
    pub level: i32,
    pub name: i32,
    pub value: Vec<u8>,
}

impl SockOption {
    /// An int option.
    pub fn int(level: i32, name: i32, value: i32) -> Self {
        SockOption {
            level,
            name,
            value: value.to_ne_bytes().to_vec(),
        }
    }
}

/// A socket shut down in one direction or both: a TCP connection past
/// ESTABLISHED (FIN_WAIT1/2, CLOSE_WAIT, CLOSING, LAST_ACK: `send` its own
/// FIN is out, `receive` the peer's arrived; its
/// [`TcpRepair`](super::TcpRepair) sequence numbers leave those FINs out,
/// restart sends its own again and takes the peer's as read), or a unix
/// socket (`shutdown(2)` on it or on its peer).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Shutdown {
    /// It sends no more (SEND_SHUTDOWN).
    pub send: bool,
    /// It receives no more: reads end after the queued data (RCV_SHUTDOWN).
    pub receive: bool,
}

impl Shutdown {
    pub fn any(&self) -> bool {
        self.send || self.receive
    }
}

/// The files one queued message of a unix socket carries (SCM_RIGHTS):
/// restart sends them again with the message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InFlight {
    /// The receiving socket's inode (a [`SocketImage`](super::SocketImage)
    /// of the tree).
    pub sock: u64,
    /// Which of its queued messages carries them (index in `queued`).
    pub msg: u32,
    /// The files, in the order they were sent. Each is a pipe end of the
    /// tree or an open file description numbered like the tasks' (`fd` is
    /// its position).
    pub files: Vec<super::FdImage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskEntry {
    pub pid: i32,
    /// Parent PID; the root's parent is outside the checkpoint.
    pub ppid: i32,
    pub threads: Vec<i32>,
    /// A process that had exited and was not reaped yet: it has no task or
    /// memory file, and is restored as a zombie again.
    pub zombie: Option<Zombie>,
}

/// What a zombie keeps for its parent.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Zombie {
    /// Its exit status as `waitpid` reports it.
    pub status: i32,
    pub pgid: i32,
    pub sid: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PipeImage {
    /// Inode number of the pipe at checkpoint time (its identity).
    pub ino: u64,
    /// Bytes that were buffered in the pipe.
    pub data: Vec<u8>,
}

/// A MAP_SHARED anonymous memory object (also a memfd) of the tree.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct SharedMemObject {
    /// The shmem inode at checkpoint time (its identity).
    pub id: u64,
    pub size: u64,
}

/// A SysV shared memory segment attached by the tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SysvShmImage {
    pub shmid: i32,
    pub key: i32,
    pub size: u64,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    /// IPC_RMID was done: removed again once the tree is attached.
    pub destroyed: bool,
}

/// A SysV semaphore set named at checkpoint time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SemImage {
    pub semid: i32,
    pub key: i32,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub values: Vec<u16>,
}

/// A SysV message queue named at checkpoint time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MsgImage {
    pub msqid: i32,
    pub key: i32,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    /// Queued messages, oldest first.
    pub msgs: Vec<QueuedMessage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueuedMessage {
    pub mtype: i64,
    pub text: Vec<u8>,
}
