//! Process attributes of the task file (format version 3): job-control
//! stop, prctl settings, scheduling, capabilities, audit login uid, robust
//! futex lists, membarrier registrations, madvise flags of mappings and
//! per-fd settings (owner, signal, pipe size); POSIX timers and seccomp
//! (format 4).
//! Version 2 task files have
//! none of it: they decode with [`TaskAttrs::default`] (nothing restored,
//! as before).

use serde::{Deserialize, Serialize};

/// What a process had besides fds, memory and signals.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TaskAttrs {
    /// Saved (format 3); false in older files: nothing below is restored.
    pub saved: bool,
    /// Stopped by job control when checkpointed (its stop signal): it comes
    /// back stopped, until a SIGCONT.
    pub stopped: Option<i32>,
    /// `PR_SET_CHILD_SUBREAPER`.
    pub child_subreaper: bool,
    /// `/proc/PID/oom_score_adj`.
    pub oom_score_adj: i32,
    /// `PR_SET_THP_DISABLE`.
    pub thp_disable: bool,
    /// `/proc/PID/loginuid` (u32::MAX: never set).
    pub loginuid: u32,
    /// `MEMBARRIER_CMD_GET_REGISTRATIONS`: the commands registered.
    pub membarrier: u32,
    /// The leader's capabilities (each thread's are in [`ThreadAttrs`]).
    pub caps: Caps,
    pub threads: Vec<ThreadAttrs>,
    /// Mappings with madvise flags other than the defaults.
    pub advice: Vec<VmaAdvice>,
    /// fds with settings beyond their open flags.
    pub fds: Vec<FdAttrs>,
    /// Start of every MAP_SHARED mapping that may be made writable
    /// (VM_MAYWRITE: its file was opened for writing), whatever its
    /// protection now: restore opens the file read-write for it.
    pub may_write: Vec<u64>,
    /// POSIX timers (`timer_create`), format 4 (version 3 files decode
    /// with none: they refused them).
    pub posix_timers: Vec<PosixTimer>,
    /// Threads under seccomp, format 4 (version 3 files refused them).
    pub seccomp: Vec<ThreadSeccomp>,
    /// It shares its parent's fd table (cloned with CLONE_FILES), format 4.
    pub parents_fd_table: bool,
}

/// The seccomp state of one thread.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ThreadSeccomp {
    pub tid: i32,
    /// `SECCOMP_MODE_STRICT` (then no filters).
    pub strict: bool,
    /// Its filters, the first installed first.
    pub filters: Vec<SeccompFilter>,
}

/// One seccomp filter: its classic BPF program and install flags.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SeccompFilter {
    /// `SECCOMP_FILTER_FLAG_*` the kernel reports (LOG, SPEC_ALLOW).
    pub flags: u64,
    /// `struct sock_filter`s, 8 bytes each, as raw words.
    pub insns: Vec<u64>,
}

/// One POSIX timer of the process, with its id and what it had left.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PosixTimer {
    /// The id `timer_create` gave (the process holds it as its timer_t).
    pub id: i32,
    pub clock: i32,
    /// `sigev_notify`: SIGEV_SIGNAL 0, SIGEV_NONE 1, SIGEV_THREAD_ID 4.
    pub notify: i32,
    pub signo: i32,
    /// `sigev_value` (the pointer or integer the signal carries).
    pub value: u64,
    /// SIGEV_THREAD_ID: the index of the target in the task's threads.
    pub thread: u32,
    /// `timer_gettime`: time to the next expiry (0: disarmed) and the
    /// period, in nanoseconds.
    pub next_ns: u64,
    pub interval_ns: u64,
}

impl TaskAttrs {
    /// What a file older than format 3 holds: nothing saved (the login
    /// uid reads as never set).
    pub fn unsaved() -> Self {
        TaskAttrs {
            loginuid: u32::MAX,
            ..TaskAttrs::default()
        }
    }
}

/// Capability sets (bit masks, as /proc/PID/status shows them).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct Caps {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
}

impl Caps {
    /// Holds no capability at all (the bounding set is a limit, not a grant).
    pub fn none_held(&self) -> bool {
        self.inheritable | self.permitted | self.effective | self.ambient == 0
    }
}

/// Per-thread attributes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct ThreadAttrs {
    pub tid: i32,
    /// `PR_SET_PDEATHSIG` (0: none).
    pub pdeath_sig: i32,
    /// `sched_getscheduler` (with SCHED_RESET_ON_FORK) and priority.
    pub policy: i32,
    pub rt_priority: i32,
    /// Nice value (-20..19).
    pub nice: i32,
    /// `set_robust_list` head and length (0, 0: none).
    pub robust_head: u64,
    pub robust_len: u64,
    /// Capabilities are per thread (as the bounding set and keepcaps).
    pub caps: Caps,
}

/// madvise flags of one mapping (`VmFlags` of /proc/PID/smaps).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct VmaAdvice {
    pub start: u64,
    pub end: u64,
    /// [`ADV_DONTFORK`] | [`ADV_DONTDUMP`] | …
    pub flags: u32,
}

pub const ADV_DONTFORK: u32 = 1;
pub const ADV_DONTDUMP: u32 = 2;
pub const ADV_HUGEPAGE: u32 = 4;
pub const ADV_NOHUGEPAGE: u32 = 8;
pub const ADV_MERGEABLE: u32 = 16;
pub const ADV_WIPEONFORK: u32 = 32;
pub const ADV_RANDOM: u32 = 64;
pub const ADV_SEQUENTIAL: u32 = 128;

