//! Restoring into the PID namespace of a `krg run` job (`restart
//! --pidns-of INIT --ns-pid HOST:INNER …`): a job that migrates keeps the
//! PIDs it sees, in a new namespace on the target whose init krgd started.
//!
//! The image records the PIDs of krgd's namespace at dump time; the map
//! gives each its number in the job's namespace ([`translate`]). Then a
//! child of restart enters the job's namespace (setns on restart, then
//! fork) and the job's mount namespace, where the init mounted a `/proc`
//! of the job's namespace ([`crate::ownproc`]), and runs the usual
//! restore there ([`inside`]): every PID it forks with, ptraces and reads
//! in `/proc` is the job's own, and the restored tasks stay in the job's
//! mount namespace, seeing its `/proc` as they did before they moved. An
//! init without a mount namespace of its own (an older krg-init) gets the
//! old way: the restorer takes a namespace of its own with such a `/proc`,
//! and the restored root enters restart's mount namespace again before
//! anything else. When the restorer exits, the root is re-parented to the
//! job's init.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{ChkptError, Result};

use super::load::Loaded;
use super::tree::Restored;

/// Where to restore: the namespace of process `init` (its PID 1), and the
/// number there of every PID the image records.
#[derive(Debug, Clone)]
pub struct PidNsTarget {
    /// PID (in restart's namespace) of the namespace's init.
    pub init: i32,
    /// (PID at dump time, PID in the job's namespace).
    pub map: Vec<(i32, i32)>,
}

/// Give every PID of the image its number in the job's namespace. Every
/// task and thread must be in the map; a parent, group or session outside
/// the tree that is not in it becomes 0 (outside: nothing to join).
pub fn translate(l: &mut Loaded, map: &[(i32, i32)]) -> Result<()> {
    let m: HashMap<i32, i32> = map.iter().copied().collect();
    let must = |p: i32| {
        m.get(&p).copied().ok_or_else(|| {
            ChkptError::Usage(format!(
                "PID {p} of the image has no number in the job's namespace (--ns-pid)"
            ))
        })
    };
    let may = |p: i32| m.get(&p).copied().unwrap_or(0);
    for t in l.tasks.iter_mut().map(|t| &mut t.task) {
        t.pid = must(t.pid)?;
        for th in &mut t.threads {
            th.tid = must(th.tid)?;
        }
        for th in &mut t.attrs.threads {
            th.tid = must(th.tid)?;
        }
        for f in &mut t.attrs.fds {
            f.owner_id = may(f.owner_id.abs()) * f.owner_id.signum();
        }
        t.ppid = may(t.ppid);
        t.pgid = may(t.pgid);
        t.sid = may(t.sid);
    }
    l.ctty_fg = l.ctty_fg.map(may);
    for z in &mut l.zombies {
        z.pid = must(z.pid)?;
        z.ppid = may(z.ppid);
        for th in &mut z.threads {
            *th = may(*th);
        }
        if let Some(zz) = &mut z.zombie {
            zz.pgid = may(zz.pgid);
            zz.sid = may(zz.sid);
        }
    }
    Ok(())
}

fn sys(op: &str, pid: i32) -> ChkptError {
    ChkptError::sys(op, pid)
}

fn errno(op: &str, pid: i32, e: nix::errno::Errno) -> ChkptError {
    ChkptError::Sys {
        op: op.into(),
        pid,
        err: e.into(),
    }
}

