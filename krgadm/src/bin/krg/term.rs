//! The local terminal: whether stdio is one, its window size, and raw
//! mode while a job runs on a remote terminal (restored on every way out:
//! exit, error, Ctrl-Z).

use std::io::IsTerminal;
use std::sync::Mutex;

use krg_proto::proc::WinSize;
use nix::sys::termios::{self, SetArg, Termios};

static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Whether stdin and stdout are both terminals.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// Whether stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// The window size of the terminal on stdout (or stdin).
pub fn window_size() -> Option<WinSize> {
    for fd in [1, 0, 2] {
        let mut w = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize into `w`.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) } == 0 && w.ws_row > 0 {
            return Some(WinSize {
                rows: w.ws_row,
                cols: w.ws_col,
                xpixel: w.ws_xpixel,
                ypixel: w.ws_ypixel,
            });
        }
    }
    None
}

/// Put the terminal on stdin in raw mode (keys go to the job's terminal),
/// remembering how it was.
pub fn raw() {
    let stdin = std::io::stdin();
    let Ok(old) = termios::tcgetattr(&stdin) else {
        return;
    };
    let mut new = old.clone();
    termios::cfmakeraw(&mut new);
    if termios::tcsetattr(&stdin, SetArg::TCSADRAIN, &new).is_ok() {
        let mut saved = SAVED.lock().unwrap_or_else(|p| p.into_inner());
        if saved.is_none() {
            *saved = Some(old);
        }
    }
}

/// Give the terminal back as it was before [`raw`] (a no-op otherwise).
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(old) = saved {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSADRAIN, &old);
    }
}
