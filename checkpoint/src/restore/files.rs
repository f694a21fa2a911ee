//! Every open file description of the tree made once, in the root task
//! before any fork (so that every task inherits it, and those that shared
//! one share it again), at fds from `base` up: files reopened by path at
//! their offset, eventfds, timerfds, signalfds, epolls, sockets.

use std::collections::HashMap;

use crate::error::Result;
use crate::image::{FdImage, FdKind, SocketExtras, SocketImage, StandInEntry, TaskImage};
use crate::ptrace::{self, Injector};

use super::queues::{self, TreeSockets};
use super::sockets;

const O_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
/// Status flags F_SETFL can change.
const SETFL_MASK: u32 =
    (libc::O_APPEND | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME) as u32;

/// Who holds the tree's open file descriptions: its tasks, and its
/// stand-ins (their fds 0-2).
pub struct Holders<'a> {
    pub tasks: &'a [&'a TaskImage],
    pub stand_ins: &'a [StandInEntry],
}

/// Make every open file description at its fd (`base + n`, n in the order
/// first seen), with the job's file-system credentials (already set);
/// those only in flight on a socket too. Returns file number → fd.
pub fn create_files(
    root: &Injector,
    scratch: u64,
    holders: &Holders<'_>,
    base: i32,
    inherit: &[(i32, String)],
    mapped: &HashMap<u64, i32>,
    flight: &TreeSockets<'_>,
) -> Result<HashMap<u32, i32>> {
    let tasks = holders.tasks;
    let mut firsts: Vec<&FdImage> = Vec::new();
    let in_flight = flight.in_flight.iter().flat_map(|m| &m.files);
    let stand_ins = holders.stand_ins.iter().flat_map(|s| &s.stdio);
    for f in tasks
        .iter()
        .flat_map(|t| &t.fds)
        .chain(in_flight)
        .chain(stand_ins)
    {
        if let Some(file) = f.kind.file() {
            if !firsts.iter().any(|g| g.kind.file() == Some(file)) {
                firsts.push(f);
            }
        }
    }
    let want = |file: u32| {
        base + firsts
            .iter()
            .position(|g| g.kind.file() == Some(file))
            .unwrap_or(0) as i32
    };
    let mut out = HashMap::new();
    let mut held = super::held::Maker::new(root, scratch, tasks, inherit, mapped);
    for f in &firsts {
        let Some(file) = f.kind.file() else { continue };
        let fd = match &f.kind {
            FdKind::Socket { .. } => continue,
            FdKind::Path { path, pos, .. } => open_path(root, scratch, f, path, *pos)?,
            k => match super::anon::create(root, scratch, k)? {
                Some(fd) => fd,
                None => match held.create(f)? {
                    Some(fd) => fd,
                    None => continue,
                },
            },
        };
        place(root, fd, want(file), f)?;
        out.insert(file, want(file));
    }
    held.finish()?;
    let socks: Vec<(&FdImage, &SocketImage)> = firsts
        .iter()
        .filter_map(|f| match &f.kind {
            FdKind::Socket { sock, .. } => Some((*f, sock)),
            _ => None,
        })
        .collect();
    if socks.is_empty() {
        let named = flight.in_flight.first().map(|m| m.sock);
        if let Some(sock) = named.or(flight.extras.first().map(|e| e.sock)) {
            return Err(crate::error::ChkptError::Inconsistent(format!(
                "the node file names socket:[{sock}], which is not in the image"
            )));
        }
        return Ok(out);
    }
    let Some(t0) = tasks.first() else {
        return Ok(out);
    };
    sockets::as_user(root, t0)?;
    let made = make_sockets(root, scratch, &socks, &want, &mut out, flight)
        .and_then(|()| set_options(root, scratch, &socks, &out, flight.extras))
        .and_then(|()| connect_waiting(root, scratch, &socks, &out, flight));
    sockets::as_root(root)?;
    made?;
    let mut fd_of = HashMap::new();
    for (f, s) in &socks {
        if let Some(&fd) = f.kind.file().and_then(|file| out.get(&file)) {
            fd_of.insert(s.ino, fd);
            sockets::configure(root.tid, fd as u64, s, flight.extras_of(s.ino))?;
        }
    }
    let all: Vec<&SocketImage> = socks.iter().map(|(_, s)| *s).collect();
    queues::fill_queues(root.tid, &all, &fd_of, &flight.with_files(&out))?;
    queues::shut_unix(root.tid, &all, &fd_of, flight.extras)?;
    Ok(out)
}

