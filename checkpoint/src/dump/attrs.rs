//! Process attributes ([`TaskAttrs`]) of one frozen task: job-control
//! stop, prctl settings, scheduling, capabilities, audit login uid, robust
//! futex lists, membarrier registrations, madvise flags, fd owners and
//! pipe sizes — read from /proc, from outside (sched_*, get_robust_list,
//! fcntl on a pidfd_getfd duplicate) or by injected calls where only the
//! task itself can ask. What cannot be restored faithfully is refused here.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{ChkptError, Result};
use crate::image::{
    Caps, FdAttrs, FdImage, FdKind, TaskAttrs, ThreadAttrs, VmaAdvice, ADVICE, F_GETOWN_EX,
    F_GETSIG, LOCKS,
};
use crate::procfs;
use crate::ptrace::Injector;

/// What the caller knows about the task.
pub struct AttrCtx<'a> {
    /// The group-stop signal seen when it was seized (see [`Frozen`]).
    ///
    /// [`Frozen`]: super::freeze::Frozen
    pub stopped: Option<i32>,
    /// The root of the tree (its parent is outside it).
    pub is_root: bool,
    /// Every PID, TID and process group id of the tree ([`tree_ids`]): the
    /// only owners an fd may name (`F_SETOWN`), since they come back.
    pub ids: &'a [i32],
}

/// PIDs, TIDs and process group ids of the tree.
pub fn tree_ids(tree: &[(i32, i32)]) -> Vec<i32> {
    let mut ids = Vec::new();
    for &(p, _) in tree {
        ids.push(p);
        ids.extend(procfs::threads(p).unwrap_or_default());
        if let Ok(st) = procfs::read_to_string(format!("/proc/{p}/stat")) {
            if let Ok(st) = procfs::parse_stat(&st) {
                ids.push(st.field(5) as i32);
            }
        }
    }
    ids
}

/// `MEMBARRIER_CMD_GET_REGISTRATIONS` (Linux 6.3).
const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;

pub fn read(
    pid: i32,
    ctx: &AttrCtx<'_>,
    inj: &Injector,
    scratch: u64,
    fds: &[FdImage],
) -> Result<TaskAttrs> {
    let status = procfs::read_to_string(format!("/proc/{pid}/status"))?;
    let caps = parse_caps(&status);
    inj.call(
        "prctl(PR_GET_CHILD_SUBREAPER)",
        libc::SYS_prctl,
        [libc::PR_GET_CHILD_SUBREAPER as u64, scratch, 0, 0, 0, 0],
    )?;
    let b = crate::ptrace::read_mem(pid, scratch, 4)?;
    let child_subreaper = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) != 0;
    // ENOSYS / EINVAL on kernels without it: nothing can be registered there.
    let membarrier = inj
        .raw(
            libc::SYS_membarrier,
            [MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0, 0, 0, 0],
        )
        .map(|r| u32::try_from(r).unwrap_or(0))?;
    let mut threads = Vec::new();
    let tids = procfs::threads(pid)?;
    let mut seccomp = Vec::new();
    for &tid in &tids {
        threads.push(thread_attrs(pid, tid, inj, scratch)?);
        seccomp.extend(super::seccomp::read(pid, tid)?);
    }
    if ctx.is_root {
        if let Some(t) = threads.iter().find(|t| t.pdeath_sig != 0) {
            return Err(ChkptError::unsupported(
                pid,
                format!("a parent-death signal (PR_SET_PDEATHSIG, thread {})", t.tid),
                "the root of the tree gets restart as its parent, whose exit would send it",
            ));
        }
    }
    Ok(TaskAttrs {
        saved: true,
        stopped: ctx.stopped,
        child_subreaper,
        oom_score_adj: procfs::read_to_string(format!("/proc/{pid}/oom_score_adj"))?
            .trim()
            .parse()
            .unwrap_or(0),
        thp_disable: procfs::status_field(&status, "THP_enabled") == Some("0"),
        loginuid: procfs::read_to_string(format!("/proc/{pid}/loginuid"))
            .ok()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(u32::MAX),
        membarrier,
        caps,
        threads,
        // filled by [`settle_vma_flags`] once the job runs again
        advice: Vec::new(),
        fds: fd_attrs(pid, fds, ctx.ids)?,
        may_write: Vec::new(),
        posix_timers: super::timers::read(pid, &tids, inj, scratch)?,
        seccomp,
        // set with the whole tree in view (dump::read_tree)
        parents_fd_table: false,
    })
}

