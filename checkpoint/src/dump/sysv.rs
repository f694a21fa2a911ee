//! SysV IPC objects of the job, read while the tree is frozen: shared
//! memory segments it attached (found in its maps), semaphore sets and
//! message queues named on the command line (they leave no trace in a
//! process).

use crate::error::{ChkptError, Result};
use crate::image::{MmImage, MsgImage, QueuedMessage, SemImage, SysvShmImage, VmaKind};

const SHM_DEST: u16 = 0o1000;

const MSG_COPY: i32 = 0o40000;

/// Describe segment `shmid` (seen in a task's maps).
pub fn describe(shmid: i32) -> Result<SysvShmImage> {
    let ds = crate::ipc::shm_stat(shmid)?;
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

fn check_owner(what: &str, id: i32, uid: u32, caller: u32) -> Result<()> {
    if caller != 0 && uid != caller {
        return Err(ChkptError::Permission(format!(
            "SysV {what} {id} belongs to uid {uid}"
        )));
    }
    Ok(())
}

fn dump_sem(semid: i32, caller: u32) -> Result<SemImage> {
    // SAFETY: semid_ds is plain data; semctl writes into it (IPC_STAT) or into
    // the value array of nsems u16 (GETALL).
    unsafe {
        let mut ds: libc::semid_ds = std::mem::zeroed();
        if libc::semctl(semid, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) < 0 {
            return Err(ChkptError::ipc(format!("SysV semaphore set {semid}")));
        }
        check_owner("semaphore set", semid, ds.sem_perm.uid, caller)?;
        let mut values = vec![0u16; ds.sem_nsems as usize];
        if libc::semctl(semid, 0, libc::GETALL, values.as_mut_ptr()) < 0 {
            return Err(ChkptError::ipc(format!(
                "SysV semaphore set {semid}: GETALL"
            )));
        }
        Ok(SemImage {
            semid,
            key: ds.sem_perm.__key,
            mode: ds.sem_perm.mode & 0o777,
            uid: ds.sem_perm.uid,
            gid: ds.sem_perm.gid,
            values,
        })
    }
}

fn dump_msg(msqid: i32, caller: u32) -> Result<MsgImage> {
    // SAFETY: msqid_ds is plain data; msgrcv writes at most buf.len() bytes.
    unsafe {
        let mut ds: libc::msqid_ds = std::mem::zeroed();
        if libc::msgctl(msqid, libc::IPC_STAT, &mut ds) < 0 {
            return Err(ChkptError::ipc(format!("SysV message queue {msqid}")));
        }
        check_owner("message queue", msqid, ds.msg_perm.uid, caller)?;
        let mut msgs = Vec::new();
        let mut buf = vec![0u8; 8 + 65536];
        for i in 0..ds.msg_qnum as i64 {
            // MSG_COPY: read message number i without taking it off the queue.
            let n = libc::msgrcv(
                msqid,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len() - 8,
                i,
                libc::IPC_NOWAIT | MSG_COPY,
            );
            if n < 0 {
                return Err(ChkptError::ipc(format!(
                    "SysV message queue {msqid}: copying message {i}"
                )));
            }
            let mtype = i64::from_le_bytes(buf[..8].try_into().unwrap_or([0; 8]));
            msgs.push(QueuedMessage {
                mtype,
                text: buf[8..8 + n as usize].to_vec(),
            });
        }
        Ok(MsgImage {
            msqid,
            key: ds.msg_perm.__key,
            mode: ds.msg_perm.mode & 0o777,
            uid: ds.msg_perm.uid,
            gid: ds.msg_perm.gid,
            msgs,
        })
    }
}

/// The SysV objects of a tree.
pub struct TreeSysv {
    pub shm: Vec<SysvShmImage>,
    pub sem: Vec<SemImage>,
    pub msg: Vec<MsgImage>,
}

/// Every segment some task attached (described once), and the semaphore
/// sets and message queues named on the command line.
pub fn collect<'a>(
    mms: impl Iterator<Item = &'a MmImage>,
    sems: &[i32],
    msgs: &[i32],
    caller: u32,
) -> Result<TreeSysv> {
    let mut ids: Vec<i32> = mms
        .flat_map(|mm| mm.vmas.iter())
        .filter_map(|v| match v.kind {
            VmaKind::SysvShm { shmid } => Some(shmid),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(TreeSysv {
        shm: ids.into_iter().map(describe).collect::<Result<_>>()?,
        sem: sems
            .iter()
            .map(|&id| dump_sem(id, caller))
            .collect::<Result<_>>()?,
        msg: msgs
            .iter()
            .map(|&id| dump_msg(id, caller))
            .collect::<Result<_>>()?,
    })
}
