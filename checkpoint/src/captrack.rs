//! CHECKPOINTABLE tracking: which processes may be checkpointed.
//!
//! A process gets the capability with `krgcapset -d +CHECKPOINTABLE`; every
//! process it forks afterwards inherits it, even after the shell that set it
//! exits. The tracker follows forks and exits through the kernel's proc
//! connector (netlink NETLINK_CONNECTOR, CN_IDX_PROC), on a thread of its own.
//! Because events arrive a moment after the fact, a query for a process not
//! yet seen also accepts it when an ancestor holds the flag and the process
//! started after the flag was set on that ancestor.
//!
//! The tracker subscribes to the connector only when it is given its first
//! flag: until then no event is built or filtered for it. Its socket then
//! carries an in-kernel filter ([`crate::connfilter`]) that lets through
//! only forks of tracked processes and their exits, and (Linux ≥ 6.6)
//! subscribes to fork and exit events only. Without the filter (no eBPF),
//! it sees every event as before. It stays subscribed until it is shut
//! down. [`CapTracker::events_received`] counts what reached it.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::connfilter::ConnFilter;
use crate::error::{ChkptError, Result};
use crate::procfs;

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_CN_MCAST_IGNORE: u32 = 2;
const PROC_EVENT_FORK: u32 = 0x1;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
/// Linux ≥ 6.6 takes `struct proc_input` (op + event types) at subscription.
const PROC_INPUT_SINCE: (u32, u32) = (6, 6);
const NLMSG_HDR: usize = 16;
const CN_MSG: usize = 20;
/// what, cpu, timestamp_ns precede the event data in `struct proc_event`.
const EV_DATA: usize = NLMSG_HDR + CN_MSG + 16;

/// Flagged processes: tgid → CLOCK_MONOTONIC ns at which the flag was set
/// (or the fork that inherited it happened).
type Flags = Arc<Mutex<HashMap<i32, u64>>>;

/// Called for every datagram the tracker receives (a metrics counter).
pub type EventHook = Box<dyn Fn() + Send>;

pub struct CapTracker {
    flags: Flags,
    /// The socket's filter: None when it could not be loaded (no eBPF).
    filter: Option<Arc<ConnFilter>>,
    events: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Written by `shutdown` to wake the thread, which otherwise sleeps
    /// until an event arrives (no periodic wake-ups).
    wake: Arc<OwnedFd>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The connector socket, subscribed from the first flag on.
    sock: Arc<OwnedFd>,
    /// Subscribed yet? Changed under the `flags` lock.
    listening: AtomicBool,
}

/// Now, in ns of CLOCK_MONOTONIC: the clock of the proc connector's event
/// timestamps (ktime_get_ns).
fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_BOOTTIME - CLOCK_MONOTONIC (time spent suspended): /proc/PID/stat
/// start times are on the boot-time clock.
fn suspended_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME).saturating_sub(now_ns())
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Length of a clock tick (the resolution of /proc/PID/stat's start time), ns.
fn tick_ns() -> u64 {
    // SAFETY: sysconf has no preconditions.
    1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

fn start_and_ppid(pid: i32) -> Option<(u64, i32)> {
    let s = procfs::parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).ok()?;
    Some((s.field(22), s.ppid()))
}

/// Open the connector socket, let `filter` attach its filter before any
/// event can be queued (bind joins the multicast group), then subscribe.
/// A proc connector socket with its filter, bound but not yet subscribed:
/// no event reaches it, and none is even built for it, until [`subscribe`].
fn open_connector<T>(filter: impl FnOnce(&Arc<OwnedFd>) -> T) -> Result<(Arc<OwnedFd>, T)> {
    let fd = Arc::new(connector_socket()?);
    // SAFETY: bind/setsockopt with valid, correctly sized arguments.
    unsafe {
        let filtered = filter(&fd);
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        if libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of_val(&sa) as u32,
        ) < 0
        {
            return Err(ChkptError::sys("bind(NETLINK_CONNECTOR)", 0));
        }
        let big: libc::c_int = 4 << 20;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &big as *const _ as *const libc::c_void,
            4,
        );
        Ok((fd, filtered))
    }
}

