//! The files a task's mappings map, each opened once inside the task while
//! its address space is rebuilt ([`mm`](super::mm)): a library is mapped
//! four or five times (code, read-only data, data, relocations), and every
//! injected call is a ptrace round trip (about 20 µs here), so an `openat`
//! and a `close` per mapping were a third of a restored interpreter's
//! memory set-up.

use std::collections::HashMap;

use super::ctx::TaskCtx;
use crate::error::Result;

/// Descriptors kept open at once at most (the task's fd limit is its
/// restarter's until its own limits are set, at the end).
const MAX_OPEN: usize = 64;

/// Descriptors open in the task, by path and open mode.
#[derive(Default)]
pub struct MapFiles {
    open: HashMap<(String, i32), u64>,
}

impl MapFiles {
    /// A descriptor of `path` opened with `mode` (`O_RDONLY`/`O_RDWR`) in
    /// the task, as the task's file-system user: the one opened before for
    /// the same, else a new one.
    pub fn fd(&mut self, c: &TaskCtx, path: &str, mode: i32) -> Result<u64> {
        let key = (path.to_string(), mode);
        if let Some(&fd) = self.open.get(&key) {
            return Ok(fd);
        }
        if self.open.len() >= MAX_OPEN {
            self.close_all(c)?;
        }
        let p = c.put_str(path, 0)?;
        let fd = c.inj.call(
            "openat",
            libc::SYS_openat,
            [
                libc::AT_FDCWD as u64,
                p,
                (mode | libc::O_CLOEXEC) as u64,
                0,
                0,
                0,
            ],
        )?;
        self.open.insert(key, fd);
        Ok(fd)
    }

    /// Close every descriptor opened here.
    pub fn close_all(&mut self, c: &TaskCtx) -> Result<()> {
        for (_, fd) in self.open.drain() {
            c.inj.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        }
        Ok(())
    }
}
