//! `krg` as the stand-in of a process that moved to another node (bproc's
//! ghost). krgd executes `krg` in the stopped process's place, with the
//! process's command line and `KRG_STANDIN` set (see krgd's
//! `migrate::standin`); the stand-in keeps the process's PID, parent,
//! process group and fds 0-2. It drives the moved process's session as
//! `krg run` drives a job's: output to its stdout and stderr, its stdin
//! (a pipe, or its terminal while in the foreground), every signal it is sent passed on, and it ends as
//! the process ends — the same exit code, or killed by the same signal —
//! so that the parent's `wait()` gets the real status.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use krg_proto::proc::{ExitStatus, ProcRequest};

use crate::output::{self, End, Labels};
use crate::session::{self, Plan};
use crate::signals;

/// Run as the stand-in of token `token` (hexadecimal); never returns.
pub fn main(token: &str, socket: &Path) -> ! {
    let blocked = prepare_signals();
    let Ok(token) = u64::from_str_radix(token, 16) else {
        eprintln!("krg: KRG_STANDIN is not a stand-in token");
        die_by(libc::SIGKILL, &blocked)
    };
    let end = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(stand_in(token, socket, &blocked)));
    match end {
        Ok(End::Exited(ExitStatus::Code(c))) => std::process::exit(c),
        Ok(End::Exited(ExitStatus::Signal { signal, .. })) => die_by(signal, &blocked),
        Ok(_) => die_by(libc::SIGKILL, &blocked),
        Err(e) => {
            eprintln!("krg: the stand-in of a moved process lost it: {e:#}");
            die_by(libc::SIGKILL, &blocked)
        }
    }
}

async fn stand_in(
    token: u64,
    socket: &Path,
    blocked: &nix::sys::signal::SigSet,
) -> anyhow::Result<End> {
    let opened = session::open_session(socket, ProcRequest::StandIn { token }).await?;
    let labels = Labels {
        nodes: opened.jobs.clone(),
        per_node: 1,
    };
    let input = input();
    let listening = signals::everything();
    // Handlers are in place: the signals that came meanwhile go on too.
    let _ = blocked.thread_unblock();
    let input_ready = input
        .is_some()
        .then(|| Box::new(wait_for_input) as crate::stdin::Ready);
    let plan = Plan {
        image: None,
        input,
        input_ready,
        sink: Box::new(output::Plain { labels }),
        tty: false,
        signals: Some(listening),
    };
    let ends = session::drive(opened, plan).await?;
    ends.into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("krgd reported no end"))
}

/// What the stand-in reads for the process: its stdin when that is a
/// pipe, or its terminal (read only while the stand-in is in the
/// terminal's foreground, as the process itself could). A file the process
/// had open as its stdin moved with it: nothing to read here.
fn input() -> Option<Box<dyn Read + Send>> {
    let kind = nix::sys::stat::fstat(std::io::stdin().as_fd())
        .map(|st| st.st_mode & libc::S_IFMT)
        .ok()?;
    if kind == libc::S_IFIFO {
        return Some(Box::new(std::io::stdin()));
    }
    // SAFETY: isatty on fd 0.
    let tty = unsafe { libc::isatty(0) } == 1;
    tty.then(|| Box::new(ForegroundTty) as Box<dyn Read + Send>)
}

/// Wait until fd 0 has input (or its end) to read, or a while passed
/// (false): the stand-in reads only then, so that when its part is held
/// for a checkpoint it stops reading without taking input the part will
/// not get (see `stdin::Credit::pause`).
fn wait_for_input() -> bool {
    let mut fds = [libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 200) };
    // (an error other than EINTR: the read says it)
    ready != 0
        && !(ready < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted)
}

/// The terminal on fd 0, read only while this process's group is its
/// foreground one. A background reader would be stopped by SIGTTIN, or,
/// already blocked in `read` when its job went to the background, would
/// take a line typed for the shell: so it waits for input to be there
/// and for the foreground before each read.
struct ForegroundTty;

fn foreground() -> bool {
    // SAFETY: tcgetpgrp on fd 0 and getpgrp have no memory arguments.
    unsafe { libc::tcgetpgrp(0) == libc::getpgrp() }
}

impl Read for ForegroundTty {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if !foreground() {
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
            let mut fds = [libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
            if ready > 0 && foreground() {
                return std::io::stdin().read(buf);
            }
            if ready < 0
                && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
            {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
}

/// The mask the process left (krgd blocked everything to run its calls):
/// keep it all blocked until handlers are in place, and drop the SIGCONT
/// krgd sent to start the stand-in (it is no signal for the process), and
/// the signals the moved copy has from its image (`KRG_STANDIN_SAVED`).
fn prepare_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let all = SigSet::all();
    let _ = all.thread_block();
    let cont = SigSet::from(Signal::SIGCONT);
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid set and timespec; a NULL info pointer is allowed.
    unsafe { libc::sigtimedwait(cont.as_ref(), std::ptr::null_mut(), &zero) };
    for sig in saved_signals() {
        // SAFETY: an empty set filled by sigemptyset/sigaddset, then one
        // non-blocking wait that takes one pending instance of `sig`.
        unsafe {
            let mut one: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut one);
            libc::sigaddset(&mut one, sig);
            libc::sigtimedwait(&one, std::ptr::null_mut(), &zero);
        }
    }
    // The process's children moved with it; krgd kills their copies here,
    // before or after the stand-in started: the kernel reaps those that
    // end from now on, and those already ended are reaped here.
    // SAFETY: setting a disposition; no handler runs.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    // SAFETY: waitpid with a null status pointer, not blocking.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
    all
}

/// The signals to drop, once each (see `checkpoint::standin::SAVED_VAR`,
/// which krgd sets; this binary does not link the checkpoint crate).
fn saved_signals() -> Vec<i32> {
    std::env::var("KRG_STANDIN_SAVED")
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.parse::<i32>().ok())
        .filter(|s| (1..=64).contains(s))
        .collect()
}

/// End killed by `sig`, as the process was: no handler, no core (the
/// stand-in has nothing of the process to dump).
fn die_by(sig: i32, blocked: &nix::sys::signal::SigSet) -> ! {
    // SAFETY: prctl, signal and raise with plain values; nothing else runs
    // on this thread's behalf any more.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0);
        libc::signal(sig, libc::SIG_DFL);
    }
    let _ = blocked.thread_unblock();
    // SAFETY: as above.
    unsafe { libc::raise(sig) };
    // a signal whose default is not to end (a stop, or one ignored)
    std::process::exit(128 + sig)
}
