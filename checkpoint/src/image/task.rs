//! The task file, `task_<PID>_v<SN>.bin`: one process and its threads —
//! credentials, fds, signal state, limits, registers.

use serde::{Deserialize, Serialize};

use super::held::{
    DeletedImage, FanotifyImage, FifoImage, HeldLock, InotifyWatch, MqueueImage, PtyImage,
};

/// `task_<PID>_v<SN>.bin`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskImage {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    pub exe: String,
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cwd: String,
    pub umask: u32,
    /// Process group and session ids; restored when their leader is in the
    /// tree, else the task joins restart's.
    pub pgid: i32,
    pub sid: i32,
    /// personality(2) flags.
    pub personality: u32,
    /// PR_SET_NO_NEW_PRIVS was set.
    pub no_new_privs: bool,
    pub rlimits: Vec<Rlimit>,
    pub sigactions: Vec<SigAction>,
    pub itimers: Vec<ITimer>,
    pub altstack: AltStack,
    pub fds: Vec<FdImage>,
    pub threads: Vec<ThreadImage>,
    /// File locks the task holds (see [`HeldLock`]). Version 2 files
    /// written before locks were saved end before it: they are read
    /// without (`image::v2`), as file locks were refused then.
    pub locks: Vec<HeldLock>,
    /// Attributes saved since format version 3 (none in older files).
    pub attrs: super::TaskAttrs,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rlimit {
    pub resource: u32,
    pub cur: u64,
    pub max: u64,
}

/// The kernel's `struct sigaction` for x86_64 (`rt_sigaction`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct SigAction {
    pub sig: u32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// One `struct itimerval` (which: 0 real, 1 virtual, 2 prof), in microseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ITimer {
    pub which: u32,
    pub interval_us: u64,
    pub value_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FdImage {
    pub fd: i32,
    /// `flags:` of fdinfo (open flags incl. O_CLOEXEC).
    pub flags: u32,
    pub kind: FdKind,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum FdKind {
    /// A regular file, directory or allowed device, reopened by path at `pos`.
    Path {
        path: String,
        pos: u64,
        /// Open file description: fds (of any task) with the same number
        /// share one (offset and status flags), as after dup() or fork().
        file: u32,
    },
    /// fd 0-2 connected to a terminal, a pipe or a socket outside the tree:
    /// restart gives the process its own fd of the same number.
    InheritedStdio { what: String },
    /// One end of a pipe of the tree (see [`PipeImage`](super::app::PipeImage)).
    Pipe { ino: u64, write_end: bool },
    /// An eventfd: its counter (and EFD_SEMAPHORE).
    EventFd {
        file: u32,
        count: u64,
        semaphore: bool,
    },
    /// A timerfd: clock, expirations not read yet, and the time left until
    /// it fires (restored relative: what the restore takes is lost).
    TimerFd {
        file: u32,
        clock: i32,
        ticks: u64,
        value_ns: u64,
        interval_ns: u64,
    },
    /// A signalfd and the signals it reads.
    SignalFd { file: u32, mask: u64 },
    /// An epoll instance and what is registered in it (the fd numbers are
    /// those of the task that holds it).
    Epoll { file: u32, items: Vec<EpollItem> },
    /// A socket (see [`SocketImage`]).
    Socket { file: u32, sock: SocketImage },
    /// A FIFO (named pipe), opened again by path.
    Fifo { file: u32, fifo: FifoImage },
    /// A regular file deleted while open: its content is in the image.
    Deleted { file: u32, del: DeletedImage },
    /// An inotify instance and its watches (added again by path).
    Inotify {
        file: u32,
        watches: Vec<InotifyWatch>,
    },
    /// A POSIX message queue and the messages in it.
    Mqueue { file: u32, mq: MqueueImage },
    /// A pipe or terminal on an fd above 2 leading outside the tree:
    /// restart gives it its own stdin (read end) or stdout (write end),
    /// or what `--inherit-fd` names for this fd.
    External { file: u32, what: String },
    /// The master side of a pseudo-terminal (`/dev/ptmx`), format 4.
    PtyMaster { file: u32, pty: PtyImage },
    /// The slave side (`/dev/pts/N`) of a pseudo-terminal whose master is
    /// in the tree, format 4.
    PtySlave { file: u32, index: u32 },
    /// A pidfd of a process of the tree, or of a thread of the process
    /// that holds it (`PIDFD_THREAD`: O_EXCL among the flags), format 5.
    /// Made again by `pidfd_open` once its target exists.
    Pidfd { pid: i32 },
    /// A fanotify group and its marks (root only), format 5.
    Fanotify { file: u32, fa: FanotifyImage },
}

/// A socket as restart makes it again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SocketImage {
    /// Its inode at checkpoint time (the identity a unix peer names).
    pub ino: u64,
    /// AF_UNIX, AF_INET, AF_INET6.
    pub family: i32,
    /// SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET.
    pub stype: i32,
    pub protocol: i32,
    /// The bound address (`sockaddr` bytes); empty when not bound.
    pub local: Vec<u8>,
    /// The address it is connected to (empty when not connected).
    pub remote: Vec<u8>,
    /// Listening, with this backlog.
    pub listen: Option<i32>,
    /// A unix socket connected to another one of the tree: that one's inode.
    pub peer: Option<u64>,
    /// Data waiting to be read on it: one chunk for a stream, one entry per
    /// message otherwise (the peer sends it again at restart).
    pub queued: Vec<Vec<u8>>,
    /// Mode of a bound unix socket's file.
    pub mode: u32,
    pub opts: SockOpts,
    /// An established TCP connection, taken with TCP_REPAIR.
    pub tcp: Option<TcpRepair>,
}

