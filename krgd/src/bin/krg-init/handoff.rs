//! The job's end of `krg push`'s hand-over (the protocol is in
//! `krgd::service::proc::pushfile`): when stdin is a socket, the opened
//! destination goes to krgd, which writes it, and the job waits for how
//! that ended; a destination krgd would not write is copied here.

use std::fs::File;
use std::io::{IoSlice, Read};
use std::os::fd::{AsRawFd, RawFd};

use krgd::service::proc::pushfile::{direct_writable, COPY_HERE, HAND_OVER};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// Whether stdin is a socket (krgd offers the hand-over).
pub fn offered() -> bool {
    nix::sys::stat::fstat(std::io::stdin())
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

/// Hand `file` over and leave as krgd says the writes ended; or, for a
/// destination krgd does not write, tell krgd so and give `file` back for
/// the caller to copy stdin into.
pub fn push(file: File, path: &[u8]) -> File {
    let stdin: RawFd = 0;
    if !direct_writable(&file) {
        if say(stdin, COPY_HERE, None).is_err() {
            fail(path, "krgd is gone");
        }
        return file;
    }
    if say(stdin, HAND_OVER, Some(file.as_raw_fd())).is_err() {
        fail(path, "krgd is gone");
    }
    drop(file);
    let mut answer = [0u8; 4];
    if std::io::stdin().lock().read_exact(&mut answer).is_err() {
        fail(path, "the writes did not complete");
    }
    match i32::from_le_bytes(answer) {
        0 => std::process::exit(0),
        errno => fail(path, &std::io::Error::from_raw_os_error(errno).to_string()),
    }
}

fn say(sock: RawFd, word: u8, fd: Option<RawFd>) -> nix::Result<usize> {
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    sendmsg::<()>(
        sock,
        &[IoSlice::new(&[word])],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
}

fn fail(path: &[u8], why: &str) -> ! {
    eprintln!("krg push: {}: {why}", String::from_utf8_lossy(path));
    std::process::exit(1)
}
