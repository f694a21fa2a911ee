//! What waits to be read on a unix socket, copied without being taken:
//! the messages, the files they carry (SCM_RIGHTS) and, for datagrams,
//! who sent each.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// What waits to be read on a unix socket: the messages (one chunk for a
/// stream) and, per message, the files it carries (SCM_RIGHTS), as
/// descriptors of our own.
pub struct Queue {
    pub messages: Vec<Vec<u8>>,
    pub rights: Vec<(u32, Vec<OwnedFd>)>,
    /// A datagram socket's: who sent each message (its address; empty
    /// when unnamed).
    pub senders: Vec<Vec<u8>>,
}

/// Copy what waits to be read on a unix socket, without taking it: one
/// peek for a stream, message by message (SO_PEEK_OFF) otherwise. A peek
/// duplicates the files a message carries into this process: they are
/// kept for the image (datagram and seqpacket sockets; a stream's are
/// refused).
pub fn peek(s: RawFd, stype: i32, queued: u32) -> std::result::Result<Queue, String> {
    let mut q = Queue {
        messages: Vec::new(),
        rights: Vec::new(),
        senders: Vec::new(),
    };
    if queued == 0 {
        return Ok(q);
    }
    let stream = stype == libc::SOCK_STREAM;
    if !stream {
        setopt(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0);
    }
    let r = (|| loop {
        let mut buf = vec![0u8; if stream { queued as usize } else { 1 << 20 }];
        let mut cmsg = [0u64; 64];
        // SAFETY: sockaddr_un is plain data.
        let mut from: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; every pointer covers its length.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg);
        msg.msg_name = (&mut from as *mut libc::sockaddr_un).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
        // SAFETY: msg describes our buffers.
        let n = unsafe { libc::recvmsg(s, &mut msg, flags) };
        if n < 0 {
            return Ok(());
        }
        let files = take_rights(&msg);
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err("a message queued on it carries more files than can be saved".to_string());
        }
        if !files.is_empty() {
            if stream {
                return Err(
                    "a file descriptor is in flight on this stream socket (SCM_RIGHTS): only datagram and seqpacket ones are saved"
                        .to_string(),
                );
            }
            q.rights.push((q.messages.len() as u32, files));
        }
        buf.truncate(n as usize);
        q.messages.push(buf);
        if !stream {
            q.senders.push(address(&from, msg.msg_namelen));
        }
        if stream || n == 0 {
            return Ok(());
        }
    })();
    if !stream {
        setopt(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, -1);
    }
    r.map(|()| q)
}

/// The files a peeked message brought (now descriptors of ours), in the
/// order they were sent.
fn take_rights(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut out = Vec::new();
    // SAFETY: walking the control buffer the kernel filled, with its
    // macros; each SCM_RIGHTS descriptor is new and ours alone.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                let fds = libc::CMSG_DATA(c) as *const i32;
                for i in 0..n {
                    out.push(OwnedFd::from_raw_fd(fds.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    out
}

/// The bytes of a sender's address as the kernel gave it (empty for an
/// unnamed sender: the family alone).
fn address(from: &libc::sockaddr_un, len: libc::socklen_t) -> Vec<u8> {
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_un>());
    if len <= 2 {
        return Vec::new();
    }
    // SAFETY: `from` is a sockaddr_un of which the kernel wrote `len` bytes.
    unsafe { std::slice::from_raw_parts((from as *const libc::sockaddr_un).cast::<u8>(), len) }
        .to_vec()
}

/// Set an integer socket option; whether it took.
pub(super) fn setopt(fd: RawFd, level: i32, opt: i32, v: i32) -> bool {
    // SAFETY: an int option.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        ) == 0
    }
}
