//! Terminals: a window size (`krg run -t` sends its terminal's), and
//! the whole state of a job's terminal when the job moves to another node
//! (`AdoptJob`).

use serde::{Deserialize, Serialize};

/// A terminal's window size (`struct winsize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinSize {
    /// Rows of characters.
    pub rows: u16,
    /// Columns of characters.
    pub cols: u16,
    /// Width in pixels (0 if unknown).
    pub xpixel: u16,
    /// Height in pixels (0 if unknown).
    pub ypixel: u16,
}

/// The terminal of a job that moves: the target makes a new one with
/// these settings and makes it the job's controlling terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTerminal {
    /// Its window size.
    pub winsize: WinSize,
    /// Its settings (echo, canonical mode, special characters…).
    pub settings: TermSettings,
    /// The foreground process group, as a PID of the image (0: none of
    /// the job's).
    pub fg_pgid: i32,
}

/// A terminal's settings: `struct termios`, field by field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSettings {
    /// Input modes.
    pub iflag: u32,
    /// Output modes.
    pub oflag: u32,
    /// Control modes.
    pub cflag: u32,
    /// Local modes.
    pub lflag: u32,
    /// Line discipline.
    pub line: u8,
    /// Special characters (`c_cc`).
    pub cc: Vec<u8>,
    /// Input speed.
    pub ispeed: u32,
    /// Output speed.
    pub ospeed: u32,
}