pub fn parse_caps(status: &str) -> Caps {
    let m = |k: &str| {
        procfs::status_field(status, k)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .unwrap_or(0)
    };
    Caps {
        inheritable: m("CapInh"),
        permitted: m("CapPrm"),
        effective: m("CapEff"),
        bounding: m("CapBnd"),
        ambient: m("CapAmb"),
    }
}

/// Scheduling and nice from outside; the parent-death signal and robust
/// list by an injected prctl in the thread itself / get_robust_list.
fn thread_attrs(pid: i32, tid: i32, leader: &Injector, scratch: u64) -> Result<ThreadAttrs> {
    // SAFETY: sched_getscheduler/getpriority of a thread id; no memory.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: param is a valid out pointer.
    let pr = unsafe { libc::sched_getparam(tid, &mut param) };
    if policy < 0 || pr < 0 {
        return Err(ChkptError::sys("sched_getscheduler", tid));
    }
    let stat = procfs::parse_stat(&procfs::read_to_string(format!(
        "/proc/{pid}/task/{tid}/stat"
    ))?)?;
    let nice = stat.field(19) as i64 as i32;
    let caps = parse_caps(&procfs::read_to_string(format!(
        "/proc/{pid}/task/{tid}/status"
    ))?);
    let mut head = 0u64;
    let mut len = 0usize;
    // SAFETY: get_robust_list writes a pointer and a size_t.
    if unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &mut head, &mut len) } < 0 {
        return Err(ChkptError::sys("get_robust_list", tid));
    }
    let own;
    let inj = if tid == pid {
        leader
    } else {
        own = Injector::new(tid, leader.syscall_at)?;
        &own
    };
    let r = inj.call(
        "prctl(PR_GET_PDEATHSIG)",
        libc::SYS_prctl,
        [libc::PR_GET_PDEATHSIG as u64, scratch, 0, 0, 0, 0],
    );
    let back = if tid == pid { Ok(()) } else { inj.restore() };
    r?;
    back?;
    let b = crate::ptrace::read_mem(pid, scratch, 4)?;
    Ok(ThreadAttrs {
        tid,
        pdeath_sig: i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        policy,
        rt_priority: param.sched_priority,
        nice,
        robust_head: head,
        robust_len: len as u64,
        caps,
    })
}

/// What smaps says of one mapping.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MappingFlags {
    /// madvise advice bits.
    pub advice: u32,
    /// Shared and may be made writable.
    pub may_write: bool,
    /// Registered with a userfaultfd for missing pages (`um`): a page
    /// server is still bringing its memory in (a lazy restore, after a
    /// migration or `restart --lazy`). The pages not in yet are absent
    /// from the page tables, where a dump would take them for pages never
    /// touched.
    pub filling: bool,
}

/// Flags of every mapping by its start address.
pub type VmaFlags = HashMap<u64, MappingFlags>;

/// `VmFlags` of every mapping of `pid` (smaps). Reading smaps walks every
/// page to count it (40–90 ms per GiB on a loaded machine), so it is read
/// just before the freeze and right after it, never while the job is
/// frozen; [`settle_vma_flags`] takes what both saw.
pub fn vma_flags(pid: i32) -> VmaFlags {
    let text = procfs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let parsed = parse_smaps(&text);
    let mut out: VmaFlags = parsed
        .all
        .into_iter()
        .map(|s| (s, MappingFlags::default()))
        .collect();
    for a in parsed.advice {
        out.entry(a.start).or_default().advice = a.flags;
    }
    for s in parsed.may_write {
        out.entry(s).or_default().may_write = true;
    }
    for s in parsed.filling {
        out.entry(s).or_default().filling = true;
    }
    out
}

