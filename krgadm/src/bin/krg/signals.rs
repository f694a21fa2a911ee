//! Signals sent to `krg run` go to the job, as bproc's ghost forwarded
//! them: INT, TERM, HUP, QUIT, USR1, USR2, ALRM, CONT are passed on; a
//! window change sends the new size to the job's terminal (or SIGWINCH
//! without one); SIGTSTP (Ctrl-Z) stops the job and then krg itself, and
//! the SIGCONT of `fg` resumes both.

use krg_proto::proc::Up;
use tokio::signal::unix::{signal, SignalKind};
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

/// Start forwarding; `tty` when the job has a terminal.
pub fn spawn(tx: UnboundedSender<Up>, tty: bool) {
    for &sig in FORWARDED {
        let Ok(mut stream) = signal(SignalKind::from_raw(sig)) else {
            continue;
        };
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