/// Socket options carried over (those a server sets before `bind`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct SockOpts {
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub keepalive: bool,
    pub broadcast: bool,
    pub nodelay: bool,
    pub v6only: bool,
    pub passcred: bool,
}

/// The state TCP_REPAIR reads from an established connection and sets
/// on the new socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TcpRepair {
    pub send_seq: u32,
    pub recv_seq: u32,
    /// Sent (or not yet sent) and not acknowledged.
    pub send_queue: Vec<u8>,
    /// Received, not read yet.
    pub recv_queue: Vec<u8>,
    pub mss: u32,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// TCPI_OPT_* bits of TCP_INFO (timestamps, SACK, window scaling).
    pub options: u8,
    pub timestamp: u32,
    /// struct tcp_repair_window: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup.
    pub window: [u32; 5],
}

/// One registration of an epoll instance.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct EpollItem {
    pub tfd: i32,
    pub events: u32,
    pub data: u64,
}

impl FdKind {
    /// The open file description number, for kinds restored once for the
    /// tree and shared by every fd that had it.
    pub fn file(&self) -> Option<u32> {
        match self {
            FdKind::Path { file, .. }
            | FdKind::EventFd { file, .. }
            | FdKind::TimerFd { file, .. }
            | FdKind::SignalFd { file, .. }
            | FdKind::Epoll { file, .. }
            | FdKind::Socket { file, .. }
            | FdKind::Fifo { file, .. }
            | FdKind::Deleted { file, .. }
            | FdKind::Inotify { file, .. }
            | FdKind::Mqueue { file, .. }
            | FdKind::External { file, .. }
            | FdKind::PtyMaster { file, .. }
            | FdKind::PtySlave { file, .. }
            | FdKind::Fanotify { file, .. } => Some(*file),
            FdKind::InheritedStdio { .. } | FdKind::Pipe { .. } | FdKind::Pidfd { .. } => None,
        }
    }

    fn file_mut(&mut self) -> Option<&mut u32> {
        match self {
            FdKind::Path { file, .. }
            | FdKind::EventFd { file, .. }
            | FdKind::TimerFd { file, .. }
            | FdKind::SignalFd { file, .. }
            | FdKind::Epoll { file, .. }
            | FdKind::Socket { file, .. }
            | FdKind::Fifo { file, .. }
            | FdKind::Deleted { file, .. }
            | FdKind::Inotify { file, .. }
            | FdKind::Mqueue { file, .. }
            | FdKind::External { file, .. }
            | FdKind::PtyMaster { file, .. }
            | FdKind::PtySlave { file, .. }
            | FdKind::Fanotify { file, .. } => Some(file),
            FdKind::InheritedStdio { .. } | FdKind::Pipe { .. } | FdKind::Pidfd { .. } => None,
        }
    }