/// Resident memory below which a process's smaps is read while it is
/// frozen (smaps walks every page: 40-90 ms per GiB at load 12).
const SMALL_RSS: u64 = 32 << 20;

/// Does `pid` hold less than [`SMALL_RSS`] in memory (statm)?
pub fn small(pid: i32) -> bool {
    procfs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .is_some_and(|pages| pages * crate::image::PAGE < SMALL_RSS)
}

/// The flags of each mapping the frozen job had, from the reads before
/// (`pre`) and after (`post`) the freeze: a mapping seen by both with the
/// same flags had them while frozen; seen by one only (made just before
/// the freeze, or removed just after), that one's. Flags that differ, or a
/// mapping seen by neither, may have changed around the freeze: refused
/// (try again) rather than guessed.
pub fn settle_vma_flags(
    pid: i32,
    a: &mut TaskAttrs,
    vmas: &[crate::image::Vma],
    pre: Option<&VmaFlags>,
    post: &VmaFlags,
) -> Result<()> {
    for v in vmas {
        let before = pre.and_then(|p| p.get(&v.start));
        let after = post.get(&v.start);
        let seen = match (before, after) {
            (Some(b), Some(f)) if b == f => *b,
            (Some(b), None) => *b,
            (None, Some(f)) => *f,
            (Some(b), Some(f)) if b.filling || f.filling => MappingFlags { filling: true, ..*b },
            _ => {
                return Err(ChkptError::Changed(format!(
                    "the madvise flags of process {pid}'s mapping at {:#x} changed while it was checkpointed (try again)",
                    v.start
                )))
            }
        };
        if seen.filling {
            return Err(ChkptError::Changed(format!(
                "process {pid}'s memory is still coming in (it was restored lazily a moment ago, by a migration or restart --lazy, and its page server is bringing in its mapping at {:#x}): try again once it is all in",
                v.start
            )));
        }
        let (flags, may_write) = (seen.advice, seen.may_write);
        if flags != 0 {
            a.advice.push(VmaAdvice {
                start: v.start,
                end: v.end,
                flags,
            });
        }
        if may_write {
            a.may_write.push(v.start);
        }
    }
    Ok(())
}

/// What [`parse_smaps`] finds, each mapping named by its start.
#[derive(Debug, Default)]
pub struct Smaps {
    /// madvise flags of every mapping that has some.
    pub advice: Vec<VmaAdvice>,
    /// Shared mappings that may be made writable (`sh` and `mw`).
    pub may_write: Vec<u64>,
    /// Mappings a userfaultfd fills on missing pages (`um`).
    pub filling: Vec<u64>,
    /// Every mapping.
    pub all: Vec<u64>,
}

/// The `VmFlags` of every mapping of an smaps text.
pub fn parse_smaps(smaps: &str) -> Smaps {
    let mut out = Vec::new();
    let mut may_write = Vec::new();
    let mut filling = Vec::new();
    let mut all = Vec::new();
    let mut cur: Option<(u64, u64)> = None;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let Some((start, end)) = cur.take() else {
                continue;
            };
            all.push(start);
            let codes: Vec<&str> = flags.split_whitespace().collect();
            if codes.contains(&"sh") && codes.contains(&"mw") {
                may_write.push(start);
            }
            if codes.contains(&"um") {
                filling.push(start);
            }
            let f = ADVICE
                .iter()
                .map(|(bit, code, _)| (*bit, *code))
                .chain(LOCKS.iter().copied())
                .filter(|(_, code)| codes.contains(code))
                .fold(0, |a, (bit, _)| a | bit);
            if f != 0 {
                out.push(VmaAdvice {
                    start,
                    end,
                    flags: f,
                });
            }
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                cur = Some((a, b));
            }
        }
    }
    Smaps {
        advice: out,
        may_write,
        filling,
        all,
    }
}