/// Run `restore` in a child of restart that lives in `init`'s PID
/// namespace with a `/proc` of it; the PIDs it restored (the job's own
/// numbers) and, with `--lazy`, its page server's PID in restart's
/// namespace (the server is a child of the restorer, so a process of the
/// job's namespace, re-parented to its init when the restorer exits).
/// `wanted` are the PIDs the tree needs: the child's own PID in the
/// namespace must not be one of them. `restore` is given an fd on the
/// mount namespace the root is to be in (the job's).
pub fn inside(
    init: i32,
    wanted: &[i32],
    restore: impl FnOnce(i32) -> Result<Restored>,
) -> Result<Restored> {
    let path = format!("/proc/{init}/ns/pid");
    let ns = std::fs::File::open(&path).map_err(|e| ChkptError::io(&path, e))?;
    let ours = std::fs::metadata("/proc/self/ns/pid").map_err(|e| ChkptError::io(&path, e))?;
    let theirs = ns.metadata().map_err(|e| ChkptError::io(&path, e))?;
    if std::os::unix::fs::MetadataExt::ino(&ours) == std::os::unix::fs::MetadataExt::ino(&theirs) {
        return Err(ChkptError::Usage(format!(
            "process {init} is in restart's own PID namespace: --pidns-of names the init of a job"
        )));
    }
    // SAFETY: setns on an fd we opened; it changes only the namespace of
    // restart's future children.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
        return Err(sys("setns(CLONE_NEWPID)", init));
    }
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(sys("pipe2", 0));
    }
    // SAFETY: pipe2 returned two descriptors nobody else owns.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (server_rx, server_tx) = server_pid_channel()?;
    // SAFETY: restart has a single thread here (load's helper threads are
    // joined), so the child may go on in Rust; it leaves with _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(sys("fork into the job's namespace", init));
    }
    let marked = crate::timings::count();
    if child == 0 {
        drop((rd, server_rx));
        let text = match in_child(init, wanted, restore) {
            Ok(r) => match r.server.map(|pid| send_server_pid(&server_tx, pid)) {
                Some(Err(e)) => format!("err {e}"),
                _ => {
                    let list: Vec<String> = r.pids.iter().map(i32::to_string).collect();
                    // the phases the restorer marked, for restart's --timings
                    let mut phases = crate::timings::take();
                    phases.drain(..marked.min(phases.len()));
                    format!("ok {} {}", list.join(" "), crate::timings::line(&phases))
                }
            },
            Err(e) => format!("err {e}"),
        };
        // one line: the page server, forked by the restorer, holds this
        // pipe too, so its end is no end of the answer
        let line = format!("{}\n", text.replace('\n', " "));
        let mut w = std::fs::File::from(wr);
        let _ = w.write_all(line.as_bytes());
        drop(w);
        // SAFETY: leave without running destructors that belong to the parent.
        unsafe { libc::_exit(0) }
    }
    drop((wr, server_tx));
    let mut text = String::new();
    let _ = std::io::BufReader::new(std::fs::File::from(rd)).read_line(&mut text);
    let text = text.trim_end();
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    if let Some(ok) = text.strip_prefix("ok") {
        // "ok PIDS timings: …" (parse takes what follows "timings:")
        let list = ok.split("timings:").next().unwrap_or(ok);
        crate::timings::append(crate::timings::parse(ok));
        return Ok(Restored {
            pids: list
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect(),
            server: recv_server_pid(&server_rx),
        });
    }
    match text.strip_prefix("err ") {
        Some(msg) => Err(ChkptError::Usage(msg.to_string())),
        None => Err(ChkptError::Usage(format!(
            "the restorer in the job's namespace ended without an answer (wait status {status:#x})"
        ))),
    }
}

/// A datagram pair on which the restorer tells restart its page server's
/// PID as credentials (`SCM_CREDENTIALS`): the kernel gives the receiver
/// the PID in its own namespace, which the restorer, inside the job's,
/// cannot know.
fn server_pid_channel() -> Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{setsockopt, socketpair, sockopt, AddressFamily, SockFlag, SockType};
    let (rx, tx) = socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| errno("socketpair (page server PID)", 0, e))?;
    setsockopt(&rx, sockopt::PassCred, &true).map_err(|e| errno("SO_PASSCRED", 0, e))?;
    Ok((rx, tx))
}

/// Send `server` (a PID of the job's namespace) as credentials; root in
/// the namespace may name another process than itself.
fn send_server_pid(tx: &OwnedFd, server: i32) -> Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixCredentials};
    let creds = UnixCredentials::from(libc::ucred {
        pid: server,
        // SAFETY: getuid and getgid have no preconditions.
        uid: unsafe { libc::getuid() },
        // SAFETY: as above.
        gid: unsafe { libc::getgid() },
    });
    let iov = [std::io::IoSlice::new(b"s")];
    sendmsg::<()>(
        tx.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmCredentials(&creds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| errno("sendmsg (page server PID)", server, e))?;
    Ok(())
}

/// The page server's PID in restart's namespace, if the restorer sent one.
fn recv_server_pid(rx: &OwnedFd) -> Option<i32> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(libc::ucred);
    let msg = recvmsg::<()>(
        rx.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    msg.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::ScmCredentials(c) => Some(c.pid()),
        _ => None,
    })
}

/// The child: into the job's mount namespace (or one of its own with a
/// `/proc` of the job's PID namespace), then the restore.
fn in_child(
    init: i32,
    wanted: &[i32],
    restore: impl FnOnce(i32) -> Result<Restored>,
) -> Result<Restored> {
    // SAFETY: prctl and getpid take no pointers.
    let me = unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        libc::getpid()
    };
    if wanted.contains(&me) {
        return Err(ChkptError::PidTaken(me));
    }
    let ours = ns_file("/proc/self/ns/mnt")?;
    let jobs = ns_file(&format!("/proc/{init}/ns/mnt"))?;
    if ns_ino(&jobs)? == ns_ino(&ours)? {
        own_proc(me)?;
        return restore(ours.as_raw_fd());
    }
    // SAFETY: setns on an fd we opened, in a single-threaded child.
    if unsafe { libc::setns(jobs.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        return Err(sys("setns into the job's mount namespace", init));
    }
    restore(jobs.as_raw_fd())
}

fn ns_file(path: &str) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| ChkptError::io(path, e))
}

fn ns_ino(f: &std::fs::File) -> Result<u64> {
    let md = f
        .metadata()
        .map_err(|e| ChkptError::io("a namespace file", e))?;
    Ok(std::os::unix::fs::MetadataExt::ino(&md))
}

/// A mount namespace with a `/proc` of the PID namespace this process is
/// in (for an init that has no mount namespace of its own).
fn own_proc(me: i32) -> Result<()> {
    crate::ownproc::enter().map_err(|(op, e)| ChkptError::Sys {
        op: op.into(),
        pid: me,
        err: e,
    })
}
