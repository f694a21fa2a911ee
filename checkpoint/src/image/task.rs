//! The task file, `task_<PID>_v<SN>.bin`: one process and its threads —
//! credentials, fds, signal state, limits, registers.

use serde::{Deserialize, Serialize};

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
    /// One end of a pipe of the tree (see [`PipeImage`]).
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
            | FdKind::Epoll { file, .. } => Some(*file),
            FdKind::InheritedStdio { .. } | FdKind::Pipe { .. } => None,
        }
    }

    fn file_mut(&mut self) -> Option<&mut u32> {
        match self {
            FdKind::Path { file, .. }
            | FdKind::EventFd { file, .. }
            | FdKind::TimerFd { file, .. }
            | FdKind::SignalFd { file, .. }
            | FdKind::Epoll { file, .. } => Some(file),
            FdKind::InheritedStdio { .. } | FdKind::Pipe { .. } => None,
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