/// A netlink connector socket.
fn netlink_connector() -> Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the new fd is ours.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_CONNECTOR,
        );
        if fd < 0 {
            return Err(ChkptError::sys("socket(NETLINK_CONNECTOR)", 0));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The inode of the first network namespace (`init_net`), fixed since
/// Linux 6.14 (`PROC_NET_INIT_INO`).
const INIT_NET_INO: u64 = 0xEFFF_FFF9;

/// The inode of the network namespace at `path`.
fn netns_ino(path: &str) -> Option<u64> {
    std::fs::metadata(path)
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

/// An fd of the first network namespace: PID 1's when it can be read
/// (older kernels give it no fixed inode), else that of any process in it.
fn first_netns() -> Option<std::fs::File> {
    if netns_ino("/proc/1/ns/net").is_some() {
        return std::fs::File::open("/proc/1/ns/net").ok();
    }
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| format!("/proc/{}/ns/net", e.file_name().to_string_lossy()))
        .find(|p| netns_ino(p) == Some(INIT_NET_INO))
        .and_then(|p| std::fs::File::open(p).ok())
}

/// The connector socket, made in the first network namespace: the
/// kernel's connector lives only there (elsewhere subscribing is refused),
/// so a tracker in another one — a local cluster's node in a namespace of
/// its own, a container — makes its socket there, from a thread of its
/// own that enters it (a socket keeps the namespace it was made in).
/// Without the right to enter it, the socket is made here.
fn connector_socket() -> Result<OwnedFd> {
    let ours = netns_ino("/proc/thread-self/ns/net");
    if ours.is_none() || ours == Some(INIT_NET_INO) {
        return netlink_connector();
    }
    let Some(first) = first_netns() else {
        return netlink_connector();
    };
    let made = std::thread::spawn(move || {
        // SAFETY: setns(2) of this short-lived thread only, on an fd we opened.
        (unsafe { libc::setns(first.as_raw_fd(), libc::CLONE_NEWNET) } == 0).then(netlink_connector)
    })
    .join();
    match made {
        Ok(Some(fd)) => fd,
        _ => netlink_connector(),
    }
}

/// Join (`listen`) or leave the proc connector's multicast group, and tell
/// the connector (its listener count gates whether it builds events at all).
fn subscribe(fd: &OwnedFd, listen: bool) -> Result<()> {
    let membership = if listen {
        libc::NETLINK_ADD_MEMBERSHIP
    } else {
        libc::NETLINK_DROP_MEMBERSHIP
    };
    let group = CN_IDX_PROC;
    // SAFETY: setsockopt reads the 4-byte group number from a local.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_NETLINK,
            membership,
            &group as *const u32 as *const libc::c_void,
            4,
        )
    };
    if rc < 0 {
        return Err(ChkptError::sys("joining the proc connector group", 0));
    }
    let op = if listen {
        PROC_CN_MCAST_LISTEN
    } else {
        PROC_CN_MCAST_IGNORE
    };
    // struct proc_input (op, then the event types wanted) where the kernel
    // takes it; older kernels ignore any other length than 4.
    let data_len: u16 = if kernel_at_least(PROC_INPUT_SINCE) {
        8
    } else {
        4
    };
    let mut msg = Vec::new();
    let len = (NLMSG_HDR + CN_MSG) as u32 + u32::from(data_len);
    msg.extend_from_slice(&len.to_le_bytes());
    msg.extend_from_slice(&(libc::NLMSG_DONE as u16).to_le_bytes());
    msg.extend_from_slice(&0u16.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    msg.extend_from_slice(&std::process::id().to_le_bytes());
    msg.extend_from_slice(&CN_IDX_PROC.to_le_bytes());
    msg.extend_from_slice(&CN_VAL_PROC.to_le_bytes());
    msg.extend_from_slice(&[0u8; 8]); // seq, ack
    msg.extend_from_slice(&data_len.to_le_bytes());
    msg.extend_from_slice(&0u16.to_le_bytes());
    msg.extend_from_slice(&op.to_le_bytes());
    if data_len == 8 {
        msg.extend_from_slice(&(PROC_EVENT_FORK | PROC_EVENT_EXIT).to_le_bytes());
    }
    // SAFETY: sending a local buffer of its own length.
    let sent = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(ChkptError::sys("subscribing to the proc connector", 0));
    }
    Ok(())
}

fn eventfd() -> Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; the descriptor is ours on success.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(ChkptError::sys("eventfd", 0));
    }
    // SAFETY: just created, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sleep until the connector socket has a datagram (true) or `wake` was
/// written (false).
fn wait_readable(sock: &OwnedFd, wake: &OwnedFd) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: fds is a valid array of two pollfd.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
    n > 0 && fds[0].revents != 0 && fds[1].revents == 0
}