    /// Number this fd's open file description (see [`FdKind::file`]).
    pub fn set_file(&mut self, n: u32) {
        if let Some(f) = self.file_mut() {
            *f = n;
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThreadImage {
    pub tid: i32,
    /// `struct user_regs_struct` as the kernel returns it (NT_PRSTATUS).
    pub regs: Vec<u8>,
    /// NT_X86_XSTATE (FPU, SSE, AVX…) as the kernel returns it.
    pub xstate: Vec<u8>,
    pub sigmask: u64,
    /// Pending signals of this thread (PTRACE_PEEKSIGINFO), raw siginfo.
    pub pending: Vec<Vec<u8>>,
    /// Registered rseq area (address 0 if none).
    pub rseq: Rseq,
    /// set_tid_address (CLONE_CHILD_CLEARTID) pointer: pthread_join relies on it.
    pub clear_tid: u64,
    /// Thread name (/proc/PID/task/TID/comm); without it a restored task
    /// would be called "restart".
    pub comm: String,
}

/// `sigaltstack` (flags SS_DISABLE when there is none).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct AltStack {
    pub sp: u64,
    pub flags: u32,
    pub size: u64,
}

/// A thread's registered rseq area.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub sig: u32,
}

/// A socket in words: family, type, addresses, state.
pub fn describe_socket(s: &SocketImage) -> String {
    let fam = match s.family {
        libc::AF_UNIX => "unix",
        libc::AF_INET => "ipv4",
        libc::AF_INET6 => "ipv6",
        _ => "socket",
    };
    let ty = match s.stype {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "?",
    };
    let mut out = format!("{fam} {ty} socket");
    if !s.local.is_empty() {
        out += &format!(" at {}", addr_text(&s.local));
    }
    if let Some(b) = s.listen {
        out += &format!(", listening (backlog {b})");
    }
    if let Some(p) = s.peer {
        out += &format!(", connected to socket {p} of the tree");
    } else if !s.remote.is_empty() {
        out += &format!(", connected to {}", addr_text(&s.remote));
    }
    if s.tcp.is_some() {
        out += ", established (TCP_REPAIR)";
    }
    let q: usize = s.queued.iter().map(|m| m.len()).sum();
    if q > 0 {
        out += &format!(", {q} byte(s) queued");
    }
    out
}

/// A `sockaddr` (unix, inet, inet6) in words.
pub fn addr_text(a: &[u8]) -> String {
    let fam = a.get(..2).map_or(0, |f| u16::from_le_bytes([f[0], f[1]])) as i32;
    match fam {
        libc::AF_UNIX => {
            let p = a.get(2..).unwrap_or(&[]);
            match p.first() {
                Some(0) => format!("@{}", String::from_utf8_lossy(&p[1..])),
                _ => {
                    String::from_utf8_lossy(p.split(|&c| c == 0).next().unwrap_or(&[])).into_owned()
                }
            }
        }
        libc::AF_INET if a.len() >= 8 => {
            let port = u16::from_be_bytes([a[2], a[3]]);
            format!("{}.{}.{}.{}:{port}", a[4], a[5], a[6], a[7])
        }
        libc::AF_INET6 if a.len() >= 24 => {
            let port = u16::from_be_bytes([a[2], a[3]]);
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[8..24]);
            format!("[{}]:{port}", std::net::Ipv6Addr::from(ip))
        }
        _ => format!("{a:?}"),
    }
}

/// A small task image for tests.
#[cfg(test)]
pub fn sample_task(uid: u32, gid: u32, groups: Vec<u32>) -> TaskImage {
    TaskImage {
        pid: 10,
        ppid: 1,
        comm: "x".into(),
        exe: "/bin/true".into(),
        uids: [uid; 4],
        gids: [gid; 4],
        groups,
        cwd: "/".into(),
        umask: 0o22,
        pgid: 10,
        sid: 10,
        personality: 0,
        no_new_privs: false,
        rlimits: Vec::new(),
        sigactions: Vec::new(),
        itimers: Vec::new(),
        altstack: AltStack {
            sp: 0,
            flags: 2,
            size: 0,
        },
        fds: Vec::new(),
        threads: Vec::new(),
        locks: Vec::new(),
        attrs: Default::default(),
    }
}
