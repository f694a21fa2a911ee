//! krgd's side: start the zygote, ask it for inits, replace it when it
//! dies, and fall back to executing `krg-init` per job when it cannot run.
//! Everything here runs on the spawner thread, one request at a time.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::{decode_reply, recv_with_fds, send_with_fds, READY};
use crate::service::proc::spawn::{clone_init, pidfd_open, pidfd_signal, reap, InitProcess};

/// How long a new zygote has to say it is ready, and a request to be
/// answered: a clone takes microseconds; this only bounds a wedged zygote.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// After a zygote could not be started, inits are executed directly for
/// this long before another start is tried.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// A running zygote.
struct Zygote {
    sock: OwnedFd,
    process: InitProcess,
}

/// Why a request failed.
enum Failure {
    /// The zygote is unusable (dead, wedged, garbled): replace it.
    Gone(io::Error),
    /// It answered, and the clone itself failed: the job's error.
    Refused(io::Error),
}

impl Zygote {
    fn start(init: &CString) -> io::Result<Zygote> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let process = clone_init(init, &[theirs], false)?;
        let z = Zygote {
            sock: ours,
            process,
        };
        let mut hello = [0u8; 1];
        match z.answer(&mut hello)? {
            1 if hello[0] == READY => Ok(z),
            _ => Err(io::Error::other(
                "it did not say it was ready (an older krg-init?)",
            )),
        }
    }

    /// Wait (bounded) for the zygote's next message.
    fn answer(&self, buf: &mut [u8]) -> io::Result<usize> {
        wait_readable(self.sock.as_raw_fd(), ANSWER_WITHIN)?;
        let (n, _fds) = recv_with_fds(self.sock.as_raw_fd(), buf)?;
        Ok(n)
    }

    fn spawn(&self, fds: &[OwnedFd]) -> Result<InitProcess, Failure> {
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        send_with_fds(self.sock.as_raw_fd(), &[raw.len() as u8], &raw).map_err(Failure::Gone)?;
        let mut reply = [0u8; 8];
        let n = self.answer(&mut reply).map_err(Failure::Gone)?;
        if n != reply.len() {
            return Err(Failure::Gone(io::Error::other("short answer")));
        }
        let pid = decode_reply(&reply).map_err(|e| match e.raw_os_error() {
            Some(_) => Failure::Refused(e),
            None => Failure::Gone(e),
        })?;
        // Our child, not reaped yet: the PID cannot name another process.
        let pidfd = pidfd_open(pid).map_err(Failure::Gone)?;
        Ok(InitProcess { pid, pidfd })
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        let _ = pidfd_signal(&self.process.pidfd, libc::SIGKILL);
        reap(&self.process.pidfd);
    }
}

fn wait_readable(fd: RawFd, within: Duration) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = within.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: poll on one local pollfd.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        n if n < 0 => Err(io::Error::last_os_error()),
        0 => Err(io::Error::new(io::ErrorKind::TimedOut, "no answer")),
        _ => Ok(()),
    }
}

/// Starts inits through a zygote when one runs, else directly.
#[derive(Default)]
pub struct InitStarter {
    zygote: Option<Zygote>,
    /// No zygote is tried before then (the last start failed).
    retry_after: Option<Instant>,
}

impl InitStarter {
    /// Start `init` in a new PID namespace with `fds` as 0, 1, 2, ...
    pub fn start(&mut self, init: &CString, fds: &[OwnedFd]) -> io::Result<InitProcess> {
        // Twice: a zygote found dead is replaced once.
        for _ in 0..2 {
            let Some(zygote) = self.zygote(init) else {
                break;
            };
            match zygote.spawn(fds) {
                Ok(p) => return Ok(p),
                Err(Failure::Refused(e)) => return Err(e),
                Err(Failure::Gone(e)) => {
                    tracing::warn!(error = %e, "the job zygote stopped answering; starting another");
                    self.zygote = None;
                }
            }
        }
        clone_init(init, fds, true)
    }

    /// The running zygote, started if there is none and it is time to try.
    fn zygote(&mut self, init: &CString) -> Option<&Zygote> {
        if self.zygote.is_none() && self.retry_after.is_none_or(|t| Instant::now() >= t) {
            match Zygote::start(init) {
                Ok(z) => {
                    self.zygote = Some(z);
                    self.retry_after = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e,
                        "cannot start the job zygote; executing krg-init for each job");
                    self.retry_after = Some(Instant::now() + RETRY_AFTER);
                }
            }
        }
        self.zygote.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An "init" that is no zygote (it says nothing and exits): the start
    /// falls back to executing it directly, and the next start does not
    /// try a zygote again before RETRY_AFTER. Needs root (a PID namespace).
    #[test]
    fn without_a_zygote_inits_are_executed_directly() {
        let mut starter = InitStarter::default();
        let init = CString::new("/bin/true").unwrap();
        for _ in 0..2 {
            let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
            let p = starter.start(&init, &[null]).unwrap();
            assert!(starter.zygote.is_none());
            assert!(starter.retry_after.is_some());
            // Our child: it can be waited for.
            let ended = crate::service::proc::spawn::try_reap(&p.pidfd);
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut ended = ended.unwrap();
            while ended.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
                ended = crate::service::proc::spawn::try_reap(&p.pidfd).unwrap();
            }
            assert_eq!(ended, Some(0), "/bin/true ran and exited 0");
        }
    }
}
