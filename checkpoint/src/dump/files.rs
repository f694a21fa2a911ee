//! The fd tables of the tree: regular files (numbered by open file
//! description, so shared offsets come back shared), pipes (inside the tree,
//! or stdio leading out of it) and what is refused.

use std::collections::HashMap;

use crate::error::{ChkptError, Result};
use crate::image::{FdImage, FdKind, HeldLock, InFlight, PipeImage, SocketExtras};
use crate::procfs;

use super::fdkind::{classify_fd, pipe_data, PipeRef};

/// A socket fd seen while listing fds: (pid, fd, inode, flags).
struct SocketFd {
    pid: i32,
    fd: i32,
    ino: u64,
    flags: u32,
}

/// List the fd table; pipes and sockets are returned aside and classified
/// by the caller (a pipe whose two ends are inside the tree is restored,
/// one that leads outside is stdio or refused). krg's own trackers are
/// left out. `stand_in`: only fds 0-2 of a stand-in (see
/// [`super::standins`]), which must be no socket.
fn fds(
    pid: i32,
    frozen: bool,
    locks: &mut Vec<HeldLock>,
    stdio: &[(u64, u64)],
    stand_in: bool,
) -> Result<(Vec<FdImage>, Vec<PipeRef>, Vec<SocketFd>)> {
    let trackers: Vec<i32> = super::track::ours(pid).iter().map(|t| t.0).collect();
    let dir = format!("/proc/{pid}/fd");
    let rd = std::fs::read_dir(&dir).map_err(|e| ChkptError::io(&dir, e))?;
    let mut nums: Vec<i32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    nums.sort_unstable();
    let mut out = Vec::new();
    let mut pipes = Vec::new();
    let mut socks = Vec::new();
    // a POSIX lock shows on every fd of the file: keep it once
    let mut posix_seen = Vec::new();
    let wanted = |fd: &i32| !trackers.contains(fd) && (!stand_in || *fd <= 2);
    for fd in nums.into_iter().filter(wanted) {
        let target = procfs::readlink(format!("/proc/{pid}/fd/{fd}"))?;
        let info = procfs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))?;
        let (pos, flags) = procfs::parse_fdinfo(&info)?;
        if fd <= 2 && is_stdio_file(pid, fd, stdio) {
            out.push(FdImage {
                fd,
                flags,
                kind: FdKind::InheritedStdio { what: target },
            });
            continue;
        }
        if let Some(ino) = target
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
        {
            if stand_in {
                return Err(super::standins::refused(pid, fd, &target));
            }
            socks.push(SocketFd {
                pid,
                fd,
                ino,
                flags,
            });
            continue;
        }
        let kind = match super::anon::classify(pid, fd, &target, &info)? {
            Some(k) => Some(k),
            None if super::pty::is_master(&target) => Some(super::pty::master(pid, fd, frozen)?),
            None => match super::held::classify(pid, fd, &target, &info, pos, frozen)? {
                Some(k) => Some(k),
                None => classify_fd(pid, fd, &target, pos)?,
            },
        };
        if let Some(ino) = target
            .strip_prefix("pipe:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
        {
            let write_end = flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
            pipes.push(PipeRef {
                pid,
                fd,
                ino,
                write_end,
            });
        }
        if let Some(kind) = kind {
            locks.extend(super::held::locks(pid, fd, &info, &mut posix_seen)?);
            out.push(FdImage { fd, flags, kind });
        }
    }
    Ok((out, pipes, socks))
}

/// Is fd `fd` of `pid` one of the regular files (device, inode) the
/// caller says stand for stdio leading out of the tree?
fn is_stdio_file(pid: i32, fd: i32, stdio: &[(u64, u64)]) -> bool {
    use std::os::unix::fs::MetadataExt;
    !stdio.is_empty()
        && std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
            .is_ok_and(|m| m.is_file() && stdio.contains(&(m.dev(), m.ino())))
}

