//! The in-kernel filter of a proc connector socket: only the events a
//! capability tracker needs wake it.
//!
//! Without it, every fork, exec and exit on the machine wakes every
//! subscriber (100 krgd on one host, two trackers each: 200 threads per
//! fork). This module loads a small eBPF socket filter (SO_ATTACH_BPF) with
//! a hash map of the tracked thread-group ids:
//!
//! * a fork whose parent is in the map passes, and the filter itself adds
//!   the child to the map, in the forking process's context, before the
//!   child has ever run (the kernel sends the fork event from
//!   `copy_process`, before `wake_up_new_task`): the child is tracked before
//!   it can fork, so no grandchild is missed while userspace catches up;
//! * the exit of a tracked process (its main thread) passes, and the filter
//!   removes it from the map;
//! * everything else (untracked forks and exits, threads, exec, comm, uid
//!   events, the subscription's ack) is dropped in the kernel.
//!
//! Userspace adds the processes it flags ([`ConnFilter::track`]) before it
//! records the time of the flag, so every fork after that time reaches it.
//! A map key is a tgid, live processes only (exits remove them). The map
//! holds [`CAPACITY`] processes (its hash buckets are allocated up front:
//! 16 bytes each, so it is not sized for the whole PID space). When a fork
//! finds it full, the filter opens for good — a flag in a second map, set
//! in the forking process's context before the child runs — and passes
//! every event from then on: inheritance stays exact, only the filtering is
//! lost.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

// bpf(2) commands, map and program types, flags (linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_F_NO_PREALLOC: u32 = 1;
const SO_ATTACH_BPF: libc::c_int = 50;
const SO_DETACH_FILTER: libc::c_int = 27;
/// Tracked processes (live, flagged or descending from one) a filter holds
/// before it opens: 256 KiB of buckets per map.
pub const CAPACITY: u32 = 16 * 1024;

// Offsets in a proc connector datagram: nlmsghdr (16), cn_msg (20), then
// struct proc_event: what (4), cpu (4), timestamp_ns (8), event_data.
const WHAT: i32 = 36;
const FORK_PARENT_TGID: i32 = 56;
const FORK_CHILD_PID: i32 = 60;
const FORK_CHILD_TGID: i32 = 64;
const EXIT_PID: i32 = 52;
const EXIT_TGID: i32 = 56;
// PROC_EVENT_FORK and PROC_EVENT_EXIT as an absolute load sees them: it
// reads in network byte order, the connector writes in host order (LE).
const FORK_BE: i32 = 0x0100_0000;
const EXIT_BE: i32 = 0x0000_0080;

/// One eBPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

// Registers.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R7: u8 = 7;
const R10: u8 = 10;
// Helpers.
const MAP_LOOKUP: i32 = 1;
const MAP_UPDATE: i32 = 2;
const MAP_DELETE: i32 = 3;