/// Create the sockets (the root acting as the job's user), both ends of a
/// pair at once.
fn make_sockets(
    root: &Injector,
    scratch: u64,
    socks: &[(&FdImage, &SocketImage)],
    want: &dyn Fn(u32) -> i32,
    out: &mut HashMap<u32, i32>,
    flight: &TreeSockets<'_>,
) -> Result<()> {
    for (f, s) in socks {
        let Some(file) = f.kind.file() else { continue };
        if out.contains_key(&file) {
            continue; // made as the other end of a pair
        }
        let (fd, other) = sockets::create(root, scratch, s, flight.extras_of(s.ino))?;
        place(root, fd, want(file), f)?;
        out.insert(file, want(file));
        if let Some((peer, ofd)) = other {
            let Some((pf, _)) = socks.iter().find(|(_, p)| p.ino == peer) else {
                continue;
            };
            let Some(pfile) = pf.kind.file() else {
                continue;
            };
            place(root, ofd, want(pfile), pf)?;
            out.insert(pfile, want(pfile));
        }
    }
    Ok(())
}

/// Give the sockets their options beyond a new socket's (the root still
/// acting as the job's user). Every socket the image names must be one of
/// the tree's.
fn set_options(
    root: &Injector,
    scratch: u64,
    socks: &[(&FdImage, &SocketImage)],
    out: &HashMap<u32, i32>,
    extras: &[SocketExtras],
) -> Result<()> {
    for e in extras {
        let found = socks.iter().find(|(_, s)| s.ino == e.sock);
        let Some((f, s)) = found else {
            return Err(crate::error::ChkptError::Inconsistent(format!(
                "the node file names socket:[{}], which is not in the image",
                e.sock
            )));
        };
        if let Some(&fd) = f.kind.file().and_then(|file| out.get(&file)) {
            // the filter first: SO_LOCK_FILTER, among the options, locks it
            if !e.filter.is_empty() {
                super::sockopts::attach_filter(root, scratch, fd, s, &e.filter)?;
            }
            super::sockopts::set(root, scratch, fd, s, &e.options)?;
        }
    }
    Ok(())
}

/// Connect the sockets whose connections waited to be accepted, in their
/// order (the root still acting as the job's user).
fn connect_waiting(
    root: &Injector,
    scratch: u64,
    socks: &[(&FdImage, &SocketImage)],
    out: &HashMap<u32, i32>,
    flight: &TreeSockets<'_>,
) -> Result<()> {
    let waiting: Vec<(&SocketImage, u32, i32)> = socks
        .iter()
        .filter_map(|(f, s)| {
            let order = flight.extras_of(s.ino)?.accept_order?;
            let fd = *out.get(&f.kind.file()?)?;
            Some((*s, order, fd))
        })
        .collect();
    sockets::connect_waiting(root, scratch, &waiting)
}

/// Open a file again by its path, at its offset.
fn open_path(root: &Injector, scratch: u64, f: &FdImage, path: &str, pos: u64) -> Result<u64> {
    let flags = f.flags & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL) as u32 | O_CLOEXEC)
        | libc::O_NOCTTY as u32;
    let mut b = path.as_bytes().to_vec();
    b.push(0);
    ptrace::write_mem(root.tid, scratch, &b)?;
    let fd = root.call(
        "openat",
        libc::SYS_openat,
        [libc::AT_FDCWD as u64, scratch, flags as u64, 0, 0, 0],
    )?;
    if pos != 0 {
        root.call(
            "lseek",
            libc::SYS_lseek,
            [fd, pos, libc::SEEK_SET as u64, 0, 0, 0],
        )?;
    }
    Ok(fd)
}

/// Move `fd` to `want` and give it the recorded status flags (O_NONBLOCK…
/// belong to the open file description).
fn place(root: &Injector, fd: u64, want: i32, f: &FdImage) -> Result<()> {
    move_fd(root, fd, want)?;
    if !matches!(
        f.kind,
        FdKind::Path { .. } | FdKind::Deleted { .. } | FdKind::External { .. }
    ) {
        root.call(
            "fcntl",
            libc::SYS_fcntl,
            [
                want as u64,
                libc::F_SETFL as u64,
                (f.flags & SETFL_MASK) as u64,
                0,
                0,
                0,
            ],
        )?;
    }
    Ok(())
}

/// Move `fd` of the root to `want`.
fn move_fd(root: &Injector, fd: u64, want: i32) -> Result<()> {
    if fd != want as u64 {
        root.call("dup2", libc::SYS_dup2, [fd, want as u64, 0, 0, 0, 0])?;
        root.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    }
    Ok(())
}
