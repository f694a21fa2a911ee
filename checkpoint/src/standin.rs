//! Turn a process stopped by a dump into its own stand-in (bproc's ghost)
//! once it has moved: the stopped process closes its files above fd 2 and
//! executes a small program in place, by system calls injected into it.
//!
//! `execve` keeps what the parent and the shell know the process by (its
//! PID, its parent, its process group and session, its fds 0-2, its
//! credentials) and drops the rest: its memory, its other threads, its
//! signal handlers. The other files are closed first, so that the locks
//! they held are free before the moved copy takes them again elsewhere.
//! Signals pending in it survive the `execve` too: those its image holds
//! ([`saved_signals`]) the stand-in drops rather than passes on, since
//! the moved copy has them already.

use std::ffi::CString;
use std::path::Path;

use crate::checked_dir::CheckedDir;
use crate::error::{ChkptError, Result};
use crate::image::{self, FileKind, MmImage, Names, TaskImage};
use crate::procfs;
use crate::ptrace::{self, Injector};

/// The variable that lists, for the stand-in, the signals it must drop
/// (see [`saved_signals`]): numbers separated by commas, once per queued
/// instance.
pub const SAVED_VAR: &str = "KRG_STANDIN_SAVED";

/// `close_range(2)` (not in the libc crate for every target).
const SYS_CLOSE_RANGE: libc::c_long = 436;
/// `PTRACE_O_TRACEEXEC`: a successful `execve` stops the tracee at once,
/// so that no instruction of the new program runs before we let go.
const TRACE_EXEC: libc::c_long = libc::PTRACE_O_TRACEEXEC as libc::c_long;

/// The variable that carries a stand-in's token and tells `krg` it is
/// one (krgd sets it; `checkpoint` recognises a stand-in by it).
pub const TOKEN_VAR: &str = "KRG_STANDIN";

/// Is `pid` a stand-in: `krg` executed in the place of a process that
/// moved away, with its token in its environment? (False when its
/// environment cannot be read: gone, or not the caller's.)
pub fn is_stand_in(pid: i32) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let token = format!("{TOKEN_VAR}=");
    let is_krg = std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "krg"));
    is_krg
        && env
            .split(|&b| b == 0)
            .any(|v| v.starts_with(token.as_bytes()))
}

/// The signals SN `sn` in application directory `dir` holds pending for
/// process `pid`: its main thread's (the one that executes the stand-in;
/// the others' go with them) and the whole process's, once per queued
/// instance. They are still pending in the stopped process.
pub fn saved_signals(dir: &Path, sn: u32, pid: i32) -> Result<Vec<i32>> {
    let dir = CheckedDir::open(dir)?;
    let names = Names { sn };
    let (task, _) = image::read_in::<TaskImage>(&dir, &names.task(pid), FileKind::Task)?;
    let (mm, _) = image::read_in::<MmImage>(&dir, &names.task_mm(pid), FileKind::Mm)?;
    let own = task
        .meta
        .threads
        .iter()
        .filter(|t| t.tid == pid)
        .flat_map(|t| t.pending.iter());
    Ok(own
        .chain(mm.meta.shared_pending.iter())
        .filter_map(|info| signo(info))
        .collect())
}

/// The signal number of a raw `siginfo_t` (its first field).
fn signo(info: &[u8]) -> Option<i32> {
    let n = i32::from_ne_bytes(info.get(..4)?.try_into().ok()?);
    (1..=64).contains(&n).then_some(n)
}

/// What the stopped process becomes.
pub struct StandIn<'a> {
    /// The program to execute (absolute).
    pub program: &'a str,
    /// Its argument vector (the moved process's, so that `ps` still shows it).
    pub argv: &'a [Vec<u8>],
    /// Its whole environment (`NAME=value`).
    pub env: &'a [String],
}

/// Make `pid` (a process left stopped by [`crate::dump`], seized by no one)
/// execute `s.program`. On success it runs that program, stopped by job
/// control still, with every signal but SIGTRAP blocked: the caller
/// continues it (SIGCONT) and the program unblocks what it wants.
/// `closed` is called once its files above fd 2 are closed, before the
/// `execve` (which frees its memory: tens of milliseconds for a GiB), so
/// that the caller may go on meanwhile. On failure the process is left
/// stopped; if `closed` was called, it must not run on (kill it).
pub fn become_stand_in(pid: i32, s: &StandIn<'_>, closed: impl FnOnce()) -> Result<()> {
    let strings = Strings::new(s)?;
    ptrace::seize_and_interrupt(pid)?;
    let r = inject(pid, &strings, closed);
    match r {
        // An execve that ran leaves nothing to put back.
        Ok(()) => ptrace::detach(pid),
        Err(e) => {
            let _ = ptrace::detach_with(pid, libc::SIGSTOP);
            Err(e)
        }
    }
}

fn inject(pid: i32, strings: &Strings, closed: impl FnOnce()) -> Result<()> {
    let maps = procfs::parse_maps(&procfs::read_to_string(format!("/proc/{pid}/maps"))?)?;
    let at = ptrace::find_syscall_insn(pid, &maps)?;
    let inj = Injector::new(pid, at)?;
    let r = exec(pid, &inj, strings, closed);
    if r.is_err() {
        let _ = inj.restore();
    }
    r
}