/// Split pipe fds into stdio that leads outside the tree (inherited at
/// restart) and pipes with both ends inside the tree (recreated).
fn classify_pipes(
    all: &[PipeRef],
    fds: &mut HashMap<i32, Vec<FdImage>>,
    flags: &HashMap<(i32, i32), u32>,
) -> Result<Vec<u64>> {
    let mut internal = Vec::new();
    for p in all {
        let has_r = all.iter().any(|q| q.ino == p.ino && !q.write_end);
        let has_w = all.iter().any(|q| q.ino == p.ino && q.write_end);
        let kind = if has_r && has_w {
            if !internal.contains(&p.ino) {
                internal.push(p.ino);
            }
            FdKind::Pipe {
                ino: p.ino,
                write_end: p.write_end,
            }
        } else if p.fd <= 2 {
            FdKind::InheritedStdio {
                what: format!("pipe:[{}]", p.ino),
            }
        } else {
            // restart gives it its own stdin/stdout (or what --inherit-fd names)
            FdKind::External {
                file: 0,
                what: format!("pipe:[{}]", p.ino),
            }
        };
        let flags = flags.get(&(p.pid, p.fd)).copied().unwrap_or(0);
        let v = fds.entry(p.pid).or_default();
        v.push(FdImage {
            fd: p.fd,
            flags,
            kind,
        });
        v.sort_by_key(|f| f.fd);
    }
    Ok(internal)
}

/// Same open file description? (kcmp KCMP_FILE; CONFIG_CHECKPOINT_RESTORE)
fn same_file(a: (i32, i32), b: (i32, i32)) -> bool {
    // SAFETY: kcmp only compares kernel objects.
    unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            a.0,
            b.0,
            0, /* KCMP_FILE */
            a.1 as u64,
            b.1 as u64,
        ) == 0
    }
}

/// What two fds must have in common to be worth a kcmp: the path of a
/// file, the kind of anything else.
fn share_key(k: &FdKind) -> Option<String> {
    match k {
        FdKind::Path { path, .. } => Some(path.clone()),
        k => k.file().map(|_| format!("{:?}", std::mem::discriminant(k))),
    }
}

/// Number the open file descriptions of the tree: fds that share one (dup,
/// inheritance over fork) get the same number, so restart makes it once
/// and every fd shares it (its offset, its counter, its registrations)
/// again.
fn share_files(tree: &[(i32, i32)], fds: &mut HashMap<i32, Vec<FdImage>>) {
    let mut reps: Vec<(i32, i32, String)> = Vec::new();
    for &(pid, _) in tree {
        let Some(list) = fds.get_mut(&pid) else {
            continue;
        };
        for f in list.iter_mut() {
            let Some(key) = share_key(&f.kind) else {
                continue;
            };
            let found = reps
                .iter()
                .position(|(p, n, k)| *k == key && same_file((*p, *n), (pid, f.fd)));
            let n = match found {
                Some(i) => i as u32,
                None => {
                    reps.push((pid, f.fd, key));
                    (reps.len() - 1) as u32
                }
            };
            f.kind.set_file(n);
        }
    }
}

/// The fd tables of a frozen tree and the pipes it holds inside.
pub struct TreeFiles {
    /// Per task, its fds (pipes classified, files numbered).
    pub fds: HashMap<i32, Vec<FdImage>>,
    /// Pipes with both ends in the tree, with their buffered bytes.
    pub pipes: Vec<PipeImage>,
    /// Established TCP sockets, left in repair mode (see [`Frozen`]).
    ///
    /// [`Frozen`]: super::freeze::Frozen
    pub repaired: Vec<super::sockets::Repairing>,
    /// Per task, the file locks it holds.
    pub locks: HashMap<i32, Vec<HeldLock>>,
    /// Files in flight on the tree's unix sockets.
    pub in_flight: Vec<InFlight>,
    /// What the sockets have beyond their images.
    pub socket_extras: Vec<SocketExtras>,
}