/// Is the running kernel at least `major.minor`?
fn kernel_at_least((major, minor): (u32, u32)) -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (ma, mi) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Apply one proc connector datagram to the flag table. A fork the filter
/// let through (its parent is in the kernel's map) that does not inherit
/// here (the parent's flag was cleared, or set after the fork) leaves the
/// kernel's map too, so the map never follows more than the table.
fn handle_event(buf: &[u8], flags: &Flags, filter: Option<&ConnFilter>) {
    let Some(what) = u32_at(buf, NLMSG_HDR + CN_MSG) else {
        return;
    };
    let Ok(mut f) = flags.lock() else { return };
    match what {
        PROC_EVENT_FORK => {
            let (Some(ptgid), Some(cpid), Some(ctgid)) = (
                u32_at(buf, EV_DATA + 4),
                u32_at(buf, EV_DATA + 8),
                u32_at(buf, EV_DATA + 12),
            ) else {
                return;
            };
            // Threads share their process's flag; only new processes count.
            // The event may be read after a later `set` on the parent: only a
            // fork that happened after the flag was set inherits it.
            let ts = u64_at(buf, NLMSG_HDR + CN_MSG + 8).unwrap_or(u64::MAX);
            if cpid != ctgid {
                return;
            }
            if f.get(&(ptgid as i32)).is_some_and(|&since| ts >= since) {
                f.insert(ctgid as i32, ts);
            } else if let Some(filter) = filter {
                filter.untrack(ctgid as i32);
            }
        }
        PROC_EVENT_EXIT => {
            let (Some(pid), Some(tgid)) = (u32_at(buf, EV_DATA), u32_at(buf, EV_DATA + 4)) else {
                return;
            };
            if pid == tgid {
                f.remove(&(tgid as i32));
            }
        }
        _ => {}
    }
}

/// The connector's filter, or None (with the reason logged) when the
/// kernel refuses it: then every event of the machine reaches the tracker.
fn attach_filter(fd: &Arc<OwnedFd>, capacity: u32) -> Option<Arc<ConnFilter>> {
    match ConnFilter::attach_with(fd.clone(), capacity) {
        Ok(f) => Some(Arc::new(f)),
        Err(e) => {
            tracing::warn!(error = %e, "no in-kernel filter on the proc connector: every fork and exit of the machine wakes this tracker");
            None
        }
    }
}

impl CapTracker {
    /// Subscribe to the proc connector (needs CAP_NET_ADMIN) and start following forks.
    pub fn start() -> Result<Self> {
        Self::start_counting(Box::new(|| {}))
    }

    /// As [`CapTracker::start`], calling `on_event` for every datagram received.
    pub fn start_counting(on_event: EventHook) -> Result<Self> {
        Self::start_with(on_event, crate::connfilter::CAPACITY)
    }

    /// The tracker, its filter holding at most `capacity` processes.
    fn start_with(on_event: EventHook, capacity: u32) -> Result<Self> {
        let (fd, filter) = open_connector(|fd| attach_filter(fd, capacity))?;
        let flags: Flags = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(AtomicU64::new(0));
        let wake = Arc::new(eventfd()?);
        let (f2, s2, e2, filter2, w2, sock) = (
            flags.clone(),
            stop.clone(),
            events.clone(),
            filter.clone(),
            wake.clone(),
            fd.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("captrack".into())
            .spawn(move || {
                let mut buf = vec![0u8; 8192];
                while !s2.load(Ordering::Relaxed) {
                    if !wait_readable(&fd, &w2) {
                        continue;
                    }
                    // SAFETY: buf is valid for its length.
                    let n = unsafe {
                        libc::recv(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr() as *mut libc::c_void,
                            buf.len(),
                            libc::MSG_DONTWAIT,
                        )
                    };
                    if n > 0 {
                        e2.fetch_add(1, Ordering::Relaxed);
                        on_event();
                        handle_event(&buf[..n as usize], &f2, filter2.as_deref());
                    } else if n < 0
                        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS)
                    {
                        tracing::warn!("proc connector overrun: some fork events were lost");
                    }
                }
            })
            .map_err(|e| ChkptError::Thread(format!("starting the tracker thread: {e}")))?;
        Ok(Self {
            flags,
            filter,
            events,
            stop,
            wake,
            thread: Mutex::new(Some(thread)),
            sock,
            listening: AtomicBool::new(false),
        })
    }

