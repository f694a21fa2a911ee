//! krg-init: PID 1 of every job `krg run` starts (one PID namespace per
//! job, krgd its parent).
//!
//! A PID 1 the kernel protects from every signal it has no handler for, so
//! a job whose program were PID 1 would ignore SIGTERM and SIGINT. This
//! init instead keeps every signal blocked, takes them with `sigwaitinfo`,
//! forwards each to the program's process group, reaps whatever is
//! reparented to it, and exits as soon as the program ends (the kernel then
//! kills what is left of the namespace).
//!
//! It runs as root with an empty environment (the layout of its
//! descriptors and the spec are in `krgd::service::proc::initspec`): it
//! chooses the program's PID in the namespace (`ns_last_pid`), then its
//! child takes the job's credentials before it enters the working
//! directory or opens anything, and executes the program (or copies a file
//! for `krg push` / `krg get`): see [`program`]. Failures of those steps
//! reach krgd as (stage, errno) through a close-on-exec pipe. Before all
//! that it gives the job a `/proc` of its namespace (`checkpoint::ownproc`).
//!
//! Started with a seqpacket socket as descriptor 0 and no spec, it is the
//! zygote instead: it forks each job's init for krgd
//! (`krgd::service::proc::zygote`), which then goes on here as above.

mod handoff;
mod program;

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use krgd::service::proc::initspec::{
    InitEvent, InitProgram, InitSpec, Stage, MAX_SPEC, SPEC_FD, STATUS_FD,
};
use krgd::service::proc::zygote::serve as zygote;

fn main() {
    block_all_signals();
    if zygote::is_zygote() {
        // Returns only in a new job's init, its descriptors in place.
        zygote::serve();
    }
    let spec = match read_spec() {
        Ok(s) => s,
        Err(errno) => {
            report(InitEvent::Failed {
                stage: Stage::Spec,
                errno,
            });
            std::process::exit(1);
        }
    };
    std::process::exit(run(&spec));
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn full_set() -> libc::sigset_t {
    // SAFETY: sigfillset initialises the set it is given.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigfillset(&mut set);
        set
    }
}

fn block_all_signals() {
    let set = full_set();
    // SAFETY: set is initialised; the old mask is not asked for.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
}

fn read_spec() -> Result<InitSpec, i32> {
    // SAFETY: krgd starts the init with the spec pipe at SPEC_FD; nothing
    // else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(SPEC_FD) };
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_SPEC as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    if bytes.len() > MAX_SPEC {
        return Err(libc::E2BIG);
    }
    postcard::from_bytes(&bytes).map_err(|_| libc::EINVAL)
}

/// Write one event to krgd (best effort: krgd may be gone).
fn report(event: InitEvent) {
    let bytes = event.encode();
    // SAFETY: writing a local buffer to the status descriptor.
    unsafe { libc::write(STATUS_FD, bytes.as_ptr().cast(), bytes.len()) };
}

fn cstring(bytes: &[u8]) -> Result<CString, i32> {
    CString::new(bytes).map_err(|_| libc::EINVAL)
}

/// Start the program, then forward signals and reap until it ends.
/// Returns the init's exit code.
fn run(spec: &InitSpec) -> i32 {
    if let Err((_, e)) = checkpoint::ownproc::enter() {
        report(InitEvent::Failed {
            stage: Stage::Proc,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        });
        return 1;
    }
    if spec.program == InitProgram::Adopt {
        // restart forks the program here and leaves; it comes to us.
        release_stdio();
        report(InitEvent::Started);
        return serve(spec.pid);
    }
    if spec.pid > 1 {
        if let Err(errno) = set_next_pid(spec.pid) {
            report(InitEvent::Failed {
                stage: Stage::Pid,
                errno,
            });
            return 1;
        }
    }
    let prepared = match program::Prepared::new(spec) {
        Ok(p) => p,
        Err((stage, errno)) => {
            report(InitEvent::Failed { stage, errno });
            return 1;
        }
    };
    let mut check = [0 as RawFd; 2];
    // SAFETY: check has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(check.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        report(InitEvent::Failed {
            stage: Stage::Fork,
            errno: errno(),
        });
        return 1;
    }
    let child = match program::start(&prepared, check[1]) {
        Ok(pid) => pid,
        Err(errno) => {
            report(InitEvent::Failed {
                stage: Stage::Fork,
                errno,
            });
            return 1;
        }
    };
    // SAFETY: the parent's copy of the write end; the child holds its own.
    unsafe { libc::close(check[1]) };
    if let Some((stage, errno)) = read_failure(check[0]) {
        report(InitEvent::Failed { stage, errno });
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        return 1;
    }
    release_stdio();
    report(InitEvent::Started);
    serve(child)
}

/// Make the next PID allocated in this namespace `pid`.
fn set_next_pid(pid: i32) -> Result<(), i32> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/kernel/ns_last_pid")
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    f.write_all((pid - 1).to_string().as_bytes())
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

/// What the child wrote before failing, if it failed (EOF: it executed the
/// program, or a built-in opened its file).
fn read_failure(fd: RawFd) -> Option<(Stage, i32)> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled part of a local buffer.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    // SAFETY: closing our read end.
    unsafe { libc::close(fd) };
    if got < buf.len() {
        return None;
    }
    let stage = i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let errno = i32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let stage = match stage {
        4 => Stage::Credentials,
        5 => Stage::Cwd,
        6 => Stage::Terminal,
        7 => Stage::Open,
        _ => Stage::Exec,
    };
    Some((stage, errno))
}

/// The init keeps none of the job's stdio: only the program holds it, so
/// its readers see end-of-file when the job is over.
fn release_stdio() {
    // SAFETY: opening /dev/null and moving it over 0-2 of this process.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            libc::close(null);
        }
    }
}

/// Take signals and children until the program `child` ends.
fn serve(child: libc::pid_t) -> i32 {
    let set = full_set();
    loop {
        // SAFETY: set is initialised; siginfo is not asked for.
        let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if sig < 0 {
            continue;
        }
        if sig == libc::SIGCHLD {
            if let Some(status) = reap(child) {
                report(InitEvent::Exited { status });
                return 0;
            }
            continue;
        }
        // To the program's process group (a terminal's Ctrl-C reaches the
        // whole foreground group); to the program alone if the group is gone.
        // SAFETY: kill has no memory arguments.
        unsafe {
            if libc::kill(-child, sig) != 0 {
                libc::kill(child, sig);
            }
        }
    }
}

/// Reap every child that has ended; the program's wait status if it did.
fn reap(child: libc::pid_t) -> Option<i32> {
    let mut found = None;
    loop {
        let mut status = 0;
        // SAFETY: status is a local the kernel fills.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return found;
        }
        if pid == child {
            found = Some(status);
        }
    }
}