/// A tiny assembler: instructions, and jumps to labels resolved at the end.
#[derive(Default)]
struct Asm {
    code: Vec<Insn>,
    labels: Vec<(&'static str, usize)>,
    jumps: Vec<(usize, &'static str)>,
}

impl Asm {
    fn op(&mut self, i: Insn) {
        self.code.push(i);
    }
    fn label(&mut self, name: &'static str) {
        self.labels.push((name, self.code.len()));
    }
    /// A jump instruction whose offset is filled in by `finish`.
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: &'static str) {
        self.jumps.push((self.code.len(), to));
        self.op(insn(code, dst, src, 0, imm));
    }
    /// r0 = the 32-bit word at `off` of the datagram, in host order.
    fn load_word(&mut self, off: i32) {
        self.op(insn(0x20, 0, 0, 0, off)); // ld_abs_w (network order)
        self.op(insn(0xdc, R0, 0, 0, 32)); // be32: swap back on LE
    }
    fn map_fd(&mut self, dst: u8, fd: RawFd) {
        self.op(insn(0x18, dst, 1, 0, fd)); // ld_imm64, BPF_PSEUDO_MAP_FD
        self.op(insn(0, 0, 0, 0, 0));
    }
    /// r2 = r10 + off (a pointer to a stack slot).
    fn stack_ptr(&mut self, dst: u8, off: i32) {
        self.op(insn(0xbf, dst, R10, 0, 0));
        self.op(insn(0x07, dst, 0, 0, off));
    }
    fn finish(mut self) -> Option<Vec<Insn>> {
        for (at, to) in &self.jumps {
            let target = self.labels.iter().find(|(n, _)| n == to)?.1;
            self.code[*at].off = i16::try_from(target as isize - *at as isize - 1).ok()?;
        }
        Some(self.code)
    }
}

/// The filter program over the map `map` of tracked tgids and the one-slot
/// array `open` (non-zero: pass everything) (see the module comment).
fn program(map: RawFd, open: RawFd) -> Option<Vec<Insn>> {
    let mut a = Asm::default();
    a.op(insn(0xbf, R6, R1, 0, 0)); // r6 = skb (absolute loads need it there)
    a.op(insn(0x62, R10, 0, -4, 0)); // key 0 at fp-4
    a.map_fd(R1, open);
    a.stack_ptr(R2, -4);
    a.op(insn(0x85, 0, 0, 0, MAP_LOOKUP));
    a.jump(0x15, R0, 0, 0, "filter");
    a.op(insn(0x61, R0, R0, 0, 0)); // r0 = *(u32 *)r0
    a.jump(0x55, R0, 0, 0, "pass"); // open: everything passes
    a.label("filter");
    a.op(insn(0x20, 0, 0, 0, WHAT));
    a.jump(0x15, R0, 0, FORK_BE, "fork");
    a.jump(0x15, R0, 0, EXIT_BE, "exit");
    a.label("drop");
    a.op(insn(0xb7, R0, 0, 0, 0));
    a.op(insn(0x95, 0, 0, 0, 0));

    a.label("fork");
    a.load_word(FORK_CHILD_PID);
    a.op(insn(0xbf, R7, R0, 0, 0));
    a.load_word(FORK_CHILD_TGID);
    a.jump(0x5d, R0, R7, 0, "drop"); // a new thread, not a process
    a.op(insn(0x63, R10, R0, -8, 0)); // child key at fp-8
    a.load_word(FORK_PARENT_TGID);
    a.op(insn(0x63, R10, R0, -4, 0)); // parent key at fp-4
    a.map_fd(R1, map);
    a.stack_ptr(R2, -4);
    a.op(insn(0x85, 0, 0, 0, MAP_LOOKUP));
    a.jump(0x15, R0, 0, 0, "drop"); // untracked parent
    a.op(insn(0x62, R10, 0, -12, 1)); // value 1 at fp-12
    a.map_fd(R1, map);
    a.stack_ptr(R2, -8);
    a.stack_ptr(R3, -12);
    a.op(insn(0xb7, R4, 0, 0, 0)); // BPF_ANY
    a.op(insn(0x85, 0, 0, 0, MAP_UPDATE));
    a.jump(0x15, R0, 0, 0, "pass");
    // The map is full: open the filter for good, before the child runs.
    a.op(insn(0x62, R10, 0, -4, 0)); // key 0
    a.map_fd(R1, open);
    a.stack_ptr(R2, -4);
    a.stack_ptr(R3, -12); // value 1, stored above
    a.op(insn(0xb7, R4, 0, 0, 0));
    a.op(insn(0x85, 0, 0, 0, MAP_UPDATE));
    a.label("pass");
    a.op(insn(0xb7, R0, 0, 0, -1)); // keep the whole datagram
    a.op(insn(0x95, 0, 0, 0, 0));

    a.label("exit");
    a.load_word(EXIT_PID);
    a.op(insn(0xbf, R7, R0, 0, 0));
    a.load_word(EXIT_TGID);
    a.jump(0x5d, R0, R7, 0, "drop"); // a thread other than the main one
    a.op(insn(0x63, R10, R0, -4, 0));
    // Look before deleting: almost every exit is of an untracked process,
    // and a lookup takes no lock where a delete locks the hash bucket
    // (with 100 krgd on one host, every exit runs 200 of these filters).
    a.map_fd(R1, map);
    a.stack_ptr(R2, -4);
    a.op(insn(0x85, 0, 0, 0, MAP_LOOKUP));
    a.jump(0x15, R0, 0, 0, "drop"); // not in the map: untracked
    a.map_fd(R1, map);
    a.stack_ptr(R2, -4);
    a.op(insn(0x85, 0, 0, 0, MAP_DELETE));
    a.jump(0x55, R0, 0, 0, "drop"); // removed meanwhile by another exit event
    a.jump(0x05, 0, 0, 0, "pass");
    a.finish()
}

/// union bpf_attr for BPF_MAP_CREATE (the fields this module sets).
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// union bpf_attr for BPF_MAP_*_ELEM.
#[repr(C)]
#[derive(Default)]
struct MapElem {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// union bpf_attr for BPF_PROG_LOAD (up to the log buffer).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, initialised bpf_attr prefix of the size passed;
    // the kernel reads (and for some commands writes) only that many bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("bpf returned a bad fd"))?;
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The filter attached to one connector socket, and its map of tracked tgids.
pub struct ConnFilter {
    sock: Arc<OwnedFd>,
    map: OwnedFd,
    /// One u32: non-zero once the map overflowed (everything passes).
    open: OwnedFd,
    /// Kept for the lifetime of the filter (the socket holds its own reference).
    _prog: OwnedFd,
    /// Detached: every event reaches the socket again.
    off: AtomicBool,
}

impl ConnFilter {
    /// Load the filter, its map holding `capacity` processes, and attach it to `sock` (a bound NETLINK_CONNECTOR
    /// socket). Needs CAP_BPF (root); an error leaves the socket unfiltered.
    pub fn attach_with(sock: Arc<OwnedFd>, capacity: u32) -> io::Result<Self> {
        let mut mc = MapCreate {
            map_type: BPF_MAP_TYPE_HASH,
            key_size: 4,
            value_size: 4,
            max_entries: capacity,
            map_flags: BPF_F_NO_PREALLOC,
        };
        let map = owned(bpf(BPF_MAP_CREATE, &mut mc)?)?;
        let mut oc = MapCreate {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            map_flags: 0,
        };
        let open = owned(bpf(BPF_MAP_CREATE, &mut oc)?)?;
        let code = program(map.as_raw_fd(), open.as_raw_fd())
            .ok_or_else(|| io::Error::other("assembling the filter: bad jump"))?;
        let license = c"GPL";
        let mut log = vec![0u8; 16 * 1024];
        let mut pl = ProgLoad {
            prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
            insn_cnt: code.len() as u32,
            insns: code.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
        };
        let prog = match bpf(BPF_PROG_LOAD, &mut pl) {
            Ok(fd) => owned(fd)?,
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let why = String::from_utf8_lossy(&log[..end]);
                let last = why.lines().last().unwrap_or("").to_string();
                return Err(io::Error::new(e.kind(), format!("{e} ({last})")));
            }
        };
        let pfd: libc::c_int = prog.as_raw_fd();
        // SAFETY: pfd is a valid int; sock is an open socket we hold.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_ATTACH_BPF,
                &pfd as *const _ as *const libc::c_void,
                std::mem::size_of_val(&pfd) as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            sock,
            map,
            open,
            _prog: prog,
            off: AtomicBool::new(false),
        })
    }

    /// Is the filter still filtering (attached, and its map never overflowed)?
    pub fn active(&self) -> bool {
        !self.off.load(Ordering::Relaxed) && !self.overflowed()
    }

    /// Did a fork find the map full (so that everything passes now)?
    fn overflowed(&self) -> bool {
        let (key, mut value) = (0u32, 0u32);
        let mut e = MapElem {
            map_fd: self.open.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &mut value as *mut u32 as u64,
            ..Default::default()
        };
        // An unreadable flag counts as open: the caller then expects every event.
        bpf(BPF_MAP_LOOKUP_ELEM, &mut e).is_err() || value != 0
    }

    /// Take the filter off the socket for good: every event arrives again.
    pub fn detach(&self) -> io::Result<()> {
        self.off.store(true, Ordering::Relaxed);
        let zero: libc::c_int = 0;
        // SAFETY: a valid int option on an open socket we hold.
        let r = unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_DETACH_FILTER,
                &zero as *const _ as *const libc::c_void,
                std::mem::size_of_val(&zero) as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Let forks of `tgid` (and its exit) through from now on.
    pub fn track(&self, tgid: i32) -> io::Result<()> {
        let (key, value) = (tgid as u32, 1u32);
        let mut e = MapElem {
            map_fd: self.map.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut e).map(drop)
    }

    /// Stop following `tgid` (absent already: fine).
    pub fn untrack(&self, tgid: i32) {
        let key = tgid as u32;
        let mut e = MapElem {
            map_fd: self.map.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            ..Default::default()
        };
        let _ = bpf(BPF_MAP_DELETE_ELEM, &mut e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_their_labels() {
        let code = program(3, 4).unwrap();
        // every jump stays inside the program
        for (i, c) in code.iter().enumerate() {
            if c.code & 0x07 == 0x05 && c.code != 0x85 && c.code != 0x95 {
                let t = i as isize + 1 + c.off as isize;
                assert!(t > 0 && (t as usize) < code.len(), "jump at {i}");
            }
        }
        assert_eq!(code.last().unwrap().code, 0x05);
    }
}
