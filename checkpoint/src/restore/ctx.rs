//! What every step of a task's restore works with: the injection area's
//! layout, the task's injector and image, and the fds restart set up for
//! the whole tree.

use std::collections::HashMap;

use crate::error::{ChkptError, Result};
use crate::image::{MmImage, TaskImage, PAGE};
use crate::procfs;
use crate::ptrace::{self, Injector};

use super::pages::{Check, DataFile, Piece};

/// Layout of the injection area: code page, scratch pages, a parking zone
/// used while moving the kernel's vDSO/vvar pages.
pub const AREA_CODE: u64 = 0;
pub const AREA_SCRATCH: u64 = PAGE;
pub const SCRATCH_LEN: u64 = 15 * PAGE;
pub const AREA_PARK: u64 = 16 * PAGE;
pub const PARK_LEN: u64 = 64 * PAGE;
pub const AREA_LEN: u64 = AREA_PARK + PARK_LEN;

pub struct TaskCtx<'a> {
    pub inj: &'a Injector,
    pub area: u64,
    pub task: &'a TaskImage,
    pub mm: &'a MmImage,
    /// Where its saved pages are: in data file `n`, inherited from restart
    /// as fd `data_fds + n` (see `tree::MmFds`).
    pub pieces: &'a [Piece],
    /// `restart --lazy`: the pieces left to the page server.
    pub lazy: &'a [Piece],
    /// Eager restore: the pieces restart copies in itself (`fill`).
    pub copied: &'a [Piece],
    pub data_fds: i32,
    pub files: &'a [DataFile],
    /// The CRC of every block of page data, by (file, offset).
    pub checks: &'a [Check],
    /// fds `work_base..work_end` are restart's working fds in every task
    /// (memory images, then pipes, memfds and open files), closed once the
    /// task's own fds are in place.
    pub work_base: i32,
    pub work_end: i32,
    /// pipe inode → (read fd, write fd) in the restored processes.
    pub pipe_fds: &'a HashMap<u64, (i32, i32)>,
    /// shared memory object id → its memfd in the restored processes.
    pub shm_fds: &'a HashMap<u64, i32>,
    /// deleted mapped file inode → its unnamed file in the restored processes.
    pub deleted_fds: &'a HashMap<u64, i32>,
    /// open file number → its fd in the restored processes.
    pub file_fds: &'a HashMap<u32, i32>,
    /// open file number → the first task that holds it (it registers what
    /// an epoll watches, takes a flock or OFD lock again).
    pub first_holder: &'a HashMap<u32, i32>,
}

impl TaskCtx<'_> {
    pub fn scratch(&self) -> u64 {
        self.area + AREA_SCRATCH
    }

    /// Put a NUL-terminated string in scratch memory; returns its address.
    pub fn put_str(&self, s: &str, slot: u64) -> Result<u64> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        if b.len() as u64 > SCRATCH_LEN / 2 {
            return Err(ChkptError::TooLarge(format!("the path {s}")));
        }
        let addr = self.scratch() + slot * (SCRATCH_LEN / 2);
        ptrace::write_mem(self.inj.tid, addr, &b)?;
        Ok(addr)
    }

    pub fn put_bytes(&self, b: &[u8]) -> Result<u64> {
        if b.len() as u64 > SCRATCH_LEN {
            return Err(ChkptError::TooLarge(format!("a {} byte argument", b.len())));
        }
        ptrace::write_mem(self.inj.tid, self.scratch(), b)?;
        Ok(self.scratch())
    }
}

/// The maps of a live process (used for what the restarter left in a child).
pub fn current_maps(pid: i32) -> Result<Vec<procfs::MapLine>> {
    procfs::parse_maps(&procfs::read_to_string(format!("/proc/{pid}/maps"))?)
}

/// clone3 arguments for a fork-like child with a chosen PID.
pub fn clone_args(set_tid_ptr: u64) -> [u64; 11] {
    [0, 0, 0, 0, libc::SIGCHLD as u64, 0, 0, 0, set_tid_ptr, 1, 0]
}

/// The credentials of task `t` (groups, then real, effective and saved
/// ids), for a process restart makes that holds none of its own: a
/// zombie, a stand-in, each its parent's.
pub fn take_creds(i: &Injector, scratch: u64, t: &TaskImage) -> Result<()> {
    set_fs_creds(i, scratch, t)?;
    let (g, u) = (t.gids, t.uids);
    i.call(
        "setresgid",
        libc::SYS_setresgid,
        [g[0] as u64, g[1] as u64, g[2] as u64, 0, 0, 0],
    )?;
    i.call(
        "setresuid",
        libc::SYS_setresuid,
        [u[0] as u64, u[1] as u64, u[2] as u64, 0, 0, 0],
    )?;
    Ok(())
}

/// Groups and file-system uid/gid of the job's user (capabilities to
/// fork with chosen PIDs and to set credentials stay until the end).
pub fn set_fs_creds(i: &Injector, scratch: u64, t: &TaskImage) -> Result<()> {
    let groups: Vec<u8> = t.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    if groups.len() as u64 > SCRATCH_LEN {
        return Err(ChkptError::TooLarge(format!(
            "{} supplementary groups",
            t.groups.len()
        )));
    }
    ptrace::write_mem(i.tid, scratch, &groups)?;
    i.call(
        "setgroups",
        libc::SYS_setgroups,
        [t.groups.len() as u64, scratch, 0, 0, 0, 0],
    )?;
    i.raw(libc::SYS_setfsgid, [t.gids[3] as u64, 0, 0, 0, 0, 0])?;
    i.raw(libc::SYS_setfsuid, [t.uids[3] as u64, 0, 0, 0, 0, 0])?;
    Ok(())
}
