//! A plug-in process: started in its own process group, talked to line by
//! line with a deadline on every read, stopped by closing its stdin.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::trust::{open_trusted, Trust};
use super::PluginEntry;
use crate::error::{Error, Result};

pub(super) struct PluginProcess {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Why the plug-in can no longer be used (it exited).
    pub dead: Option<String>,
}

/// Start the executable, if only root can change it (it runs as krgd's
/// user, root). ETXTBSY (the file is still open for writing somewhere, e.g.
/// being copied into place, or inherited by a process that is between fork
/// and exec) is retried for a moment.
fn spawn(entry: &PluginEntry, node: u32) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    let exe = open_trusted(&entry.exe, Trust::Executable).inspect_err(|e| {
        if let Error::Untrusted(_) = e {
            tracing::error!(plugin = %entry.name, error = %e, "plug-in not started");
        }
    })?;
    let mut attempt = 0;
    loop {
        // The resolved path is the one checked: a link on the way to it
        // could otherwise be changed after the check.
        let spawned = Command::new(&exe.path)
            .arg0(&entry.exe)
            .args(&entry.args)
            // Its own process group, so that stopping it also stops whatever
            // it started (a shell plug-in's `sleep`, `df`, ...).
            .process_group(0)
            .env("KRG_NODE_ID", node.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        match spawned {
            Ok(child) => return Ok(child),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 50 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                let what = format!(
                    "plug-in {}: cannot start {}",
                    entry.name,
                    entry.exe.display()
                );
                return Err(Error::io(what, e));
            }
        }
    }
}

impl PluginProcess {
    pub fn start(entry: &PluginEntry, node: u32) -> Result<PluginProcess> {
        let mut child = spawn(entry, node)?;
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            // A reader thread turns the pipe into a channel so every read can
            // have a deadline; it ends when the plug-in closes stdout.
            let reader = std::thread::Builder::new()
                .name(format!("plugin-{}", entry.name))
                .spawn(move || {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                });
            if let Err(e) = reader {
                let _ = child.kill();
                let _ = child.wait();
                let what = format!("plug-in {}: starting its reader thread", entry.name);
                return Err(Error::io(what, e));
            }
        }
        let stdin = child.stdin.take();
        Ok(PluginProcess {
            name: entry.name.clone(),
            child,
            stdin,
            lines,
            dead: None,
        })
    }

    pub fn bad(&self, what: &str) -> Error {
        Error::Plugin(format!("plug-in {}: {what}", self.name))
    }

    pub fn next_line(&mut self, deadline: Instant) -> Result<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(l) => Ok(l),
            Err(RecvTimeoutError::Timeout) => Err(self.bad("did not answer in time")),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.try_wait().ok().flatten().map(|s| s.to_string());
                let why = format!(
                    "exited ({})",
                    status.unwrap_or_else(|| "closed its output".into())
                );
                self.dead = Some(why.clone());
                Err(self.bad(&why))
            }
        }
    }

    /// Send a request, after dropping what a previous, timed-out answer left
    /// behind (so that this answer is not read one request late).
    pub fn send(&mut self, text: &str) -> Result<()> {
        if let Some(why) = &self.dead {
            return Err(self.bad(why));
        }
        while self.lines.try_recv().is_ok() {}
        let sent = match self.stdin.as_mut() {
            Some(s) => s.write_all(text.as_bytes()).and_then(|_| s.flush()),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        if let Err(e) = sent {
            // Collect the exit status if it is gone.
            let _ = self.next_line(Instant::now());
            let why = self
                .dead
                .clone()
                .unwrap_or_else(|| format!("stdin closed: {e}"));
            self.dead = Some(why.clone());
            return Err(self.bad(&why));
        }
        Ok(())
    }

    /// Close stdin, give the plug-in 1 s to exit, then kill its group.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: kill(2) on the process group we created for this child
        // (its pid is the group id); the child is not reaped yet, so the id
        // cannot have been reused.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