    /// Datagrams received from the proc connector so far.
    pub fn events_received(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Is the in-kernel filter in place (else every event arrives)?
    pub fn filtered(&self) -> bool {
        self.filter.as_ref().is_some_and(|f| f.active())
    }

    /// Add `pid` to the kernel's map of followed processes. A failure
    /// (memory) would lose its forks: the filter is given up for good
    /// instead, so every event arrives again.
    fn follow(&self, pid: i32) {
        let Some(filter) = self.filter.as_ref().filter(|f| f.active()) else {
            return;
        };
        if let Err(e) = filter.track(pid) {
            tracing::error!(pid, error = %e, "cannot add a process to the proc connector filter: taking the filter off");
            if let Err(e) = filter.detach() {
                tracing::error!(error = %e, "cannot take the proc connector filter off: forks of {pid} may be missed");
            }
        }
    }

    /// Set or clear the flag on `pid`.
    pub fn set(&self, pid: i32, enable: bool) -> Result<()> {
        if start_and_ppid(pid).is_none() {
            return Err(ChkptError::NoSuchProcess(pid));
        }
        let mut f = self.flags.lock().unwrap_or_else(|p| p.into_inner());
        if enable {
            // Subscribed, and in the kernel's map, before the flag's time is
            // taken: every fork that inherits (ts >= since) reaches the
            // tracker. Until the first flag the tracker is not subscribed,
            // so the machine's forks cost it nothing (with a hundred krgd
            // on one host, a third of the CPU of starting 1000 jobs went
            // to running every subscriber's filter on every fork and exit).
            if !self.listening.load(Ordering::Relaxed) {
                subscribe(&self.sock, true)?;
                self.listening.store(true, Ordering::Relaxed);
            }
            self.follow(pid);
            f.insert(pid, now_ns());
        } else {
            f.remove(&pid);
            if let Some(filter) = &self.filter {
                filter.untrack(pid);
            }
        }
        Ok(())
    }

    /// Does `pid` hold the flag (set, or inherited by a fork after it was set)?
    pub fn is_set(&self, pid: i32) -> bool {
        match self.check(pid) {
            Some(v) => v,
            // Started in the same clock tick as the flag: only the fork event
            // can tell; it is at most a moment away.
            None => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                self.flags.lock().is_ok_and(|f| f.contains_key(&pid))
            }
        }
    }

    /// Some(answer), or None when undecidable from start times alone.
    fn check(&self, pid: i32) -> Option<bool> {
        let mut f = self.flags.lock().ok()?;
        if f.contains_key(&pid) {
            return Some(true);
        }
        // Fork events may still be in flight: look at the ancestors, and
        // compare the process's start time with the time the flag was set.
        let (start_ticks, mut p) = start_and_ppid(pid)?;
        // start time on the monotonic clock, like the flag times
        let (start, tick) = (
            (start_ticks * tick_ns()).saturating_sub(suspended_ns()),
            tick_ns(),
        );
        for _ in 0..64 {
            if p <= 1 {
                break;
            }
            if let Some(&since) = f.get(&p) {
                if start > since + tick {
                    self.follow(pid);
                    f.insert(pid, start);
                    return Some(true);
                }
                if start + tick < since {
                    return Some(false);
                }
                return None;
            }
            p = start_and_ppid(p)?.1;
        }
        Some(false)
    }

    /// The processes that hold the flag now. Each is checked to be the
    /// process the flag was given to: one that started after the flag was
    /// set or inherited holds a reused PID (the flagged process ended and
    /// its exit event is not read yet, or was lost) and is dropped, as is a
    /// PID with no process.
    pub fn holders(&self) -> Vec<i32> {
        let Ok(mut f) = self.flags.lock() else {
            return Vec::new();
        };
        let (tick, suspended) = (tick_ns(), suspended_ns());
        let filter = self.filter.as_deref();
        f.retain(|&pid, since| {
            let same = match start_and_ppid(pid) {
                Some((ticks, _)) => (ticks * tick).saturating_sub(suspended) <= *since + tick,
                None => false,
            };
            if !same {
                if let Some(filter) = filter {
                    filter.untrack(pid);
                }
            }
            same
        });
        let mut out: Vec<i32> = f.keys().copied().collect();
        out.sort_unstable();
        out
    }

    pub fn shutdown(&self) {
        if self.listening.swap(false, Ordering::Relaxed) {
            // The connector counts its listeners: give ours back.
            let _ = subscribe(&self.sock, false);
        }
        self.stop.store(true, Ordering::Relaxed);
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write from a local buffer to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if let Some(t) = self.thread.lock().ok().and_then(|mut g| g.take()) {
            let _ = t.join();
        }
    }
}

impl Drop for CapTracker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
#[path = "captrack_tests.rs"]
mod tests;
