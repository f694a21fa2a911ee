//! Signals sent to `krg run` go to the job, as bproc's ghost forwarded
//! them: INT, TERM, HUP, QUIT, USR1, USR2, ALRM, CONT are passed on; a
//! window change sends the new size to the job's terminal (or SIGWINCH
//! without one); SIGTSTP (Ctrl-Z) stops the job and then krg itself, and
//! the SIGCONT of `fg` resumes both.

use krg_proto::proc::Up;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc::UnboundedSender;

use crate::term;

const FORWARDED: &[i32] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGWINCH,
    libc::SIGTSTP,
    libc::SIGCONT,
];

/// Signals a stand-in does not pass on: its own children's ends (the
/// copies of the moved tree killed at the move), a pipe closed under it
/// (its output says so), the terminal's stops of a background reader or
/// writer (it stops itself, as the process would have), and those no
/// handler may take.
const NOT_FOR_THE_PROCESS: &[i32] = &[
    libc::SIGCHLD,
    libc::SIGPIPE,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGKILL,
    libc::SIGSTOP,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGSEGV,
];

/// Signals this process listens to (their handlers are in place), to
/// pass on once the session runs.
pub struct Listening(Vec<(i32, Signal)>);

/// Those of a job (`krg run`).
pub fn job() -> Listening {
    listen(FORWARDED.iter().copied())
}

/// Every signal the moved process may be sent (a stand-in's).
pub fn everything() -> Listening {
    // 32 and 33 are the C library's own (thread cancellation, setxid)
    let all = (1..32)
        .chain(libc::SIGRTMIN()..=libc::SIGRTMAX())
        .filter(|s| !NOT_FOR_THE_PROCESS.contains(s));
    listen(all)
}

fn listen(signals: impl Iterator<Item = i32>) -> Listening {
    Listening(
        signals
            .filter_map(|sig| Some((sig, signal(SignalKind::from_raw(sig)).ok()?)))
            .collect(),
    )
}

/// Start forwarding; `tty` when the job has a terminal.
pub fn spawn(listening: Listening, tx: UnboundedSender<Up>, tty: bool) {
    for (sig, mut stream) in listening.0 {
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                handle(sig, &tx, tty).await;
            }
        });
    }
}

async fn handle(sig: i32, tx: &UnboundedSender<Up>, tty: bool) {
    match sig {
        libc::SIGWINCH if tty => {
            if let Some(ws) = term::window_size() {
                let _ = tx.send(Up::WinSize(ws));
            }
        }
        libc::SIGTSTP => {
            let _ = tx.send(Up::Signal(libc::SIGTSTP));
            // Let the writer send it before this process stops.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            term::restore();
            // SAFETY: stopping this process; `fg` continues it.
            unsafe { libc::raise(libc::SIGSTOP) };
        }
        libc::SIGCONT => {
            if tty {
                term::raw();
            }
            let _ = tx.send(Up::Signal(libc::SIGCONT));
        }
        _ => {
            let _ = tx.send(Up::Signal(sig));
        }
    }
}