/// mlock()ed (VM_LOCKED; with VM_LOCKONFAULT: `mlock2(MLOCK_ONFAULT)`):
/// not madvise flags, restored with mlock2 (see [`LOCKS`]).
pub const ADV_LOCKED: u32 = 256;
pub const ADV_LOCKONFAULT: u32 = 512;

/// The lock flags and their smaps codes.
pub const LOCKS: &[(u32, &str)] = &[(ADV_LOCKED, "lo"), (ADV_LOCKONFAULT, "lf")];

/// Each flag, its smaps `VmFlags` code and the madvise advice that sets it.
pub const ADVICE: &[(u32, &str, i32)] = &[
    (ADV_DONTFORK, "dc", libc::MADV_DONTFORK),
    (ADV_DONTDUMP, "dd", libc::MADV_DONTDUMP),
    (ADV_HUGEPAGE, "hg", libc::MADV_HUGEPAGE),
    (ADV_NOHUGEPAGE, "nh", libc::MADV_NOHUGEPAGE),
    (ADV_MERGEABLE, "mg", libc::MADV_MERGEABLE),
    (ADV_WIPEONFORK, "wf", libc::MADV_WIPEONFORK),
    (ADV_RANDOM, "rr", libc::MADV_RANDOM),
    (ADV_SEQUENTIAL, "sr", libc::MADV_SEQUENTIAL),
];

/// Settings of one fd that its open flags do not carry.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct FdAttrs {
    pub fd: i32,
    /// `F_SETOWN_EX`: type (F_OWNER_TID, _PID, _PGRP) and id; id 0: none.
    pub owner_type: i32,
    pub owner_id: i32,
    /// `F_SETSIG` (0: SIGIO).
    pub sig: i32,
    /// `F_SETPIPE_SZ` of a pipe (0: not a pipe).
    pub pipe_size: u32,
}

/// fcntl commands the libc crate does not name (asm-generic/fcntl.h).
pub const F_SETSIG: i32 = 10;
pub const F_GETSIG: i32 = 11;
pub const F_SETOWN_EX: i32 = 15;
pub const F_GETOWN_EX: i32 = 16;

/// The attributes in words, one indented line each (for `checkpoint inspect`).
pub fn describe_attrs(a: &TaskAttrs) -> String {
    if !a.saved {
        return "  attributes: not saved (format version 2 or older)\n".into();
    }
    let mut out = String::new();
    let mut line = |l: String| {
        out += "  ";
        out += &l;
        out += "\n";
    };
    if let Some(sig) = a.stopped {
        line(format!("stopped by job control (signal {sig})"));
    }
    let c = a.caps;
    line(format!(
        "caps: inh {:#x} prm {:#x} eff {:#x} bnd {:#x} amb {:#x}; oom_score_adj {}; loginuid {}{}{}",
        c.inheritable,
        c.permitted,
        c.effective,
        c.bounding,
        c.ambient,
        a.oom_score_adj,
        a.loginuid as i32,
        if a.child_subreaper { "; child subreaper" } else { "" },
        if a.thp_disable { "; THP disabled" } else { "" },
    ));
    if a.membarrier != 0 {
        line(format!("membarrier registrations {:#x}", a.membarrier));
    }
    for t in &a.threads {
        line(format!(
            "thread {}: policy {} rt priority {} nice {} pdeathsig {} robust list {:#x}+{} caps prm {:#x} bnd {:#x}",
            t.tid,
            t.policy,
            t.rt_priority,
            t.nice,
            t.pdeath_sig,
            t.robust_head,
            t.robust_len,
            t.caps.permitted,
            t.caps.bounding
        ));
    }
    for v in &a.advice {
        let names: Vec<&str> = ADVICE
            .iter()
            .map(|(b, code, _)| (*b, *code))
            .chain(LOCKS.iter().copied())
            .filter(|(b, _)| v.flags & b != 0)
            .map(|(_, code)| code)
            .collect();
        line(format!(
            "madvise {:#x}-{:#x}: {}",
            v.start,
            v.end,
            names.join(" ")
        ));
    }
    for s in &a.may_write {
        line(format!("shared mapping at {s:#x} may be made writable"));
    }
    for f in &a.fds {
        line(format!(
            "fd {}: owner type {} id {}, signal {}, pipe size {}",
            f.fd, f.owner_type, f.owner_id, f.sig, f.pipe_size
        ));
    }
    if a.parents_fd_table {
        line("shares its parent's fd table (CLONE_FILES)".into());
    }
    for t in &a.seccomp {
        let lens: Vec<String> = t
            .filters
            .iter()
            .map(|f| f.insns.len().to_string())
            .collect();
        line(format!(
            "thread {}: seccomp {}",
            t.tid,
            if t.strict {
                "strict".to_string()
            } else {
                format!("filters of {} instruction(s)", lens.join(", "))
            }
        ));
    }
    for t in &a.posix_timers {
        line(format!(
            "POSIX timer {}: clock {}, notify {} signal {} value {:#x} thread #{}, next in {} ns, every {} ns",
            t.id, t.clock, t.notify, t.signo, t.value, t.thread, t.next_ns, t.interval_ns
        ));
    }
    out
}
