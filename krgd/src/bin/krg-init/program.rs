//! The job's program: its process takes the job's session (or process
//! group), credentials and working directory, then executes the program or
//! runs a built-in copy for `krg push` / `krg get`.
//!
//! Everything it needs is prepared in the init first ([`Prepared`]). A
//! program is started as posix_spawn does (`CLONE_VM | CLONE_VFORK`): its
//! process shares the init's memory until it executes, so it copies no
//! page tables and takes no copy-on-write faults, and it only makes system
//! calls on the prepared data. The built-in copies run Rust code in the
//! child, so they fork; a push whose stdin is a socket hands the opened
//! destination to krgd instead of copying ([`crate::handoff`]). Failures
//! before the program runs reach the init as (stage, errno) on the
//! close-on-exec `check` pipe.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

use krgd::service::proc::initspec::{InitProgram, InitSpec, Stage, IMAGE_FD};

use crate::{cstring, errno};

/// Size of the stack a vforked child runs on until it executes.
const CHILD_STACK: usize = 64 * 1024;

/// What the program's process does, prepared before it exists: the spec
/// (credentials, terminal, program) and what it takes as C strings.
pub struct Prepared<'a> {
    spec: &'a InitSpec,
    cwd: CString,
    exec: Option<Exec>,
}

/// An execution: argument and environment vectors, and the paths to try.
struct Exec {
    // Owners of the strings argp and envp point into.
    _argv: Vec<CString>,
    _env: Vec<CString>,
    argp: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// Tried in order, as execvp does (one when argv[0] holds a '/').
    candidates: Vec<CString>,
    /// argv[0] named a path: its own error is the answer.
    direct: bool,
    /// Execute the image at IMAGE_FD instead.
    image: bool,
}

impl<'a> Prepared<'a> {
    pub fn new(spec: &'a InitSpec) -> Result<Prepared<'a>, (Stage, i32)> {
        let cwd = cstring(&spec.cwd).map_err(|e| (Stage::Cwd, e))?;
        let exec = match spec.program {
            InitProgram::Search | InitProgram::ImageFd => {
                Some(Exec::new(spec).map_err(|e| (Stage::Exec, e))?)
            }
            _ => None,
        };
        Ok(Prepared { spec, cwd, exec })
    }
}

impl Exec {
    fn new(spec: &InitSpec) -> Result<Exec, i32> {
        let argv: Vec<CString> = spec
            .argv
            .iter()
            .map(|a| cstring(a))
            .collect::<Result<_, _>>()?;
        let env: Vec<CString> = spec
            .env
            .iter()
            .map(|a| cstring(a))
            .collect::<Result<_, _>>()?;
        let name = argv.first().ok_or(libc::EINVAL)?.as_bytes().to_vec();
        let direct = name.contains(&b'/');
        let candidates = if direct {
            vec![cstring(&name)?]
        } else {
            let path = spec
                .env
                .iter()
                .find_map(|e| e.strip_prefix(b"PATH="))
                .unwrap_or(b"/usr/local/bin:/usr/bin:/bin");
            path.split(|b| *b == b':')
                .filter_map(|dir| {
                    let mut full = if dir.is_empty() {
                        b".".to_vec()
                    } else {
                        dir.to_vec()
                    };
                    full.push(b'/');
                    full.extend_from_slice(&name);
                    CString::new(full).ok()
                })
                .collect()
        };
        let mut argp: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argp.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        Ok(Exec {
            _argv: argv,
            _env: env,
            argp,
            envp,
            candidates,
            direct,
            image: spec.program == InitProgram::ImageFd,
        })
    }
}

/// Start the program's process; its PID, or the errno of the clone/fork.
pub fn start(p: &Prepared, check: RawFd) -> Result<libc::pid_t, i32> {
    match &p.exec {
        Some(exec) => spawn_exec(p, exec, check),
        None => fork_copy(p, check),
    }
}

/// What the vforked child reads.
struct ChildArgs<'a> {
    p: &'a Prepared<'a>,
    exec: &'a Exec,
    check: RawFd,
}