/// Make `pid`, a process restart forked (held by `inj`, its fds 0-2 in
/// place), execute `s.program`: its other fds are closed first. It is
/// left traced, stopped right after the `execve`.
pub fn exec_restored(pid: i32, inj: &Injector, s: &StandIn<'_>) -> Result<()> {
    exec(pid, inj, &Strings::new(s)?, || {})
}

fn exec(pid: i32, inj: &Injector, strings: &Strings, closed: impl FnOnce()) -> Result<()> {
    let len = strings.bytes.len().next_multiple_of(4096) as u64;
    let area = inj.call(
        "mmap",
        libc::SYS_mmap,
        [
            0,
            len,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
    )?;
    ptrace::write_mem(pid, area, &strings.placed(area))?;
    // SAFETY: plain ptrace request on our tracee; no memory is passed.
    let set = unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, TRACE_EXEC) };
    if set < 0 {
        return Err(ChkptError::sys("PTRACE_SETOPTIONS", pid));
    }
    inj.call(
        "close_range",
        SYS_CLOSE_RANGE,
        [3, u32::MAX as u64, 0, 0, 0, 0],
    )?;
    closed();
    let (path, argv, envp) = strings.pointers(area);
    inj.exec([path, argv, envp, 0, 0, 0])
}

/// The program's path, arguments and environment laid out as `execve`
/// takes them: the strings, then the two NULL-ended pointer arrays.
struct Strings {
    bytes: Vec<u8>,
    /// Offsets of the path, of each argument and of each variable.
    path: usize,
    args: Vec<usize>,
    vars: Vec<usize>,
}

impl Strings {
    fn new(s: &StandIn<'_>) -> Result<Self> {
        let nul = |what: &str| ChkptError::Usage(format!("a NUL byte in the stand-in's {what}"));
        let mut bytes = Vec::new();
        let mut put = |b: &[u8]| {
            let at = bytes.len();
            bytes.extend_from_slice(b);
            bytes.push(0);
            at
        };
        let path = CString::new(s.program).map_err(|_| nul("path"))?;
        let path = put(path.as_bytes());
        let mut args = Vec::new();
        for a in s.argv {
            args.push(put(CString::new(a.clone())
                .map_err(|_| nul("arguments"))?
                .as_bytes()));
        }
        let mut vars = Vec::new();
        for v in s.env {
            vars.push(put(CString::new(v.as_str())
                .map_err(|_| nul("environment"))?
                .as_bytes()));
        }
        // pointers start 8-aligned after the strings
        bytes.resize(bytes.len().next_multiple_of(8), 0);
        let pointers = (args.len() + vars.len() + 2) * 8;
        let mut out = Strings {
            bytes,
            path,
            args,
            vars,
        };
        out.bytes.resize(out.bytes.len() + pointers, 0);
        Ok(out)
    }

    /// Where the pointer arrays start.
    fn arrays(&self) -> usize {
        self.bytes.len() - (self.args.len() + self.vars.len() + 2) * 8
    }

    /// The bytes with the pointer arrays filled in for `base`.
    fn placed(&self, base: u64) -> Vec<u8> {
        let mut b = self.bytes.clone();
        let mut at = self.arrays();
        let args = self.args.iter().map(|&o| base + o as u64).chain([0]);
        let vars = self.vars.iter().map(|&o| base + o as u64).chain([0]);
        for p in args.chain(vars) {
            b[at..at + 8].copy_from_slice(&p.to_ne_bytes());
            at += 8;
        }
        b
    }

    /// Addresses of the path, argv and envp once placed at `base`.
    fn pointers(&self, base: u64) -> (u64, u64, u64) {
        let argv = base + self.arrays() as u64;
        let envp = argv + (self.args.len() as u64 + 1) * 8;
        (base + self.path as u64, argv, envp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_laid_out_as_execve_reads_them() {
        let argv = vec![b"sim".to_vec(), b"--fast".to_vec()];
        let env = vec!["A=1".to_string()];
        let s = Strings::new(&StandIn {
            program: "/usr/bin/krg",
            argv: &argv,
            env: &env,
        })
        .unwrap();
        let base = 0x7000_0000u64;
        let b = s.placed(base);
        let (path, argv_at, envp_at) = s.pointers(base);
        let cstr = |addr: u64| {
            let off = (addr - base) as usize;
            let end = b[off..].iter().position(|&c| c == 0).unwrap();
            b[off..off + end].to_vec()
        };
        let ptr = |addr: u64| {
            let off = (addr - base) as usize;
            u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
        };
        assert_eq!(cstr(path), b"/usr/bin/krg");
        assert_eq!(argv_at % 8, 0);
        assert_eq!(cstr(ptr(argv_at)), b"sim");
        assert_eq!(cstr(ptr(argv_at + 8)), b"--fast");
        assert_eq!(ptr(argv_at + 16), 0);
        assert_eq!(cstr(ptr(envp_at)), b"A=1");
        assert_eq!(ptr(envp_at + 8), 0);
        assert!(Strings::new(&StandIn {
            program: "/bin/x\0y",
            argv: &[],
            env: &[],
        })
        .is_err());
    }
}
