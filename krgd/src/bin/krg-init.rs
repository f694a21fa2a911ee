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
//! for `krg push` / `krg get`). Failures of those steps reach krgd as
//! (stage, errno) through a close-on-exec pipe.
//!
//! Started with a seqpacket socket as descriptor 0 and no spec, it is the
//! zygote instead: it forks each job's init for krgd
//! (`krgd::service::proc::zygote`), which then goes on here as above.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use krgd::service::proc::initspec::{
    InitEvent, InitProgram, InitSpec, Stage, IMAGE_FD, MAX_SPEC, SPEC_FD, STATUS_FD,
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
    let mut check = [0 as RawFd; 2];
    // SAFETY: check has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(check.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        report(InitEvent::Failed {
            stage: Stage::Fork,
            errno: errno(),
        });
        return 1;
    }
    // SAFETY: the init is single-threaded, so the child may run any code.
    let child = unsafe { libc::fork() };
    if child < 0 {
        report(InitEvent::Failed {
            stage: Stage::Fork,
            errno: errno(),
        });
        return 1;
    }
    if child == 0 {
        // SAFETY: closing the child's copy of the read end.
        unsafe { libc::close(check[0]) };
        child_main(spec, check[1]);
    }
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

/// The child: become the job's program. Never returns.
fn child_main(spec: &InitSpec, check: RawFd) -> ! {
    let fail = |stage: Stage, errno: i32| -> ! {
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&(stage as i32).to_le_bytes());
        buf[4..].copy_from_slice(&errno.to_le_bytes());
        // SAFETY: writing a local buffer, then leaving without unwinding.
        unsafe {
            libc::write(check, buf.as_ptr().cast(), buf.len());
            libc::_exit(127)
        }
    };
    reset_signals();
    // SAFETY: session and process-group calls on ourselves.
    let term = unsafe {
        if spec.tty {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                Err(errno())
            } else {
                Ok(())
            }
        } else if libc::setpgid(0, 0) != 0 {
            Err(errno())
        } else {
            Ok(())
        }
    };
    if let Err(e) = term {
        fail(Stage::Terminal, e);
    }
    if let Err(e) = take_credentials(spec) {
        fail(Stage::Credentials, e);
    }
    let cwd = match cstring(&spec.cwd) {
        Ok(c) => c,
        Err(e) => fail(Stage::Cwd, e),
    };
    // SAFETY: cwd is a valid C string.
    if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
        fail(Stage::Cwd, errno());
    }
    match &spec.program {
        InitProgram::WriteFile { path, name, mode } => {
            let file = match open_destination(path, name, *mode) {
                Ok(f) => f,
                Err(e) => fail(Stage::Open, e),
            };
            // SAFETY: the write end of the check pipe is ours to close.
            unsafe { libc::close(check) };
            copy_and_exit(std::io::stdin().lock(), file, "krg push", path)
        }
        InitProgram::ReadFile { path } => {
            let file = match std::fs::File::open(std::ffi::OsStr::from_bytes(path)) {
                Ok(f) => f,
                Err(e) => fail(Stage::Open, e.raw_os_error().unwrap_or(libc::EIO)),
            };
            // SAFETY: the write end of the check pipe is ours to close.
            unsafe { libc::close(check) };
            copy_and_exit(file, std::io::stdout().lock(), "krg get", path)
        }
        InitProgram::Search | InitProgram::ImageFd => {
            let e = exec(spec);
            fail(Stage::Exec, e)
        }
        // run() never forks for it
        InitProgram::Adopt => fail(Stage::Spec, libc::EINVAL),
    }
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
/// raised again); each call sets real, effective and saved ids.
fn take_credentials(spec: &InitSpec) -> Result<(), i32> {
    // SAFETY: groups points at spec.groups.len() gids; the id calls take numbers.
    unsafe {
        if libc::setgroups(spec.groups.len(), spec.groups.as_ptr()) != 0 {
            return Err(errno());
        }
        if libc::setresgid(spec.gid, spec.gid, spec.gid) != 0 {
            return Err(errno());
        }
        if libc::setresuid(spec.uid, spec.uid, spec.uid) != 0 {
            return Err(errno());
        }
        if spec.uid != 0 && libc::geteuid() == 0 {
            return Err(libc::EPERM);
        }
    }
    Ok(())
}

/// Execute the program; returns the errno of the last failed attempt.
fn exec(spec: &InitSpec) -> i32 {
    let argv: Vec<CString> = match spec.argv.iter().map(|a| cstring(a)).collect() {
        Ok(v) => v,
        Err(e) => return e,
    };
    let env: Vec<CString> = match spec.env.iter().map(|a| cstring(a)).collect() {
        Ok(v) => v,
        Err(e) => return e,
    };
    let Some(first) = argv.first() else {
        return libc::EINVAL;
    };
    let mut argp: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    if spec.program == InitProgram::ImageFd {
        keep_image_only_for_scripts();
        // SAFETY: argp and envp are NULL-terminated arrays of valid C strings.
        unsafe { libc::fexecve(IMAGE_FD, argp.as_ptr(), envp.as_ptr()) };
        return errno();
    }
    let name = first.as_bytes();
    if name.contains(&b'/') {
        // SAFETY: as above.
        unsafe { libc::execve(first.as_ptr(), argp.as_ptr(), envp.as_ptr()) };
        return errno();
    }
    let path = spec
        .env
        .iter()
        .find_map(|e| e.strip_prefix(b"PATH="))
        .unwrap_or(b"/usr/local/bin:/usr/bin:/bin");
    // As execvp: the first hit runs; EACCES is remembered, and a missing
    // file anywhere means "not found".
    let mut last = libc::ENOENT;
    let mut denied = false;
    for dir in path.split(|b| *b == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let mut full = dir.to_vec();
        full.push(b'/');
        full.extend_from_slice(name);
        let Ok(full) = CString::new(full) else {
            continue;
        };
        // SAFETY: as above.
        unsafe { libc::execve(full.as_ptr(), argp.as_ptr(), envp.as_ptr()) };
        match errno() {
            libc::EACCES => denied = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ELOOP | libc::ENAMETOOLONG => {}
            e => {
                last = e;
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
