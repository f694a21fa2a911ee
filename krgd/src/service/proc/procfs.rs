//! Reading the processes of this node's jobs from /proc: which host
//! processes live in a job's PID namespace, their PIDs as the job sees
//! them (`NSpid`), and the `krg ps` columns.
//!
//! One pass over /proc answers for every job at once, so the rows of a
//! node are one snapshot.

use std::collections::HashMap;
use std::sync::Arc;

use krg_proto::proc::ProcRow;
use krg_proto::NodeId;

use super::table::JobEntry;

/// One process of a job, as found in /proc.
#[derive(Debug, Clone)]
pub struct Found {
    /// The job it belongs to.
    pub job: Arc<JobEntry>,
    /// PID in krgd's namespace.
    pub host_pid: i32,
    /// PID as the job sees it.
    pub pid: i32,
}

/// The inode of the PID namespace of host process `pid`.
pub fn pid_ns_inode(pid: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
    let text = link.to_str()?;
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// Every process of the given jobs, init excluded.
pub fn scan(jobs: &[Arc<JobEntry>]) -> Vec<Found> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let by_ns: HashMap<u64, &Arc<JobEntry>> = jobs.iter().map(|j| (j.ns_ino, j)).collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(host_pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Some(job) = pid_ns_inode(host_pid).and_then(|ino| by_ns.get(&ino)) else {
            continue;
        };
        let Some(pid) = ns_pid(host_pid) else {
            continue;
        };
        if pid == 1 {
            continue; // the job's init is ours, not the user's
        }
        out.push(Found {
            job: (*job).clone(),
            host_pid,
            pid,
        });
    }
    out
}

/// The host PID of a job's program: the child of its init that is
/// `entry.pid` in the job's namespace (None once it has ended).
pub fn program_host_pid(entry: &JobEntry) -> Option<i32> {
    let init = entry.init_pid;
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
        .find(|&c| ns_pid(c) == Some(entry.pid))
}

/// The PID of host process `pid` in its innermost namespace.
pub fn ns_pid(host_pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// Real, effective, saved and file-system uids of host process `pid`.
pub fn uids(host_pid: i32) -> Option<[u32; 4]> {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let v: Vec<u32> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    Some([*v.first()?, *v.get(1)?, *v.get(2)?, *v.get(3)?])
}

/// Fields of /proc/PID/stat that `krg ps` shows.
struct Stat {
    state: String,
    ppid: i32,
    ticks: u64,
    start_ticks: u64,
    rss_pages: u64,
    comm: String,
    /// Foreground process group of its controlling terminal (-1: none).
    tpgid: i32,
}

/// The foreground process group of host process `pid`'s controlling
/// terminal, as krgd's namespace numbers it (None: no terminal).
pub fn foreground_group(host_pid: i32) -> Option<i32> {
    read_stat(host_pid).map(|s| s.tpgid).filter(|&g| g > 0)
}

fn read_stat(host_pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{host_pid}/stat")).ok()?;
    // The command is in parentheses and may hold anything, spaces and ')'
    // included: the fields start after the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let f: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    // f[0] is field 3 (state).
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        state: f.first()?.to_string(),
        ppid: f.get(1)?.parse().ok()?,
        ticks: num(11)? + num(12)?,
        start_ticks: num(19)?,
        rss_pages: num(21)?,
        comm,
        tpgid: f.get(5)?.parse().ok()?,
    })
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf takes a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn page_kib() -> u64 {
    // SAFETY: sysconf takes a constant.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64 / 1024
    } else {
        4
    }
}

/// Seconds since boot.
pub fn uptime_secs() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// `cmdline` with NULs as spaces, or `[comm]` for a process without one.
pub fn command_line(host_pid: i32, comm: &str) -> String {
    let raw = std::fs::read(format!("/proc/{host_pid}/cmdline")).unwrap_or_default();
    let parts: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    if parts.is_empty() {
        format!("[{comm}]")
    } else {
        parts.join(" ")
    }
}

/// The `krg ps` rows of these processes, given as (PID in krgd's
/// namespace, PID as shown); those that vanished meanwhile are left out.
pub fn rows(node: NodeId, found: &[(i32, i32)], user_name: impl Fn(u32) -> String) -> Vec<ProcRow> {
    let hz = clock_ticks();
    let page = page_kib();
    let now = uptime_secs();
    let host_to_ns: HashMap<i32, i32> = found.iter().copied().collect();
    let mut names: HashMap<u32, String> = HashMap::new();
    let mut out = Vec::new();
    for &(host_pid, pid) in found {
        let (Some(st), Some(ids)) = (read_stat(host_pid), uids(host_pid)) else {
            continue;
        };
        let elapsed = (now - st.start_ticks as f64 / hz as f64).max(0.0);
        let cpu_s = st.ticks as f64 / hz as f64;
        let cpu_permille = if elapsed > 0.0 {
            ((cpu_s / elapsed) * 1000.0).round().min(u32::MAX as f64) as u32
        } else {
            0
        };
        let uid = ids[0];
        let user = names.entry(uid).or_insert_with(|| user_name(uid)).clone();
        out.push(ProcRow {
            node,
            pid,
            ppid: host_to_ns.get(&st.ppid).copied().unwrap_or(1),
            uid,
            user,
            cpu_permille,
            rss_kib: st.rss_pages * page,
            state: st.state,
            cpu_ms: st.ticks * 1000 / hz,
            elapsed_s: elapsed as u64,
            command: command_line(host_pid, &st.comm),
        });
    }
    out.sort_by_key(|r| r.pid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        let st = read_stat(me).unwrap();
        assert!(!st.state.is_empty());
        assert!(st.ppid > 0);
        assert!(pid_ns_inode(me).is_some());
        assert_eq!(ns_pid(me), Some(me));
        assert!(uids(me).is_some());
        assert!(!command_line(me, "x").is_empty());
    }
}