/// Read every fd table, classify pipes and sockets with the whole tree in
/// view, number shared open file descriptions, copy what pipes hold.
/// `take`: whether the tree is stopped and established TCP connections are
/// taken (otherwise this only looks for what would be refused). `stdio`:
/// regular files (device, inode) that, on fds 0-2, are stdio leading out
/// of the tree (see [`super::DumpOptions::stdio_files`]). `stand_ins`:
/// the tree's stand-ins, whose fds 0-2 are listed too (under their PIDs),
/// so that a pipe between one and a task is a pipe of the tree and a file
/// they share is one file.
pub fn collect(
    tree: &[(i32, i32)],
    caller: u32,
    take: super::sockets::Take,
    stdio: &[(u64, u64)],
    stand_ins: &[i32],
) -> Result<TreeFiles> {
    let frozen = take != super::sockets::Take::Check;
    let mut fds: HashMap<i32, Vec<FdImage>> = HashMap::new();
    let mut pipes = Vec::new();
    let mut flags = HashMap::new();
    let mut socks = Vec::new();
    let mut locks = HashMap::new();
    for &(p, _) in tree {
        let mut held = Vec::new();
        let (f, pr, sk) = self::fds(p, frozen, &mut held, stdio, false)?;
        locks.insert(p, held);
        for s in sk {
            socks.push(super::sockets::SockRef {
                pid: s.pid,
                fd: s.fd,
                flags: s.flags,
                sock: super::sockets::read(s.pid, s.fd, s.ino, caller, take)?,
            });
        }
        for r in &pr {
            let (_, fl) = procfs::parse_fdinfo(&procfs::read_to_string(format!(
                "/proc/{p}/fdinfo/{}",
                r.fd
            ))?)?;
            flags.insert((p, r.fd), fl);
        }
        fds.insert(p, f);
        pipes.extend(pr);
    }
    // after the tasks': a pipe's data is read through a task's end first
    for &p in stand_ins {
        let (f, pr, _) = self::fds(p, frozen, &mut Vec::new(), stdio, true)?;
        for r in &pr {
            let info = procfs::read_to_string(format!("/proc/{p}/fdinfo/{}", r.fd))?;
            flags.insert((p, r.fd), procfs::parse_fdinfo(&info)?.1);
        }
        fds.insert(p, f);
        pipes.extend(pr);
    }
    super::accept::pair_waiting(&mut socks)?;
    super::sockets::check_senders(&socks)?;
    let socket_extras = extras_of(&socks);
    // files in flight: held by this process as if it were a task
    let flight = super::inflight::gather(&mut socks);
    let me = super::inflight::holder();
    if !flight.is_empty() {
        let (files, flight_pipes) = flight.describe(&socks)?;
        for (r, fl) in flight_pipes {
            flags.insert((me, r.fd), fl);
            pipes.push(r);
        }
        fds.insert(me, files);
    }
    let internal = classify_pipes(&pipes, &mut fds, &flags)?;
    let (sock_fds, repaired) = super::sockets::classify(socks)?;
    for (p, f) in sock_fds {
        let v = fds.entry(p).or_default();
        v.push(f);
        v.sort_by_key(|f| f.fd);
    }
    super::pty::pair_slaves(&mut fds);
    check_pidfds(tree, &fds)?;
    let mut holders = tree.to_vec();
    holders.extend(stand_ins.iter().map(|&p| (p, 0)));
    holders.push((me, 0));
    share_files(&holders, &mut fds);
    super::held::dedupe(tree, &mut fds);
    let mut images = Vec::new();
    for ino in internal {
        // classify_pipes only returns inodes it found in `pipes`
        if let Some(r) = pipes.iter().find(|p| p.ino == ino) {
            images.push(PipeImage {
                ino,
                data: pipe_data(r.pid, r.fd)?,
            });
        }
    }
    // after the pipes' data was copied (through the holder's fds too)
    let in_flight = flight.finish(fds.remove(&me).unwrap_or_default())?;
    Ok(TreeFiles {
        fds,
        pipes: images,
        repaired,
        locks,
        in_flight,
        socket_extras,
    })
}

/// A pidfd is made again only for a process of the tree or a thread of
/// the process that holds it (whose threads exist when its fds are made).
fn check_pidfds(tree: &[(i32, i32)], fds: &HashMap<i32, Vec<FdImage>>) -> Result<()> {
    for (&holder, list) in fds {
        for f in list {
            let FdKind::Pidfd { pid: target } = f.kind else {
                continue;
            };
            let ok = tree.iter().any(|t| t.0 == target)
                || std::path::Path::new(&format!("/proc/{holder}/task/{target}")).exists();
            if !ok {
                return Err(ChkptError::unsupported(
                    holder,
                    format!("fd {} (pidfd of {target})", f.fd),
                    "a pidfd of a process outside the tree, or of another process's thread",
                ));
            }
        }
    }
    Ok(())
}

/// What the sockets have beyond their images, once per socket; none for a
/// socket with nothing more.
fn extras_of(socks: &[super::sockets::SockRef]) -> Vec<SocketExtras> {
    let mut out: Vec<SocketExtras> = Vec::new();
    for s in socks {
        let e = &s.sock.extras;
        let plain = SocketExtras {
            sock: e.sock,
            ..SocketExtras::default()
        };
        if *e != plain && !out.iter().any(|o| o.sock == e.sock) {
            out.push(e.clone());
        }
    }
    out
}
