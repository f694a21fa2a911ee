//! krgd's end of a push job's stdin socket: a thread of its own per job
//! that waits for the job's first word, then writes every stdin chunk
//! either into the handed-over file or into the socket (the job copies),
//! acknowledging each chunk so the sender's window moves.

use std::io::{self, IoSlice, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use krg_proto::proc::Down;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessageOwned, MsgFlags};
use tokio::sync::mpsc;

use super::{direct_writable, COPY_HERE, HAND_OVER};

/// What one push job's stdin thread needs.
pub struct PushStdin {
    /// The job's number in its session.
    pub job: u32,
    /// krgd's end of the job's stdin.
    pub sock: UnixStream,
    /// The job's owner and group: the writes are theirs.
    pub uid: u32,
    /// The owner's group.
    pub gid: u32,
    /// Chunks of stdin, closed at its end.
    pub chunks: mpsc::UnboundedReceiver<Bytes>,
    /// Bytes received and not yet written (the session's window count).
    pub queued: Arc<AtomicU64>,
    /// Where acknowledgements go.
    pub events: mpsc::Sender<Down>,
}

/// Start the thread of one push job's stdin.
pub fn start(p: PushStdin) -> io::Result<()> {
    std::thread::Builder::new()
        .name("krg-push".into())
        .spawn(move || run(p))
        .map(|_| ())
}

/// Where the chunks go.
enum Sink {
    /// The handed-over destination.
    File(std::fs::File),
    /// The socket: the job copies.
    Socket,
    /// Nowhere any more (failed or gone): chunks are acknowledged only.
    Drop,
}

fn run(mut p: PushStdin) {
    let mut sink = match first_word(&p.sock) {
        Ok((HAND_OVER, Some(fd))) => take_file(fd, p.uid, p.gid, &p.sock),
        Ok((COPY_HERE, None)) => Sink::Socket,
        Ok(_) | Err(_) => {
            tracing::warn!(
                job = p.job,
                "a push job's first word was not one of the protocol's"
            );
            Sink::Drop
        }
    };
    let mut total = 0u64;
    while let Some(chunk) = p.chunks.blocking_recv() {
        p.queued.fetch_sub(chunk.len() as u64, Ordering::SeqCst);
        sink = write_chunk(sink, &chunk, &p.sock);
        total += chunk.len() as u64;
        if p.events
            .blocking_send(Down::StdinAck {
                job: p.job,
                bytes: total,
            })
            .is_err()
        {
            return;
        }
    }
    match sink {
        Sink::File(f) => {
            drop(f);
            tell(&p.sock, 0);
        }
        Sink::Socket => {
            let _ = p.sock.shutdown(std::net::Shutdown::Write);
        }
        Sink::Drop => {}
    }
}

/// Check the handed-over descriptor and take the job's identity for the
/// writes; a refusal is told to the job at once.
fn take_file(fd: OwnedFd, uid: u32, gid: u32, sock: &UnixStream) -> Sink {
    if !direct_writable(&fd) {
        tell(sock, libc::EINVAL);
        return Sink::Drop;
    }
    if let Err(e) = become_owner(uid, gid) {
        tracing::warn!(error = %e, "cannot take a push job's identity");
        tell(sock, e.raw_os_error().unwrap_or(libc::EPERM));
        return Sink::Drop;
    }
    Sink::File(fd.into())
}

/// Write one chunk; a failed write ends the sink (and, for a file, is told
/// to the job, which then exits with it).
fn write_chunk(sink: Sink, chunk: &[u8], sock: &UnixStream) -> Sink {
    match sink {
        Sink::File(mut f) => {
            if job_is_gone(sock) {
                return Sink::Drop;
            }
            match f.write_all(chunk) {
                Ok(()) => Sink::File(f),
                Err(e) => {
                    tell(sock, e.raw_os_error().unwrap_or(libc::EIO));
                    Sink::Drop
                }
            }
        }
        Sink::Socket => match (&*sock).write_all(chunk) {
            Ok(()) => Sink::Socket,
            Err(_) => Sink::Drop,
        },
        Sink::Drop => Sink::Drop,
    }
}

/// The job's first word, and the descriptor that came with it.
fn first_word(sock: &UnixStream) -> io::Result<(u8, Option<OwnedFd>)> {
    let mut word = [0u8; 1];
    let mut space = nix::cmsg_space!(std::os::fd::RawFd);
    let mut iov = [io::IoSliceMut::new(&mut word)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            fds.extend(received);
        }
    }
    let bytes = msg.bytes;
    // SAFETY: SCM_RIGHTS descriptors are new in this process and ours.
    let mut owned: Vec<OwnedFd> = fds
        .into_iter()
        .map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        .collect();
    if bytes != 1 || owned.len() > 1 {
        return Err(io::Error::from_raw_os_error(libc::EPROTO));
    }
    Ok((word[0], owned.pop()))
}

/// Whether the job closed its end (it ended, or was killed).
fn job_is_gone(sock: &UnixStream) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: a non-blocking peek into a local one-byte buffer.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
}

/// Tell the job how its copy ended (best effort: it may be gone).
fn tell(sock: &UnixStream, errno: i32) {
    let bytes = errno.to_le_bytes();
    let _ = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        &[],
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
}

