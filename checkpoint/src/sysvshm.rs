//! SysV shared memory segments attached by the tree, in the host's IPC
//! namespace too: the segment is recreated with the same shmid by writing
//! /proc/sys/kernel/shm_next_id (CONFIG_CHECKPOINT_RESTORE) right before
//! shmget, its owner and mode are set back, every task attaches it at the
//! recorded address and the first one fills it from the image.

use serde::{Deserialize, Serialize};

use crate::error::{ChkptError, Result};

const SHM_DEST: u16 = 0o1000;
const NEXT_ID: &str = "/proc/sys/kernel/shm_next_id";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SysvShmImage {
    pub shmid: i32,
    pub key: i32,
    pub size: u64,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    /// IPC_RMID was done: removed again once the tree is attached.
    pub destroyed: bool,
}

fn stat(shmid: i32) -> Result<libc::shmid_ds> {
    // SAFETY: shmid_ds is plain data; ds is a valid out pointer.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) } < 0 {
        return Err(ChkptError::Other(format!(
            "SysV shm {shmid}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(ds)
}

/// Describe segment `shmid` (seen in a task's maps).
pub fn describe(shmid: i32) -> Result<SysvShmImage> {
    let ds = stat(shmid)?;
    Ok(SysvShmImage {
        shmid,
        key: ds.shm_perm.__key,
        size: ds.shm_segsz as u64,
        mode: ds.shm_perm.mode & 0o777,
        uid: ds.shm_perm.uid,
        gid: ds.shm_perm.gid,
        destroyed: ds.shm_perm.mode & SHM_DEST != 0,
    })
}

/// Recreate every segment with its shmid (from the restarter, before any
/// task exists). Returns the ids created, for [`remove`] on failure.
pub fn create(segs: &[SysvShmImage]) -> Result<Vec<i32>> {
    let mut made = Vec::new();
    for s in segs {
        match create_one(s) {
            Ok(()) => made.push(s.shmid),
            Err(e) => {
                remove(&made);
                return Err(e);
            }
        }
    }
    Ok(made)
}

fn create_one(s: &SysvShmImage) -> Result<()> {
    std::fs::write(NEXT_ID, s.shmid.to_string()).map_err(|e| ChkptError::io(NEXT_ID, e))?;
    let key = if s.destroyed {
        libc::IPC_PRIVATE
    } else {
        s.key
    };
    // SAFETY: plain shmget.
    let id = unsafe {
        libc::shmget(
            key,
            s.size as usize,
            libc::IPC_CREAT | libc::IPC_EXCL | 0o600,
        )
    };
    let _ = std::fs::write(NEXT_ID, "-1");
    if id < 0 {
        return Err(ChkptError::Other(format!(
            "cannot recreate SysV shm {} (key {:#x}): {}",
            s.shmid,
            s.key,
            std::io::Error::last_os_error()
        )));
    }
    if id != s.shmid {
        remove(&[id]);
        return Err(ChkptError::Other(format!(
            "SysV shm id {} is in use",
            s.shmid
        )));
    }
    let mut ds = stat(id)?;
    ds.shm_perm.uid = s.uid;
    ds.shm_perm.gid = s.gid;
    ds.shm_perm.mode = s.mode;
    // SAFETY: ds is a valid shmid_ds.
    if unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) } < 0 {
        remove(&[id]);
        return Err(ChkptError::Other(format!(
            "SysV shm {id}: IPC_SET: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// IPC_RMID (segments stay alive while attached).
pub fn remove(ids: &[i32]) {
    for &id in ids {
        // SAFETY: plain shmctl without a buffer.
        unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}