/// Owner and signal of every fd's open file description, and the size of
/// pipes: read on a duplicate of the fd (`pidfd_getfd`), which shares them.
fn fd_attrs(pid: i32, fds: &[FdImage], ids: &[i32]) -> Result<Vec<FdAttrs>> {
    if fds.is_empty() {
        return Ok(Vec::new());
    }
    // SAFETY: pidfd_open of a PID; returns a new fd or -1.
    let pfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pfd < 0 {
        return Err(ChkptError::sys("pidfd_open", pid));
    }
    // SAFETY: a new fd that only we hold.
    let pfd = unsafe { OwnedFd::from_raw_fd(pfd as i32) };
    let mut out = Vec::new();
    for f in fds {
        if matches!(f.kind, FdKind::InheritedStdio { .. }) {
            continue;
        }
        // SAFETY: pidfd_getfd of a fd of the (frozen) task.
        let d = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pfd.as_raw_fd(), f.fd, 0) };
        if d < 0 {
            return Err(ChkptError::sys(format!("pidfd_getfd of fd {}", f.fd), pid));
        }
        // SAFETY: a new fd that only we hold.
        let d = unsafe { OwnedFd::from_raw_fd(d as i32) };
        let mut own = [0i32; 2];
        // SAFETY: F_GETOWN_EX writes a struct f_owner_ex (two ints).
        let r = unsafe { libc::fcntl(d.as_raw_fd(), F_GETOWN_EX, own.as_mut_ptr()) };
        // SAFETY: plain fcntl queries.
        let sig = unsafe { libc::fcntl(d.as_raw_fd(), F_GETSIG) };
        let pipe_size = if matches!(f.kind, FdKind::Pipe { .. }) {
            // SAFETY: as above.
            unsafe { libc::fcntl(d.as_raw_fd(), libc::F_GETPIPE_SZ) }.max(0) as u32
        } else {
            0
        };
        if r < 0 || sig < 0 {
            return Err(ChkptError::sys(format!("fcntl of fd {}", f.fd), pid));
        }
        let a = FdAttrs {
            fd: f.fd,
            owner_type: own[0],
            owner_id: own[1],
            sig,
            pipe_size,
        };
        if a.owner_id != 0 && !ids.contains(&a.owner_id.abs()) {
            return Err(ChkptError::unsupported(
                pid,
                format!("fd {} owned (F_SETOWN) by {}", f.fd, a.owner_id),
                "the owner is outside the checkpointed tree and would not come back with it",
            ));
        }
        if a.owner_id != 0 || a.sig != 0 || (a.pipe_size != 0 && a.pipe_size != 65536) {
            out.push(a);
        }
    }
    Ok(out)
}

