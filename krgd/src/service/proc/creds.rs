//! Whose a job is: the caller's credentials as the kernel reports them
//! (SO_PEERCRED and SO_PEERGROUPS on the admin socket, /proc for a FUSE
//! request), and the target's checks against its user database and its
//! `[run] allow_root` policy.

use std::os::fd::AsRawFd;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::proc::Credentials;
use krg_proto::NodeId;

/// Supplementary groups of the process at the other end of a Unix socket,
/// as the kernel recorded them when it connected.
pub fn peer_groups(sock: &impl AsRawFd) -> std::io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<u32>()) as libc::socklen_t;
        // SAFETY: `groups` has room for `len` bytes; the kernel writes at
        // most that and reports how much it needs in `len`.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<u32>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65536 {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}

/// Who asked on the admin socket (as the kernel reported it), as a
/// request to this node's services or another node's names them: uid and
/// gid (what signals, migrations and checkpoints compare; the groups do
/// not count there).
pub fn of_caller(caller: &crate::caller::Caller) -> Credentials {
    Credentials::of(caller.uid, caller.gid)
}

/// Credentials of the process `pid` that made a FUSE request: uid and gid
/// come from the request (the kernel's), supplementary groups from
/// /proc/PID/status (the kernel passes none with a request).
pub fn request_credentials(uid: u32, gid: u32, pid: u32) -> Credentials {
    let groups = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default();
    Credentials { uid, gid, groups }
}

/// Who may start a job on this node.
#[derive(Debug, Clone, Copy)]
pub struct RunPolicy {
    /// `[run] allow_root`: run root's jobs (from this node or a member).
    pub allow_root: bool,
}

/// Where a request comes from, for the root rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This node's admin socket or /krg tree.
    Local,
    /// Another krgd that is a member of this node's cluster.
    Member(NodeId),
    /// Holder of the cluster key that is not a member (a tool, or a krgd
    /// outside the cluster).
    Outsider(NodeId),
}

/// Refuse credentials this node must not run a job with: a uid its user
/// database does not know, root unless allowed (and only from here or a
/// member), too many groups.
pub fn check(
    creds: &Credentials,
    policy: RunPolicy,
    origin: Origin,
    me: NodeId,
) -> Result<(), AdminError> {
    if creds.groups.len() > 65536 {
        return Err(AdminError::new(
            ErrorKind::InvalidArgument,
            format!(
                "{} supplementary groups is more than Linux allows",
                creds.groups.len()
            ),
        ));
    }
    if creds.uid == 0 {
        if !policy.allow_root {
            return Err(AdminError::new(
                ErrorKind::PermissionDenied,
                format!("node {me} does not run jobs as root ([run] allow_root = false in its krgd.toml)"),
            ));
        }
        if let Origin::Outsider(n) = origin {
            return Err(AdminError::new(
                ErrorKind::PermissionDenied,
                format!("node {me} runs root's jobs only for members of its cluster; node {n} is not one"),
            ));
        }
    }
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(creds.uid)) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(AdminError::new(
            ErrorKind::PermissionDenied,
            format!(
                "uid {} is not a user on node {me} (no entry in its user database)",
                creds.uid
            ),
        )),
        Err(e) => Err(AdminError::new(
            ErrorKind::Internal,
            format!("node {me} cannot read its user database: {e}"),
        )),
    }
}

/// The user name of `uid` on this node, or the number.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(uid: u32) -> Credentials {
        Credentials {
            uid,
            gid: uid,
            groups: vec![],
        }
    }

    #[test]
    fn unknown_users_and_root_are_refused_by_policy() {
        let allow = RunPolicy { allow_root: true };
        let deny = RunPolicy { allow_root: false };
        check(&creds(0), allow, Origin::Local, 1).unwrap();
        check(&creds(0), allow, Origin::Member(2), 1).unwrap();
        let e = check(&creds(0), allow, Origin::Outsider(9), 1).unwrap_err();
        assert!(e.message.contains("node 9 is not one"), "{e}");
        let e = check(&creds(0), deny, Origin::Local, 1).unwrap_err();
        assert!(e.message.contains("allow_root = false"), "{e}");
        check(&creds(65534), deny, Origin::Outsider(9), 1).unwrap();
        let e = check(&creds(3_999_999), allow, Origin::Local, 1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PermissionDenied);
        assert!(
            e.message.contains("uid 3999999 is not a user on node 1"),
            "{e}"
        );
    }

    #[test]
    fn peer_groups_are_the_callers() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mine = nix::unistd::getgroups().unwrap();
        let got = peer_groups(&a).unwrap();
        assert_eq!(got.len(), mine.len(), "{got:?} vs {mine:?}");
    }
}
