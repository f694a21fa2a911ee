//! Connections that wait in a listening unix socket's accept queue when
//! the tree is checkpointed. The kernel made a socket for each (an
//! "embryo" no process holds yet, without an inode), connected to the
//! client; sock_diag lists the listener's queue by those clients' inodes.
//! When the
//! client is a socket of the tree, the connection is saved as the client
//! alone, with its place in the queue: restart connects it again, in that
//! order, once the listener listens (a new embryo, which `accept` takes as
//! before). A connection from outside the tree, or one whose client's data
//! waits in the embryo (it cannot be read without accepting it), is
//! refused.

use super::sockets::SockRef;
use crate::error::{ChkptError, Result};

/// Match each listener's waiting connections with clients of the tree;
/// those clients get their place (their peer, the embryo, has no inode).
pub fn pair_waiting(socks: &mut [SockRef]) -> Result<()> {
    let queues: Vec<(i32, i32, u64, Vec<u64>)> = socks
        .iter()
        .filter(|s| !s.sock.waiting.is_empty())
        .map(|s| (s.pid, s.fd, s.sock.image.ino, s.sock.waiting.clone()))
        .collect();
    for (pid, fd, ino, waiting) in queues {
        for (place, client_ino) in waiting.iter().enumerate() {
            let client = socks.iter_mut().find(|c| c.sock.image.ino == *client_ino);
            let Some(c) = client else {
                return Err(ChkptError::unsupported(
                    pid,
                    format!("fd {fd} (socket:[{ino}])"),
                    format!(
                        "{} connection(s) wait to be accepted on it, at least one from outside the tree",
                        waiting.len()
                    ),
                ));
            };
            if c.sock.unsent > 0 {
                return Err(ChkptError::unsupported(
                    c.pid,
                    format!("fd {} (socket:[{}])", c.fd, c.sock.image.ino),
                    format!(
                        "{} byte(s) it sent wait in a connection not accepted yet",
                        c.sock.unsent
                    ),
                ));
            }
            c.sock.image.peer = None;
            c.sock.extras.accept_order = Some(place as u32);
        }
    }
    Ok(())
}