fn spawn_exec(p: &Prepared, exec: &Exec, check: RawFd) -> Result<libc::pid_t, i32> {
    let args = ChildArgs { p, exec, check };
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down: hand over its (16-byte aligned) top.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    // SAFETY: `top` is the top of a live, writable stack the child uses
    // until it executes or exits; CLONE_VFORK keeps this thread (and so
    // `stack` and `args`) waiting until then. The child only reads `args`
    // and makes system calls (see `exec_child`).
    let pid = unsafe {
        libc::clone(
            exec_child,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&args as *const ChildArgs).cast_mut().cast(),
        )
    };
    drop(stack);
    if pid < 0 {
        return Err(errno());
    }
    Ok(pid)
}

/// The vforked child, on the borrowed stack, sharing the init's memory:
/// system calls on prepared data only, until it executes or exits.
extern "C" fn exec_child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildArgs the parent keeps alive while it waits
    // (CLONE_VFORK); it is only read.
    let a = unsafe { &*arg.cast::<ChildArgs>() };
    if let Err((stage, e)) = enter(a.p) {
        fail(a.check, stage, e);
    }
    fail(a.check, Stage::Exec, execute(a.exec))
}

/// Report (stage, errno) on the check pipe and leave without unwinding or
/// running the init's exit handlers.
fn fail(check: RawFd, stage: Stage, errno: i32) -> ! {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&(stage as i32).to_le_bytes());
    buf[4..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: writing a local buffer, then leaving.
    unsafe {
        libc::write(check, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

/// Become the job's process: default signals, its session or process
/// group, its credentials, its working directory. System calls only.
fn enter(p: &Prepared) -> Result<(), (Stage, i32)> {
    reset_signals();
    // SAFETY: session and process-group calls on ourselves.
    let term = unsafe {
        if p.spec.tty {
            libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0
        } else {
            libc::setpgid(0, 0) != 0
        }
    };
    if term {
        return Err((Stage::Terminal, errno()));
    }
    take_credentials(p).map_err(|e| (Stage::Credentials, e))?;
    // SAFETY: cwd is a valid C string.
    if unsafe { libc::chdir(p.cwd.as_ptr()) } != 0 {
        return Err((Stage::Cwd, errno()));
    }
    Ok(())
}

/// Default dispositions (krgd ignores SIGPIPE, as Rust programs do) and an
/// empty mask, as a program expects.
fn reset_signals() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: setting a default disposition; invalid numbers fail harmlessly.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: an empty, initialised set.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Groups first, then the gid, then the uid (after which nothing can be
/// raised again); each call sets real, effective and saved ids. Raw system
/// calls: they change this process's credentials only, whatever the C
/// library believes about threads in the memory it shares with the init.
fn take_credentials(p: &Prepared) -> Result<(), i32> {
    let InitSpec {
        uid, gid, groups, ..
    } = p.spec;
    // SAFETY: groups points at groups.len() gids; the id calls take numbers.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
            return Err(errno());
        }
        if libc::syscall(libc::SYS_setresgid, *gid, *gid, *gid) != 0 {
            return Err(errno());
        }
        if libc::syscall(libc::SYS_setresuid, *uid, *uid, *uid) != 0 {
            return Err(errno());
        }
        if *uid != 0 && libc::syscall(libc::SYS_geteuid) == 0 {
            return Err(libc::EPERM);
        }
    }
    Ok(())
}

/// Execute the program; returns the errno of the last failed attempt.
fn execute(e: &Exec) -> i32 {
    if e.image {
        keep_image_only_for_scripts();
        // SAFETY: argp and envp are NULL-terminated arrays of valid C strings.
        unsafe { libc::fexecve(IMAGE_FD, e.argp.as_ptr(), e.envp.as_ptr()) };
        return errno();
    }
    // As execvp: the first hit runs; EACCES is remembered, and a missing
    // file anywhere means "not found".
    let mut last = libc::ENOENT;
    let mut denied = false;
    for full in &e.candidates {
        // SAFETY: as above; full is a valid C string.
        unsafe { libc::execve(full.as_ptr(), e.argp.as_ptr(), e.envp.as_ptr()) };
        let err = errno();
        if e.direct {
            return err;
        }
        match err {
            libc::EACCES => denied = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ELOOP | libc::ENAMETOOLONG => {}
            other => {
                last = other;
                break;
            }
        }
    }
    if denied && last == libc::ENOENT {
        libc::EACCES
    } else {
        last
    }
}

/// A script's interpreter opens the image as /dev/fd/N, so it stays open
/// for scripts; a binary does not need it after exec.
fn keep_image_only_for_scripts() {
    let mut magic = [0u8; 2];
    // SAFETY: reading two bytes into a local buffer from our own descriptor.
    let n = unsafe { libc::pread(IMAGE_FD, magic.as_mut_ptr().cast(), 2, 0) };
    if n != 2 || magic != *b"#!" {
        // SAFETY: flag change on our own descriptor.
        unsafe { libc::fcntl(IMAGE_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Fork the process of a built-in copy (it runs Rust code, so no vfork).
fn fork_copy(p: &Prepared, check: RawFd) -> Result<libc::pid_t, i32> {
    // SAFETY: the init is single-threaded, so the child may run any code.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(errno());
    }
    if child == 0 {
        if let Err((stage, e)) = enter(p) {
            fail(check, stage, e);
        }
        copy(p.spec, check);
    }
    Ok(child)
}

/// The built-in copies, as the job's user. Never returns.
fn copy(spec: &InitSpec, check: RawFd) -> ! {
    match &spec.program {
        InitProgram::WriteFile { path, name, mode } => {
            let file = match open_destination(path, name, *mode) {
                Ok(f) => f,
                Err(e) => fail(check, Stage::Open, e),
            };
            // SAFETY: the write end of the check pipe is ours to close.
            unsafe { libc::close(check) };
            let file = if super::handoff::offered() {
                super::handoff::push(file, path)
            } else {
                file
            };
            copy_and_exit(std::io::stdin().lock(), file, "krg push", path)
        }
        InitProgram::ReadFile { path } => {
            let file = match std::fs::File::open(std::ffi::OsStr::from_bytes(path)) {
                Ok(f) => f,
                Err(e) => fail(check, Stage::Open, e.raw_os_error().unwrap_or(libc::EIO)),
            };
            // SAFETY: the write end of the check pipe is ours to close.
            unsafe { libc::close(check) };
            copy_and_exit(file, std::io::stdout().lock(), "krg get", path)
        }
        // Executions are vforked; run() never starts a process for Adopt.
        _ => fail(check, Stage::Spec, libc::EINVAL),
    }
}

/// Open (create or truncate) the destination of `krg push`, as the user.
fn open_destination(path: &[u8], name: &[u8], mode: u32) -> Result<std::fs::File, i32> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |p: &[u8]| {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode & 0o7777)
            .open(std::ffi::OsStr::from_bytes(p))
    };
    let is_dir = std::fs::metadata(std::ffi::OsStr::from_bytes(path)).is_ok_and(|m| m.is_dir());
    let target = if is_dir {
        if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
            return Err(libc::EINVAL);
        }
        let mut p = path.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        p
    } else {
        path.to_vec()
    };
    open(&target).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

/// Copy, then leave with 0, or with 1 and one line on stderr.
fn copy_and_exit(mut from: impl Read, mut to: impl Write, what: &str, path: &[u8]) -> ! {
    let done = std::io::copy(&mut from, &mut to).and_then(|_| to.flush());
    match done {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{what}: {}: {e}", String::from_utf8_lossy(path));
            std::process::exit(1)
        }
    }
}
