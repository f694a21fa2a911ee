//! `restart --gate-fd FD`: the restored tree is let go only when the
//! caller says so. Once every task is back (memory, files, registers in,
//! still held under ptrace, none has run an instruction of its own),
//! restart writes [`READY`] on FD and reads one byte back: [`GO`] lets the
//! tasks run; anything else, or end of file (the caller closed it, or
//! died), kills them, and restart fails saying so.
//!
//! krgd uses it on a migration's target: the cluster's replicated log
//! decides which node runs a moved process, and the target's copy must not
//! run before that decision names its node (see docs/migration.md,
//! *Failure semantics*).

use std::os::fd::{AsRawFd, OwnedFd};

use crate::error::{ChkptError, Result};

/// Written by restart when the tree is ready to run.
pub const READY: u8 = b'R';
/// Written by the caller to let it run.
pub const GO: u8 = b'G';

/// Take `--gate-fd FD` (given to restart for this use) as ours, checking
/// that it is open.
pub fn take(fd: i32) -> Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_GETFD only asks whether the number is an open descriptor.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(ChkptError::Usage(format!(
            "--gate-fd {fd} is not an open descriptor"
        )));
    }
    // SAFETY: open (checked above) and handed to restart for the gate
    // alone; nothing else in restart owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Say the tree is ready on `gate`, and wait for the answer.
pub fn wait(gate: &OwnedFd) -> Result<()> {
    let fd = gate.as_raw_fd();
    let io = |what: &str, e: std::io::Error| ChkptError::io(format!("--gate-fd {fd} ({what})"), e);
    // SAFETY: writing one byte from a live buffer to a descriptor we hold.
    let n = retry(|| unsafe { libc::write(fd, [READY].as_ptr().cast(), 1) });
    if n != 1 {
        return Err(io("write", std::io::Error::last_os_error()));
    }
    let mut answer = [0u8; 1];
    // SAFETY: reading one byte into a live one-byte buffer.
    let n = retry(|| unsafe { libc::read(fd, answer.as_mut_ptr().cast(), 1) });
    match (n, answer[0]) {
        (1, GO) => Ok(()),
        (n, _) if n < 0 => Err(io("read", std::io::Error::last_os_error())),
        _ => Err(ChkptError::Usage(
            "the caller did not let the restored processes run (--gate-fd closed): they were killed"
                .into(),
        )),
    }
}

/// Run a system call again while a signal interrupts it.
fn retry(mut call: impl FnMut() -> isize) -> isize {
    loop {
        let n = call();
        if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn pair() -> (UnixStream, OwnedFd) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (ours, OwnedFd::from(theirs))
    }

    #[test]
    fn go_lets_the_tree_run() {
        let (mut caller, gate) = pair();
        let t = std::thread::spawn(move || wait(&gate));
        let mut b = [0u8; 1];
        caller.read_exact(&mut b).unwrap();
        assert_eq!(b[0], READY);
        caller.write_all(&[GO]).unwrap();
        t.join().unwrap().unwrap();
    }

    #[test]
    fn a_closed_gate_or_another_byte_refuses() {
        let (mut caller, gate) = pair();
        let t = std::thread::spawn(move || wait(&gate));
        let mut b = [0u8; 1];
        caller.read_exact(&mut b).unwrap();
        drop(caller);
        let e = t.join().unwrap().unwrap_err().to_string();
        assert!(e.contains("did not let"), "{e}");
        let (mut caller, gate) = pair();
        let t = std::thread::spawn(move || wait(&gate));
        caller.read_exact(&mut b).unwrap();
        caller.write_all(b"N").unwrap();
        assert!(t.join().unwrap().is_err());
    }
}
