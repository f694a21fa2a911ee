//! The SysV IPC calls both sides need: the status of a shared memory
//! segment (checkpoint describes it, restart re-owns it).

use crate::error::{ChkptError, Result};

/// `shmctl(IPC_STAT)` of segment `shmid`.
pub fn shm_stat(shmid: i32) -> Result<libc::shmid_ds> {
    // SAFETY: shmid_ds is plain data; zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid out pointer for IPC_STAT.
    if unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) } < 0 {
        return Err(ChkptError::ipc(format!("SysV shm {shmid}")));
    }
    Ok(ds)
}