/// This thread's file-system ids become the job's, its supplementary
/// groups go, and its effective capabilities go (CAP_SYS_RESOURCE would
/// pass quotas and root's reserve by; the file-system ones go with the
/// ids; a group of root's could claim the reserve of its `resgid`). All
/// are per thread in Linux (the raw system calls: glibc's `setgroups`
/// would change every thread of krgd), and the thread ends with the job's
/// stdin.
fn become_owner(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: the raw setgroups with an empty list changes only this
    // thread's supplementary groups.
    if unsafe { libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: setfsgid/setfsuid change only this thread's ids; they return
    // the previous id, so success is checked by asking again (-1 = no change).
    unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
        if libc::setfsgid(u32::MAX) as u32 != gid || libc::setfsuid(u32::MAX) as u32 != uid {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
    }
    drop_effective_capabilities()
}

/// `capset` with an empty effective set, the permitted set kept.
fn drop_effective_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget fills the two version-3 data words of this thread.
    if unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for d in &mut data {
        d.effective = 0;
    }
    // SAFETY: capset reads the header and two data words; pid 0 is this thread.
    if unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::fs::PermissionsExt;

    /// A writer thread for `uid`/`gid`; the job's end of its socket, the
    /// chunk sender and the acknowledgements.
    fn writer(
        uid: u32,
        gid: u32,
    ) -> (
        UnixStream,
        mpsc::UnboundedSender<Bytes>,
        mpsc::Receiver<Down>,
    ) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (tx, chunks) = mpsc::unbounded_channel();
        let (events, acks) = mpsc::channel(64);
        start(PushStdin {
            job: 3,
            sock: ours,
            uid,
            gid,
            chunks,
            queued: Arc::new(AtomicU64::new(0)),
            events,
        })
        .unwrap();
        (theirs, tx, acks)
    }

    fn say(sock: &UnixStream, word: u8, fd: Option<std::os::fd::BorrowedFd>) {
        let fds: Vec<i32> = fd.iter().map(|f| f.as_raw_fd()).collect();
        let cmsgs: Vec<nix::sys::socket::ControlMessage> = if fds.is_empty() {
            vec![]
        } else {
            vec![nix::sys::socket::ControlMessage::ScmRights(&fds)]
        };
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&[word])],
            &cmsgs,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
    }

    fn answer(sock: &UnixStream) -> i32 {
        let mut b = [0u8; 4];
        (&*sock).read_exact(&mut b).unwrap();
        i32::from_le_bytes(b)
    }

    fn acks(mut rx: mpsc::Receiver<Down>) -> Vec<u64> {
        let mut v = Vec::new();
        while let Some(Down::StdinAck { job: 3, bytes }) = rx.blocking_recv() {
            v.push(bytes);
        }
        v
    }

    fn me() -> (u32, u32) {
        // SAFETY: plain queries of this process's ids.
        unsafe { (libc::getuid(), libc::getgid()) }
    }

    #[test]
    fn a_handed_over_file_is_written_and_the_job_is_told() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = dir.path().join("dest");
        let file = std::fs::File::create(&path).unwrap();
        let (uid, gid) = me();
        let (job, tx, rx) = writer(uid, gid);
        say(&job, HAND_OVER, Some(file.as_fd()));
        drop(file);
        tx.send(Bytes::from_static(b"hello ")).unwrap();
        tx.send(Bytes::from_static(b"world")).unwrap();
        drop(tx);
        assert_eq!(answer(&job), 0);
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        assert_eq!(acks(rx), vec![6, 11]);
    }

    #[test]
    fn the_job_copies_what_krgd_does_not_write() {
        let (uid, gid) = me();
        let (job, tx, rx) = writer(uid, gid);
        say(&job, COPY_HERE, None);
        tx.send(Bytes::from_static(b"through ")).unwrap();
        tx.send(Bytes::from_static(b"the socket")).unwrap();
        drop(tx);
        let mut got = Vec::new();
        (&job).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"through the socket");
        assert_eq!(acks(rx), vec![8, 18]);
    }

    #[test]
    fn a_descriptor_krgd_must_not_write_is_refused_and_the_input_drained() {
        let (r, w) = crate::service::proc::fdio::pipe_pair().unwrap();
        let (uid, gid) = me();
        let (job, tx, rx) = writer(uid, gid);
        say(&job, HAND_OVER, Some(w.as_fd()));
        assert_eq!(answer(&job), libc::EINVAL);
        tx.send(Bytes::from_static(b"lost")).unwrap();
        drop(tx);
        assert_eq!(acks(rx), vec![4], "the window still moves");
        let mut buf = [0u8; 8];
        // SAFETY: non-blocking read into a local buffer.
        let n = unsafe {
            libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
            libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), 8)
        };
        assert!(n < 0, "nothing went into the pipe");
    }

    #[test]
    fn garbage_instead_of_the_first_word_writes_nothing() {
        let (uid, gid) = me();
        let (job, tx, rx) = writer(uid, gid);
        (&job).write_all(b"XYZ").unwrap();
        tx.send(Bytes::from_static(b"data")).unwrap();
        drop(tx);
        assert_eq!(acks(rx), vec![4]);
    }

    /// The writes are the job owner's, not root's: a setuid bit goes at
    /// the first write as it does when a user writes (root, with
    /// CAP_FSETID, would keep it).
    #[test]
    fn the_writes_are_the_owners_and_not_roots() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = dir.path().join("setuid");
        let file = std::fs::File::create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let status = || std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let ids = |s: String| -> Vec<String> {
            let wanted = ["Groups:", "CapEff:", "Uid:", "Gid:"];
            s.lines()
                .filter(|l| wanted.iter().any(|w| l.starts_with(w)))
                .map(String::from)
                .collect()
        };
        let before = ids(status());
        let (job, tx, rx) = writer(65534, 65534);
        say(&job, HAND_OVER, Some(file.as_fd()));
        tx.send(Bytes::from_static(b"#!/bin/sh\n")).unwrap();
        drop(tx);
        assert_eq!(answer(&job), 0);
        assert_eq!(acks(rx), vec![10]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o7777,
            0o755,
            "the setuid bit went with a user's write"
        );
        assert_eq!(ids(status()), before, "only the writer's thread changed");
    }
}