/// A privilege the process holds that its user could not have given
/// itself (capabilities, a negative oom_score_adj, another login uid, a
/// raised or real-time priority): its image must then be root's, like a
/// setuid program's, so that the user cannot edit what restart grants.
pub fn privilege(pid: i32, status: &str) -> Option<String> {
    for tid in procfs::threads(pid).ok()? {
        let st = procfs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
        let caps = parse_caps(&st);
        if !caps.none_held() {
            return Some(format!(
                "holds capabilities (thread {tid}: permitted {:#x}, ambient {:#x})",
                caps.permitted, caps.ambient
            ));
        }
    }
    let uid = procfs::status_ids(status, "Uid").ok()?.first().copied()?;
    let read = |n: &str| std::fs::read_to_string(format!("/proc/{pid}/{n}")).ok();
    let oom: i32 = read("oom_score_adj")?.trim().parse().ok()?;
    if oom < 0 {
        return Some(format!("has oom_score_adj {oom}"));
    }
    let login: u32 = read("loginuid")?.trim().parse().ok()?;
    if login != u32::MAX && login != uid {
        return Some(format!("has login uid {login}"));
    }
    for tid in procfs::threads(pid).ok()? {
        let st = procfs::parse_stat(
            &procfs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?,
        )
        .ok()?;
        let (nice, rt) = (st.field(19) as i64, st.field(40));
        if nice < 0 || rt != 0 {
            return Some(format!(
                "runs thread {tid} at nice {nice}, real-time priority {rt}"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_flags_are_read() {
        let text = "\
7f0000000000-7f0000200000 rw-p 00000000 00:00 0 
Size:               2048 kB
VmFlags: rd wr mr mw me ac dc dd hg 
7f0000200000-7f0000201000 r--p 00000000 00:00 0 
VmFlags: rd mr mw me 
55d000000000-55d000001000 rw-p 00000000 00:00 0                          [heap]
VmFlags: rd wr mr mw me ac nh wf sd 
7f0000300000-7f0000301000 r--s 00000000 08:01 1234                       /tmp/f
VmFlags: rd sh mr mw me 
7f0000400000-7f0000401000 r--s 00000000 08:01 1235                       /tmp/g
VmFlags: rd sh mr me 
7f0000500000-7f0000600000 rw-p 00000000 00:00 0 
VmFlags: rd wr mr mw me ac um 
";
        let parsed = parse_smaps(text);
        let (a, mw, all) = (&parsed.advice, &parsed.may_write, &parsed.all);
        assert_eq!(all.len(), 6);
        assert_eq!(*mw, vec![0x7f00_0030_0000]);
        assert_eq!(parsed.filling, vec![0x7f00_0050_0000]);
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].start, a[0].end, a[0].flags),
            (
                0x7f00_0000_0000,
                0x7f00_0020_0000,
                crate::image::ADV_DONTFORK
                    | crate::image::ADV_DONTDUMP
                    | crate::image::ADV_HUGEPAGE
            )
        );
        assert_eq!(
            a[1].flags,
            crate::image::ADV_NOHUGEPAGE | crate::image::ADV_WIPEONFORK
        );
    }

    /// Flags read before and after the freeze: agreeing or seen once are
    /// taken, differing or never seen are refused.
    #[test]
    fn vma_flags_around_the_freeze() {
        let vma = |start: u64| crate::image::Vma {
            start,
            end: start + 4096,
            prot: 3,
            shared: false,
            kind: crate::image::VmaKind::Anon,
            runs: Vec::new(),
        };
        let f = |advice: u32, may_write: bool| MappingFlags {
            advice,
            may_write,
            filling: false,
        };
        let pre: VmaFlags = [(0x1000, f(1, false)), (0x3000, f(2, true))].into();
        let post: VmaFlags = [(0x1000, f(1, false)), (0x2000, f(4, false))].into();
        let mut a = TaskAttrs::default();
        let vmas = [vma(0x1000), vma(0x2000), vma(0x3000)];
        settle_vma_flags(1, &mut a, &vmas, Some(&pre), &post).unwrap();
        let got: Vec<(u64, u32)> = a.advice.iter().map(|v| (v.start, v.flags)).collect();
        assert_eq!(got, vec![(0x1000, 1), (0x2000, 4), (0x3000, 2)]);
        assert_eq!(a.may_write, vec![0x3000]);
        let changed: VmaFlags = [(0x1000, f(0, false))].into();
        let e = settle_vma_flags(1, &mut a, &vmas[..1], Some(&pre), &changed).unwrap_err();
        assert!(e.to_string().contains("changed while"), "{e}");
        assert!(settle_vma_flags(1, &mut a, &[vma(0x9000)], Some(&pre), &post).is_err());
        // a mapping a page server still fills, before the freeze, after it,
        // or both: its absent pages are not known, refused
        let filling = MappingFlags {
            filling: true,
            ..f(1, false)
        };
        let lazy: VmaFlags = [(0x1000, filling)].into();
        for (pre, post) in [(&lazy, &pre), (&pre, &lazy), (&lazy, &lazy)] {
            let e = settle_vma_flags(1, &mut a, &vmas[..1], Some(pre), post).unwrap_err();
            assert!(e.to_string().contains("still coming in"), "{e}");
        }
    }
}
